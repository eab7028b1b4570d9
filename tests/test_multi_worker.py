"""--distribute=multi_worker: two worker processes on 127.0.0.1 (free ports, TF_CONFIG) train digits through
scripts/train.py like one process at the same global batch; only the chief writes the run directory; a run whose
worker was killed resumes when both are relaunched; a missing or malformed TF_CONFIG is refused."""

import csv
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import script_server
from tfadv import cluster as cluster_lib
from tfadv import distribute
from tfadv.errors import RunError

EXAMPLES = 100  # final test examples (validation: the held-out split of flags/digits.cfg)
TRAIN = ["--defense=pgd", "--flagfile=flags/digits.cfg", "--epochs=2", "--val_every=1",
         f"--eval_examples={EXAMPLES}"]


def _examples(accuracy, total=EXAMPLES):
    """An accuracy over `total` examples as a count of examples."""
    return round(float(accuracy) * total)


def _start(args, tmp_path, num_workers=0):
    """`python scripts/train.py args` processes (one, or one per local worker with its TF_CONFIG), started by the
    script server (tests/script_server.py: a fork per process, its own process group, as `distribute.launch`
    makes), with TMPDIR inside tmp_path (where a non-chief worker puts its temporary run directory)."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir(exist_ok=True)
    processes = []
    for config in distribute.local_cluster(num_workers) if num_workers else [None]:
        env = script_server.default_env(TMPDIR=str(tmpdir), **({distribute.TF_CONFIG: config} if config else {}))
        processes.append(script_server.start_script("train.py", *args, env=env))
    return processes


def _output(process):
    """stdout then stderr of a finished process."""
    if not hasattr(process, "output"):
        result = process.result()
        process.output = result.stdout + result.stderr
    return process.output


def _wait(processes, timeout=240):
    for process in processes:
        process.wait(timeout=timeout)
    outputs = [_output(process) for process in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0, output[-3000:]
    return outputs


def _final_weights(run):
    from tfadv import models

    network = models.build("mlp", (8, 8, 1), 10)
    network.load_weights(str(run / "checkpoints" / "final.weights.h5"))
    return [w.numpy() for w in network.weights]


def _history(run):
    with open(run / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _worker_dirs(tmp_path):
    return [name for name in os.listdir(tmp_path / "tmp") if name.startswith("tfadv-")]


def test_two_workers_train_like_one_process_and_only_the_chief_writes(tmp_path):
    single, multi = tmp_path / "single", tmp_path / "multi"
    processes = []
    try:
        # float32: the comparison below is at float32 round-off (under --mixed_precision=auto an AMX CPU trains in
        # bfloat16, whose per-replica gradients round differently from one process's)
        float32 = TRAIN + ["--mixed_precision=none"]
        processes = _start(float32 + [f"--output_dir={single}"], tmp_path)
        processes += _start(float32 + ["--distribute=multi_worker", f"--output_dir={multi}"], tmp_path, 2)
        _wait(processes[:1])
        chief, other = _wait(processes[1:])
    finally:
        distribute.stop(processes)
    assert "2 replica(s)" in chief and "chief: writes the run directory" in chief
    assert "not the chief: writing to" in other and str(tmp_path / "tmp") in other
    # the same weights, history and test numbers as one process at global batch 64 (measured: largest weight
    # difference ~3e-8 after 2 epochs)
    for a, b in zip(_final_weights(multi), _final_weights(single)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # Robust accuracies (validation on the held-out split, final on EXAMPLES) may differ by one example: the weights
    # differ in the last bits (the all-reduce sums in another order), and a PGD step takes the sign of every
    # input-gradient component, so a component near zero can send one example down another attack path, whose
    # outcome depends on the CPU's rounding, not on the training.
    m_multi = json.loads((multi / "metrics.json").read_text())
    m_single = json.loads((single / "metrics.json").read_text())
    held_out = m_single["validation"]["num_examples"]
    assert held_out == m_multi["validation"]["num_examples"] > 0
    for row_multi, row_single in zip(_history(multi), _history(single), strict=True):
        for key in ("loss", "accuracy", "val_clean_accuracy"):
            np.testing.assert_allclose(float(row_multi[key]), float(row_single[key]), rtol=1e-5, err_msg=key)
        assert abs(_examples(row_multi["val_robust_accuracy"], held_out)
                   - _examples(row_single["val_robust_accuracy"], held_out)) <= 1
    assert m_multi["final"]["clean_accuracy"] == m_single["final"]["clean_accuracy"]
    assert abs(_examples(m_multi["final"]["robust_accuracy"]) - _examples(m_single["final"]["robust_accuracy"])) <= 1
    # only the chief wrote the run directory; the other worker's temporary directory is gone
    assert {"flags.txt", "history.csv", "metrics.json", "checkpoints", "saved_model", "plots",
            "tensorboard"} <= set(os.listdir(multi))
    assert os.path.exists(multi / "checkpoints" / "best.weights.h5")
    assert _worker_dirs(tmp_path) == []


def test_a_killed_worker_resumes_when_both_are_relaunched(tmp_path):
    run = tmp_path / "run"
    args = [arg for arg in TRAIN if arg != "--val_every=1"] + ["--distribute=multi_worker", f"--output_dir={run}"]
    index = run / "checkpoints" / "resume" / "checkpoint"
    processes = []
    try:
        processes = _start(args, tmp_path, 2)
        deadline = time.time() + 180
        while not index.exists() and time.time() < deadline and processes[0].poll() is None:
            time.sleep(0.05)
        assert index.exists(), _output(processes[0])[-3000:] if processes[0].poll() is not None else "no checkpoint"
        distribute.stop(processes[1:])  # kill -9 the non-chief worker after epoch 1 was checkpointed
        try:  # the chief waits for it in a collective (or fails): the cluster manager restarts both
            processes[0].wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass
        distribute.stop(processes)
        assert not (run / "metrics.json").exists()
        processes = _start(args, tmp_path, 2)
        chief, other = _wait(processes)
    finally:
        distribute.stop(processes)
    assert "resuming" in chief and "resuming" in other
    resumed = int(chief.split("after epoch ")[1].split()[0])
    assert resumed == 1  # killed during epoch 2
    assert [int(row["epoch"]) for row in _history(run)] == [0, 1]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
    assert _worker_dirs(tmp_path) == []


def test_workers_started_with_different_flags_refuse_to_train(tmp_path):
    """Boundary II item 6: the chief used to finish with its own flags while worker 1 trained with others. Each
    worker all-gathers a digest of its effective flags before training; both refuse, naming the flag, and nothing
    is written (--data_dir and --cluster_timeout may differ: where each machine keeps the data, how long it waits)."""
    run = tmp_path / "run"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    common = TRAIN + ["--distribute=multi_worker", f"--output_dir={run}"]
    extra = [["--cluster_timeout=120"], ["--lr=0.1", "--cluster_timeout=90"]]
    processes = []
    try:
        for config, more in zip(distribute.local_cluster(2), extra):
            env = script_server.default_env(TMPDIR=str(tmpdir), **{distribute.TF_CONFIG: config})
            processes.append(script_server.start_script("train.py", *common, *more, env=env))
        for process in processes:
            process.wait(timeout=240)
        outputs = [_output(process) for process in processes]
    finally:
        distribute.stop(processes)
    for process, output in zip(processes, outputs):
        assert process.returncode == 2, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        assert errors == ["error: --distribute: the workers of TF_CONFIG run with different flags (--lr): every "
                          "worker must run the same command (only --data_dir and --cluster_timeout may differ)"], output
    assert not run.exists() and _worker_dirs(tmp_path) == []


@pytest.mark.parametrize("tf_config, message", [
    (None, "needs the TF_CONFIG environment variable"),
    ("{not json", "TF_CONFIG is not valid JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}', "task index 3"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
    ('{"cluster": {"ps": ["127.0.0.1:1"]}, "task": {"type": "ps", "index": 0}}', "parameter servers"),
])
def test_missing_or_malformed_tf_config_is_refused(tf_config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        distribute.parse_tf_config(tf_config)


def test_tf_config_names_the_chief_and_counts_the_replicas():
    two = distribute.local_cluster(2)
    clusters = [distribute.parse_tf_config(value) for value in two]
    assert [c.is_chief for c in clusters] == [True, False] and clusters[0].num_workers == 2
    ports = {address for c in clusters for address in c.tasks["worker"]}
    assert len(ports) == 2
    with_chief = distribute.parse_tf_config(json.dumps({"cluster": {"chief": ["h:1"], "worker": ["h:2"]},
                                                        "task": {"type": "worker", "index": 0}}))
    assert not with_chief.is_chief and with_chief.num_workers == 2


def test_train_refuses_multi_worker_without_tf_config(tmp_path, monkeypatch):
    """scripts/train.py prints a ConfigError as `error: <message>` with exit code 2 (tests/test_cli.py)."""
    from tfadv import assembly, experiment
    from tfadv.config import ConfigError, TrainConfig

    monkeypatch.delenv(distribute.TF_CONFIG, raising=False)
    config = TrainConfig.from_flags(defense="natural", distribute="multi_worker", output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="^--distribute: multi_worker needs the TF_CONFIG environment variable"):
        experiment.prepare(config)
    monkeypatch.setenv(distribute.TF_CONFIG, '{"cluster": {"worker": ["127.0.0.1:1"]}}')
    with pytest.raises(ConfigError, match="^--distribute: TF_CONFIG needs a 'cluster' object and a 'task'"):
        assembly.check(config.validate())  # the environment is read on the training side (tfadv.assembly)
    assert not (tmp_path / "run").exists()


def _lone_worker(tmp_path, *extra):
    """Worker 0 of a two-worker TF_CONFIG whose worker 1 never starts (Boundary II item 6), in its own session."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CONFIG=distribute.local_cluster(2)[0], TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    args = [sys.executable, os.path.join(root, "scripts", "train.py"), "--flagfile=flags/digits.cfg", "--epochs=1",
            "--distribute=multi_worker", f"--output_dir={tmp_path / 'run'}", *extra]
    return subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_a_worker_whose_cluster_never_comes_says_so_and_gives_up(tmp_path):
    """It used to print nothing, write nothing and wait for ever (11+ minutes, only SIGKILL stopped it)."""
    process = _lone_worker(tmp_path, "--cluster_timeout=5")
    try:
        out, err = process.communicate(timeout=120)
    finally:
        distribute.stop([process])
    assert "waiting for 1 other worker(s)" in out and "up to 5 s (--cluster_timeout)" in out
    assert _error_lines(err) == [_error_lines(err)[0]] and "did not join within 5 s" in _error_lines(err)[0], err
    assert process.returncode != 0 and not (tmp_path / "run").exists()


def test_a_worker_with_a_bad_value_is_refused_before_it_waits_for_its_cluster(tmp_path):
    """A value the configuration refuses (here --epochs=0) is refused at once on each worker, not after the
    worker has waited up to --cluster_timeout for peers it would then refuse anyway (prepare() used to set up
    the cluster first)."""
    process = _lone_worker(tmp_path, "--epochs=0", "--cluster_timeout=60")
    started = time.monotonic()
    try:
        out, err = process.communicate(timeout=120)
    finally:
        distribute.stop([process])
    elapsed = time.monotonic() - started
    assert _error_lines(err) and _error_lines(err)[0].startswith("error: --epochs"), err[-2000:]
    assert "waiting for" not in out and elapsed < 60, (elapsed, out)
    assert process.returncode == 2 and not (tmp_path / "run").exists()


def _wait_for_line(process, text, timeout=120):
    """Reads the process's stdout until a line holds `text` (False if it ends or `timeout` passes first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if not line:
                return False
            if text in line:
                return True
    return False


@pytest.mark.parametrize("to", ["group", "pid"])
def test_sigterm_stops_a_worker_waiting_for_its_cluster(tmp_path, to):
    """SIGTERM to the process group (a shell's job control) or to the worker's PID alone (a container runtime,
    `kill PID`); the PID-alone case used to wait until --cluster_timeout: TF's handshake had replaced the
    handler and held the GIL."""
    process = _lone_worker(tmp_path)  # the default timeout: 10 minutes
    try:
        assert _wait_for_line(process, "waiting for 1 other worker(s)")
        time.sleep(2)  # well inside the wait
        if to == "group":
            os.killpg(process.pid, signal.SIGTERM)
        else:
            os.kill(process.pid, signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        distribute.stop([process])
    assert _error_lines(err) == ["error: stopped by SIGTERM while waiting for the other workers"], err[-2000:]
    assert process.returncode == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]"])
def test_a_worker_in_the_python_wait_answers_its_peers_and_stops_at_the_timeout(host):
    """The wait itself (tfadv.cluster.wait_for_peers): two tasks on free local ports see each other (IPv4 and
    IPv6 addresses: an IPv4-only listener left IPv6 clusters waiting for ever); a task whose peer never comes
    gives up after its timeout with one line naming the peer."""
    if host == "[::1]" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    addresses = [f"{host}:{port}" for port in distribute.free_ports(2)]
    tasks = [cluster_lib.parse_tf_config(json.dumps({"cluster": {"worker": addresses},
                                                     "task": {"type": "worker", "index": i}})) for i in range(2)]
    waited, lines, servers = [None, None], [], []

    def worker(i):
        waited[i] = cluster_lib.wait_for_peers(tasks[i], 60, lines.append, poll=0.1)
        server = socket.create_server((host.strip("[]"), int(addresses[i].rsplit(":", 1)[1])),
                                      family=socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET,
                                      reuse_port=True)  # what TF's server does next: the port answers again
        servers.append(server)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
    finally:
        for server in servers:
            server.close()
    assert all(w is not None and w < 60 for w in waited) and lines == []
    alone = cluster_lib.parse_tf_config(distribute.local_cluster(2)[0])
    start = time.monotonic()
    with pytest.raises(RunError, match=r"^--distribute=multi_worker: the other worker\(s\) of TF_CONFIG "
                                       r"\(127\.0\.0\.1:\d+\) did not join within 1 s"):
        cluster_lib.wait_for_peers(alone, 1, lines.append, poll=0.1)
    assert 1 <= time.monotonic() - start < 10


@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C (SIGINT)")])
def test_a_signal_inside_a_host_name_lookup_still_says_one_clean_line(monkeypatch, signum, said):
    """A clean-clone CI failure under load: SIGTERM arrived while the wait was encoding a host name (the 'idna'
    codec, inside socket.create_connection); the handler raised there, and Python's codec machinery rewrote the
    error as "encoding with 'idna' codec failed (RunError: stopped by SIGTERM ...)". Here a codec of our own
    receives the signal in the same place on every run."""
    import codecs

    def encode(text, errors="strict"):
        os.kill(os.getpid(), signum)
        time.sleep(0.05)  # the handler runs here, inside the codec
        return text.encode("ascii"), len(text)

    name = f"tfadv_test_signal_{signum:d}"
    codecs.register(lambda n: codecs.CodecInfo(encode, codecs.utf_8_decode, name=name) if n == name else None)

    def connect(address, timeout=None):
        address[0].encode(name)  # where getaddrinfo encodes the host
        raise ConnectionRefusedError

    monkeypatch.setattr(cluster_lib.socket, "create_connection", connect)
    alone = cluster_lib.parse_tf_config(distribute.local_cluster(2)[0])
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RunError) as raised:
        cluster_lib.wait_for_peers(alone, 30, lambda *_: None, poll=0.1)
    assert str(raised.value) == f"stopped by {said} while waiting for the other workers"
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before  # the handlers are back


def test_a_sigterm_sent_while_the_watchdog_starts_still_stops_the_worker():
    """The race behind a clean-clone CI failure: SIGTERM reached the watchdog before its Python had installed the
    handler, killed it silently, and the worker (blocked in TF's handshake) then waited for ever."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    watchdog = distribute.start_watchdog(worker.pid, 600, "unused")
    try:
        os.kill(watchdog.pid, signal.SIGTERM)  # at once: the watchdog's interpreter has not started yet
        assert watchdog.wait(timeout=60) == 1  # its handler ran (SIGTERM's default would be -15)
        assert worker.wait(timeout=30) == -signal.SIGKILL
    finally:
        distribute.stop([worker, watchdog])


