"""Devices, the distribution strategy and XLA, in one home (the cluster's TF_CONFIG: `tfadv.cluster`; the
replica-parity harness: `tfadv.parity`).

`--distribute` chooses TensorFlow's own engine, never tfadv cluster code:

* `none`: the default strategy (one device);
* `mirrored`: `tf.distribute.MirroredStrategy` over the GPUs, or over `--num_cpu_devices` logical CPU devices;
* `multi_worker`: `tf.distribute.MultiWorkerMirroredStrategy`, the cluster read from the `TF_CONFIG` environment
  variable (`{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}`; a cluster
  manager sets it per process, or `local_cluster` makes one for workers on this machine). Every worker runs the
  same command; the first worker (or the `chief` task, if the cluster has one) writes the run directory, the
  others write to temporary directories that are removed at the end (`worker_directory`), as Keras/TF do.

The strategy is made once per process (`strategy`): a MultiWorkerMirroredStrategy must exist before any other
TensorFlow op runs, and two MirroredStrategy objects with collectives in one process collide in TF 2.21. This
is the one process-wide cache of tfadv (TensorFlow's collective runtime is itself process-wide).

The global batch is `--batch_size` under every strategy: `tf.distribute` splits each global batch into one
contiguous share per replica (replica r gets examples r*B/R .. (r+1)*B/R - 1), workers included (the input
pipeline's auto-shard policy is DATA: the arrays are in memory). The training draws are keyed on an example's
global position (`Trainer.example_keys`), so a run on R replicas computes what one device computes, up to the
order of float additions; `tfadv.parity` measures it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sys
import subprocess
import tempfile
import threading
from typing import Callable, Optional

import tensorflow as tf

# re-exported: `tfadv.distribute.local_cluster` / `launch` / `stop` / `parse_tf_config` as before the move
from tfadv.cluster import (TF_CONFIG, Cluster, cluster_from_environment, free_ports, launch,  # noqa: F401
                           local_cluster, parse_tf_config, stop, wait_for_peers)
from tfadv.config import ConfigError, TrainConfig

# the process's strategy: {"key": (mode, devices), "strategy": tf.distribute.Strategy}
_PROCESS = {}


def num_replicas(config: TrainConfig, environ=None) -> int:
    """Replicas in sync that `config` asks for (ValueError for a bad TF_CONFIG under multi_worker)."""
    rt = config.runtime
    if rt.distribute == "mirrored":
        return rt.num_cpu_devices
    if rt.distribute == "multi_worker":
        return cluster_from_environment(environ).num_workers
    return 1


# ----------------------------------------------------------------------------------------------------------
# devices, strategy, XLA


def configure_devices(config: TrainConfig, log: Callable = print):
    """Splits the CPU into logical devices (for testing mirrored training); must run before TF starts."""
    if config.runtime.num_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.runtime.num_cpu_devices)
        except RuntimeError:
            existing = len(tf.config.list_logical_devices("CPU"))
            if existing != config.runtime.num_cpu_devices:
                raise ConfigError("num_cpu_devices", f"TensorFlow already started with {existing} CPU device(s); "
                                                     "set it before anything else runs") from None


def setup(config: TrainConfig, log: Callable = print, precision: Optional[str] = None):
    """The first thing a run does: logical CPU devices, and under multi_worker the strategy itself (it must come
    before any other TensorFlow op) and the check that every worker has the same flags (`check_same_flags`). A
    missing or malformed TF_CONFIG, or workers started with different flags, is a ConfigError naming
    --distribute (on every worker, before anything is written). `precision`: what --mixed_precision resolved to
    on this worker (`tfadv.precision`); the workers compare it in place of the flag, so `auto` resolved
    differently on machines with and without bfloat16 hardware is refused like different flags."""
    configure_devices(config, log)
    if config.runtime.distribute == "multi_worker":
        try:
            cluster_from_environment()
        except ValueError as error:
            raise ConfigError("distribute", str(error)) from None
        check_same_flags(strategy(config, log), config, precision)


# Flags that may differ between the workers of one run: where this machine keeps the data, and how long this
# worker waits for the others. Every other flag must be the same on every worker (the same command).
LOCAL_FLAGS = ("data_dir", "cluster_timeout")


def flag_digests(config: TrainConfig, precision: Optional[str] = None) -> dict:
    """{flag: 32-bit digest of its value as two 16-bit numbers} for every flag but LOCAL_FLAGS (exact in float32,
    the dtype every collective supports); --mixed_precision's value is `precision` (the resolved one) if given."""
    digests = {}
    values = config.flat()
    if precision is not None:
        values["mixed_precision"] = precision
    for name, value in sorted(values.items()):
        if name not in LOCAL_FLAGS:
            digest = hashlib.sha256(f"{name}={value!r}".encode()).digest()
            digests[name] = [int.from_bytes(digest[0:2], "big"), int.from_bytes(digest[2:4], "big")]
    return digests


def _gather(strategy_, values: list) -> list:
    """Every worker's `values` (one list of numbers per replica, in task order), by an all-gather."""
    row = tf.constant([values], tf.float32)
    gathered = strategy_.gather(strategy_.experimental_distribute_values_from_function(lambda _: row), axis=0)
    return [[int(v) for v in worker] for worker in gathered.numpy()]


def check_same_flags(strategy_, config: TrainConfig, precision: Optional[str] = None):
    """ConfigError naming --distribute on every worker if the workers of a multi-worker run were started with
    different flags (each would train its own configuration while the chief writes only its own; Boundary II
    item 6): each worker's digest of its effective configuration (`flag_digests`, LOCAL_FLAGS left out) is
    all-gathered and compared, then, if they differ, each flag's digest, to name the flags."""
    digests = flag_digests(config, precision)
    whole = hashlib.sha256(repr(sorted(digests.items())).encode()).digest()
    summary = [len(digests)] + [int.from_bytes(whole[i:i + 2], "big") for i in range(0, 16, 2)]
    workers = _gather(strategy_, summary)
    if all(worker == workers[0] for worker in workers):
        return
    names = ""
    if all(worker[0] == workers[0][0] for worker in workers):  # the same flags: name the ones whose values differ
        per_flag = _gather(strategy_, [piece for pieces in digests.values() for piece in pieces])
        flags = list(digests)
        names = sorted({flags[i // 2] for worker in per_flag for i, piece in enumerate(worker)
                        if piece != per_flag[0][i]})
        names = f" (--{', --'.join(names)})"
    # one more collective before leaving: a worker that has its result exits and closes its server, and a peer that
    # still fetches data from it would fail (the peers wait here until every worker has everything); this last one
    # may fail when the others have left already, which changes nothing
    with contextlib.suppress(tf.errors.OpError):
        _gather(strategy_, [0])
    only = " and --".join(LOCAL_FLAGS)
    auto = ("; --mixed_precision=auto resolved differently on these machines (one has bfloat16 hardware): pass "
            "--mixed_precision=bfloat16 or none" if "mixed_precision" in names and config.runtime.mixed_precision ==
            "auto" else "")
    raise ConfigError("distribute", f"the workers of TF_CONFIG run with different flags{names}: every worker must run "
                                    f"the same command (only --{only} may differ){auto}")


def strategy(config: TrainConfig, log: Callable = print):
    """The process's strategy for `config.runtime.distribute`, made on the first call and returned after;
    asking for another kind (or other devices) in the same process is a RuntimeError."""
    mode = config.runtime.distribute
    if mode == "none":
        return tf.distribute.get_strategy()
    if mode == "multi_worker":
        key = (mode, os.environ.get(TF_CONFIG))
    else:
        gpus = tf.config.list_logical_devices("GPU")
        devices = tuple(d.name for d in gpus) or tuple(d.name for d in tf.config.list_logical_devices("CPU"))
        key = (mode, devices)
    if _PROCESS:
        if _PROCESS["key"] != key:
            raise RuntimeError(f"this process already made a {_PROCESS['key'][0]} strategy; TensorFlow allows one "
                               f"per process (asked for {mode}): run it in a new process")
        return _PROCESS["strategy"]
    if mode == "multi_worker":
        cluster = cluster_from_environment()
        made = _join_cluster(cluster, config.runtime.cluster_timeout, log)
        log(f"multi_worker: {cluster.task_type} {cluster.task_index} of {cluster.num_workers} worker(s)"
            f"{' (chief: writes the run directory)' if cluster.is_chief else ''}")
    else:
        made = tf.distribute.MirroredStrategy(devices=list(key[1]))
    _PROCESS.update(key=key, strategy=made)
    return made


# A watchdog process beside a worker in TensorFlow's handshake. The handshake blocks in C++ holding the GIL (no
# Python thread or signal handler of this process runs until it returns) and TF installs its own SIGTERM handler,
# so a worker whose peers never came printed nothing, ignored Ctrl-C and SIGTERM and waited for ever. The long
# wait now happens before, in Python (cluster.wait_for_peers); the watchdog covers the handshake after it (a peer
# that died in between): it says every 30 s how long it has waited; after the rest of --cluster_timeout, or on
# Ctrl-C / SIGTERM to the process group, it prints one line and SIGKILLs the worker (exit status 137). The worker
# closes its stdin when joined.
_WATCHDOG = r"""
import os, select, signal, sys, time
pid, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
def stop(line):
    sys.stderr.write("error: " + line + "\n"); sys.stderr.flush(); os.kill(pid, signal.SIGKILL); os._exit(1)
def on_signal(signum, frame):
    stop("stopped by %s while waiting for the other workers" % signal.Signals(signum).name)
for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, on_signal)
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # blocked by the worker until here
start = time.monotonic()
while True:
    left = timeout - (time.monotonic() - start)
    if left <= 0:
        stop(message)
    ready, _, _ = select.select([sys.stdin], [], [], min(30.0, left))
    if ready:
        os._exit(0)
    waited = time.monotonic() - start
    if waited < timeout:
        print("multi_worker: still waiting for the other worker(s) after %.0f s" % waited, flush=True)
"""


def start_watchdog(pid: int, timeout: float, message: str) -> subprocess.Popen:
    """The `_WATCHDOG` process for worker `pid`; it exits when its stdin is closed. Ctrl-C and SIGTERM stay
    blocked in it (a signal mask survives fork and exec) until its handlers are installed: a signal sent while it
    started (Python takes a second under load) used to kill it silently and leave the worker waiting for ever
    (tests/test_multi_worker.py failed so in a clean-clone CI run)."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(pid), repr(float(timeout)), message],
                                stdin=subprocess.PIPE)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _join_cluster(cluster: Cluster, timeout: float, log: Callable):
    """MultiWorkerMirroredStrategy, with a watchdog (`_WATCHDOG`) while the workers join: it says what it waits
    for, gives up after `timeout` seconds with one line, and stops on Ctrl-C. Afterwards SIGTERM terminates this
    process again (Python's default; TF had replaced it)."""
    others = [address for kind, addresses in cluster.tasks.items() for index, address in enumerate(addresses)
              if (kind, index) != (cluster.task_type, cluster.task_index)]
    message = (f"--distribute=multi_worker: the other worker(s) of TF_CONFIG ({', '.join(others)}) did not join "
               f"within {timeout:g} s (--cluster_timeout); start the same command on every worker")
    if others:
        log(f"multi_worker: waiting for {len(others)} other worker(s) ({', '.join(others)}), up to {timeout:g} s "
            "(--cluster_timeout)")
    # the long wait in Python, where every signal works (cluster.wait_for_peers); the watchdog covers TF's
    # handshake after it, which is short once every worker answers
    waited = wait_for_peers(cluster, timeout, log)
    watchdog = start_watchdog(os.getpid(), max(timeout - waited, 30.0), message)
    try:
        made = tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        watchdog.stdin.close()  # joined (or failed): the watchdog exits
        watchdog.wait()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return made


def is_multi_worker(strategy_) -> bool:
    return isinstance(strategy_, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy_) -> bool:
    """Whether this process writes the run directory (always, except on a non-chief multi_worker task)."""
    if not is_multi_worker(strategy_):
        return True
    resolver = strategy_.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" if has_chief else (task_type == "worker" and task_id == 0)


def worker_directory(output_dir: str, strategy_) -> str:
    """Where this process writes: `output_dir` on the chief; on another worker a temporary directory (remove it
    with `remove_worker_directory` when the run ends, as Keras does with non-chief saves). Its name is fixed
    by the task and the run directory (`<tmp>/tfadv-worker1-<hash>`), and it is emptied first, so a worker
    that was killed (and could not clean up) leaves nothing behind once it is relaunched and finishes."""
    if is_chief(strategy_):
        return output_dir
    task = strategy_.cluster_resolver
    digest = hashlib.sha1(os.path.realpath(output_dir).encode()).hexdigest()[:12]
    directory = os.path.join(tempfile.gettempdir(), f"tfadv-{task.task_type}{task.task_id}-{digest}")
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    return directory


def remove_worker_directory(directory: str, output_dir: str):
    """Removes a non-chief worker's temporary directory (never the run directory)."""
    if directory and os.path.realpath(directory) != os.path.realpath(output_dir):
        shutil.rmtree(directory, ignore_errors=True)


def resolve_jit(config: TrainConfig, log: Callable = print) -> bool:
    """`auto`: XLA on GPUs; not on CPUs (measured ~20 % slower for a ResNet step on this 2-core CPU), and never
    with MirroredStrategy over logical CPU devices (fails in TF 2.21: resource on another CPU device)."""
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    cpu_mirrored = config.runtime.distribute == "mirrored" and not has_gpu
    if config.runtime.jit_compile == "true":
        if cpu_mirrored:
            log("warning: XLA with MirroredStrategy over CPU devices fails in TF 2.21; --jit_compile=true kept")
        return True
    if config.runtime.jit_compile == "false":
        return False
    if cpu_mirrored:
        log("jit_compile=auto: XLA off (MirroredStrategy over logical CPU devices does not compile with XLA)")
        return False
    log(f"jit_compile=auto: XLA {'on (GPU)' if has_gpu else 'off (CPU: XLA measured slower here)'}")
    return has_gpu


def prepare_trainer(trainer, strategy_, element_spec):
    """Makes a compiled trainer (every variable built) trainable by Keras 3's `fit` under
    MultiWorkerMirroredStrategy; a no-op under the other strategies. Two gaps of Keras 3.15's TF trainer:

    * before fitting it reduces one (images, labels) batch with `strategy.reduce`, which fails for a tuple of
      per-replica values under MultiWorkerMirroredStrategy; everything is built here from the dataset's
      element_spec instead, and that step is skipped;
    * it averages a step's logs with `strategy.reduce("MEAN", value, axis=0)` under MultiWorkerMirroredStrategy,
      which fails for scalars: each replica's logs are returned as 1-vectors, whose mean over axis 0 is the mean
      over replicas, as MirroredStrategy logs it.
    """
    if not is_multi_worker(strategy_):
        return trainer
    with strategy_.scope():
        trainer._symbolic_build(data_batch=element_spec)
    trainer._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    train_step = trainer.train_step

    def train_step_with_vector_logs(data):
        return {name: tf.reshape(value, [1]) for name, value in train_step(data).items()}

    trainer.train_step = train_step_with_vector_logs
    return trainer

