"""Devices, the distribution strategy and XLA, in one home; plus the replica-parity harness.

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
order of float additions; `parity_run` / `parity_table` measure it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Callable, Optional

import tensorflow as tf

from tfadv.config import ConfigError, TrainConfig

TF_CONFIG = "TF_CONFIG"
_TASK_TYPES = ("chief", "worker")
# the process's strategy: {"key": (mode, devices), "strategy": tf.distribute.Strategy}
_PROCESS = {}


# ----------------------------------------------------------------------------------------------------------
# the cluster (TF_CONFIG)


@dataclasses.dataclass(frozen=True)
class Cluster:
    """What TF_CONFIG says: the task addresses by type, and this process's task."""

    tasks: dict  # {"chief": [...], "worker": [...]}
    task_type: str
    task_index: int

    @property
    def num_workers(self) -> int:
        return sum(len(self.tasks.get(kind, ())) for kind in _TASK_TYPES)

    @property
    def is_chief(self) -> bool:
        """The task that writes the run directory: `chief` if the cluster has one, else worker 0 (TF's rule)."""
        if "chief" in self.tasks:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0


def parse_tf_config(text: Optional[str]) -> Cluster:
    """The Cluster of a TF_CONFIG value; ValueError (a sentence without the flag name) if missing or malformed."""
    example = ('e.g. TF_CONFIG=\'{"cluster": {"worker": ["127.0.0.1:12345", "127.0.0.1:12346"]}, '
               '"task": {"type": "worker", "index": 0}}\'')
    if not text or not text.strip():
        raise ValueError(f"multi_worker needs the {TF_CONFIG} environment variable (the cluster and this task), "
                         f"{example}")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{TF_CONFIG} is not valid JSON ({error.msg} at character {error.pos}); {example}") from None
    if not isinstance(value, dict) or not isinstance(value.get("cluster"), dict) or not isinstance(value.get("task"),
                                                                                                   dict):
        raise ValueError(f"{TF_CONFIG} needs a 'cluster' object and a 'task' object; {example}")
    tasks = {}
    for kind, addresses in value["cluster"].items():
        if kind not in _TASK_TYPES:
            raise ValueError(f"{TF_CONFIG}: cluster task type {kind!r} is not supported (only chief and worker: "
                             "MultiWorkerMirroredStrategy has no parameter servers)")
        if (not isinstance(addresses, list) or not addresses
                or not all(isinstance(a, str) and _is_address(a) for a in addresses)):
            raise ValueError(f"{TF_CONFIG}: cluster[{kind!r}] must be a non-empty list of 'host:port' strings, got "
                             f"{addresses!r}")
        tasks[kind] = list(addresses)
    if "worker" not in tasks and "chief" not in tasks:
        raise ValueError(f"{TF_CONFIG}: the cluster lists no worker; {example}")
    if len(tasks.get("chief", ())) > 1:
        raise ValueError(f"{TF_CONFIG}: a cluster has at most one chief, got {len(tasks['chief'])}")
    task_type, index = value["task"].get("type"), value["task"].get("index", 0)
    if task_type not in tasks:
        raise ValueError(f"{TF_CONFIG}: task type {task_type!r} is not in the cluster ({', '.join(tasks)})")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(tasks[task_type]):
        raise ValueError(f"{TF_CONFIG}: task index {index!r} is not one of the {len(tasks[task_type])} "
                         f"{task_type} task(s)")
    return Cluster(tasks, task_type, index)


def _is_address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def cluster_from_environment(environ=None) -> Cluster:
    return parse_tf_config((os.environ if environ is None else environ).get(TF_CONFIG))


def num_replicas(config: TrainConfig, environ=None) -> int:
    """Replicas in sync that `config` asks for (ValueError for a bad TF_CONFIG under multi_worker)."""
    rt = config.runtime
    if rt.distribute == "mirrored":
        return rt.num_cpu_devices
    if rt.distribute == "multi_worker":
        return cluster_from_environment(environ).num_workers
    return 1


def free_ports(count: int) -> list:
    """`count` TCP ports free on 127.0.0.1 right now (bound together, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_cluster(num_workers: int) -> list:
    """One TF_CONFIG value per worker of a cluster on 127.0.0.1 with free ports (worker 0 is the chief)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(num_workers)]
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(num_workers)]


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


def setup(config: TrainConfig, log: Callable = print):
    """The first thing a run does: logical CPU devices, and under multi_worker the strategy itself (it must come
    before any other TensorFlow op). A missing or malformed TF_CONFIG is a ConfigError naming --distribute."""
    configure_devices(config, log)
    if config.runtime.distribute == "multi_worker":
        try:
            cluster_from_environment()
        except ValueError as error:
            raise ConfigError("distribute", str(error)) from None
        strategy(config, log)


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
        made = tf.distribute.MultiWorkerMirroredStrategy()
        log(f"multi_worker: {cluster.task_type} {cluster.task_index} of {cluster.num_workers} worker(s)"
            f"{' (chief: writes the run directory)' if cluster.is_chief else ''}")
    else:
        made = tf.distribute.MirroredStrategy(devices=list(key[1]))
    _PROCESS.update(key=key, strategy=made)
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


# ----------------------------------------------------------------------------------------------------------
# replica parity: every defense, one short epoch, under the process's strategy

PARITY_BASE = {"dataset": "digits", "model": "mlp", "batch_size": 32, "lr": 0.05, "momentum": 0.9,
               "weight_decay": 5e-4, "eps": 2.0, "step_size": 0.5, "attack_steps": 3, "free_replays": 2,
               "ssat_replays": 2, "trades_beta": 6.0, "seed": 3, "epochs": 1, "lr_schedule": "constant"}
# case -> flags on top of PARITY_BASE; "teacher" and "swa" are special cases (see parity_run)
PARITY_CASES = {
    "natural": {"defense": "natural"},
    "pgd": {"defense": "pgd"},
    "fgsm_rs": {"defense": "fgsm_rs", "step_size": 2.5},
    "free": {"defense": "free"},
    "trades": {"defense": "trades"},
    "bat": {"defense": "bat"},
    "ssat": {"defense": "ssat"},
    "label_smoothing": {"defense": "label_smoothing", "ls_method": "als", "ls_alpha": 0.1, "noise_sigma": 4.0},
    "logit_squeeze": {"defense": "logit_squeeze", "squeeze_beta": 0.5},
    "pgd+distillation": {"defense": "pgd"},
    "pgd+swa": {"defense": "pgd", "swa": True, "swa_start_epoch": 1, "epochs": 2},
}
PARITY_MODES = ("mirrored", "multi_worker")


def parity_config(case: str, distribute: str = "none", replicas: int = 1) -> TrainConfig:
    flags = {**PARITY_BASE, **PARITY_CASES[case], "distribute": distribute, "output_dir": "unused"}
    if distribute == "mirrored":
        flags["num_cpu_devices"] = replicas
    return TrainConfig.from_flags(flags)


def _parity_teacher(spec):
    """A fixed random MLP teacher (the same weights in every process), called in inference mode."""
    import keras

    from tfadv import models, training

    keras.utils.set_random_seed(1234)
    teacher = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    logits = lambda x: teacher(x, training=False)  # noqa: E731
    return training.Distillation({"robust": (logits, 0.5), "standard": (logits, 0.25)}, 0.25, 2.0)


def parity_run(strategy_, cases=None, steps: int = 4, log: Callable = print) -> dict:
    """Trains every case of PARITY_CASES (or `cases`) for one short epoch (`steps` global batches; the SWA case
    two) under `strategy_` (the default strategy, or the process's strategy made by `setup`/`strategy`) and
    returns {case: {"losses": per-step losses, "weights": [arrays]}}. A new network is built in the strategy's
    scope for each case."""
    import keras
    import numpy as np

    from tfadv import callbacks, data, experiment

    splits = None
    results = {}
    for case in cases or PARITY_CASES:
        config = parity_config(case)
        o = config.optimization
        if splits is None:
            splits = data.load("digits")
        train = data.take(splits.train, steps * o.batch_size)
        distillation = _parity_teacher(splits.spec) if case.endswith("distillation") else None
        updates = steps * config.updates_per_batch()
        keras.utils.set_random_seed(config.runtime.seed)
        with strategy_.scope():
            network = config.build_network()
            trainer = config.build_trainer(network, distillation, updates)
            schedule = callbacks.make_schedule(o.lr_schedule, o.lr, o.epochs, updates)
            optimizer = experiment.build_optimizer(config, schedule)
            trainer.compile(optimizer=optimizer, jit_compile=False)
            optimizer.build(network.trainable_variables)
        dataset = data.train_pipeline(train, splits.spec, o.batch_size, config.runtime.seed, o.epochs,
                                      noise_sigma=config.budget().fraction("noise_sigma"))
        prepare_trainer(trainer, strategy_, dataset.element_spec)
        means = []
        record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: means.append(
            float(np.asarray(logs["loss"]).reshape(-1)[0])))
        swa = None
        extra = []
        if config.averaging.swa:
            swa = callbacks.StochasticWeightAveraging(network, config.swa_start(), config.averaging.swa_mode)
            extra = [swa]
        trainer.fit(dataset, epochs=o.epochs, steps_per_epoch=steps, verbose=0, shuffle=False,
                    callbacks=[record, *extra])
        if swa is not None:
            swa.apply_average()
        # the logged loss is the epoch's running mean: recover each step's loss from consecutive means
        losses = []
        for epoch in range(o.epochs):
            epoch_means = means[epoch * steps:(epoch + 1) * steps]
            losses += [k * m - (k - 1) * epoch_means[k - 2] if k > 1 else m
                       for k, m in enumerate(epoch_means, start=1)]
        # the weights, then the state a checkpoint keeps besides them (Free-AT's perturbation of every example)
        state = [tf.convert_to_tensor(v).numpy() for _, v in sorted(trainer.extra_state().items())]
        results[case] = {"losses": np.array(losses, np.float64),
                         "weights": [w.numpy() for w in network.weights] + state}
        log(f"{case}: {len(losses)} steps, last loss {losses[-1]:.6f}")
    return results


PARITY_WORKER = r"""
import sys
from tfadv import cli
cli.quiet_tensorflow()
from tfadv import distribute
distribute.parity_worker_main(sys.argv[1:])
"""


def parity_worker_main(argv):
    """Entry of one parity process: argv = [modes, replicas, result path pattern with {mode}, steps, case, ...];
    `modes` is one of none, mirrored, multi_worker, or "none,mirrored" (one device, then the mirrored strategy,
    in one process: the default strategy does not collide with a MirroredStrategy)."""
    import numpy as np

    modes, replicas, pattern, steps, *cases = argv
    quiet = lambda *_: None  # noqa: E731
    configs = {mode: parity_config(next(iter(PARITY_CASES)), mode, int(replicas)) for mode in modes.split(",")}
    for config in configs.values():  # before any other TensorFlow op: logical devices, a multi-worker strategy
        setup(config, log=quiet)
    for mode, config in configs.items():
        strategy_ = strategy(config, log=quiet)
        results = parity_run(strategy_, cases or None, int(steps), log=quiet)
        if is_chief(strategy_):
            arrays = {}
            for case, result in results.items():
                arrays[f"{case}/losses"] = result["losses"]
                for i, w in enumerate(result["weights"]):
                    arrays[f"{case}/w{i}"] = w
            np.savez(pattern.format(mode=mode), **arrays)


def _load_parity(path: str) -> dict:
    import numpy as np

    out = {}
    with np.load(path) as archive:
        for key in archive.files:
            case, name = key.split("/")
            entry = out.setdefault(case, {"losses": None, "weights": {}})
            if name == "losses":
                entry["losses"] = archive[key]
            else:
                entry["weights"][int(name[1:])] = archive[key]
    return {case: {"losses": e["losses"], "weights": [e["weights"][i] for i in sorted(e["weights"])]}
            for case, e in out.items()}


def _environment(extra: Optional[dict] = None) -> dict:
    """This environment with this tfadv first on PYTHONPATH, TensorFlow's C++ log quiet unless set, no
    inherited TF_CONFIG, and `extra` on top."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.pop(TF_CONFIG, None)
    env.update(extra or {})
    return env


def launch(args: list, num_workers: int = 0, env: Optional[dict] = None, **popen) -> list:
    """Starts `args` (a command list) once, or once per worker of a new local cluster with TF_CONFIG set;
    each in its own process group (stop them with `stop`)."""
    configs = local_cluster(num_workers) if num_workers else [None]
    return [subprocess.Popen(args, env=_environment({**(env or {}), **({TF_CONFIG: c} if c else {})}),
                             start_new_session=True, **popen) for c in configs]


def stop(processes):
    """Kills each process's group (started by `launch`) and reaps it."""
    import signal

    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        with contextlib.suppress(Exception):
            process.wait(timeout=30)


def parity_results(workdir: str, modes=("none",) + PARITY_MODES, steps: int = 4, cases=None,
                   timeout: float = 600) -> dict:
    """{mode: parity_run results} for modes among "none" (one device), "mirrored" (2 logical CPU devices) and
    "multi_worker" (two local worker processes): one process per mode, except that none and mirrored share
    one; all started at once."""
    groups = [[mode] for mode in modes if mode not in ("none", "mirrored")]
    groups.insert(0, [mode for mode in ("none", "mirrored") if mode in modes])
    pattern = os.path.join(workdir, "parity-{mode}.npz")
    running = {}
    try:
        for group in filter(None, groups):
            name = ",".join(group)
            args = [sys.executable, "-c", PARITY_WORKER, name, "2" if "mirrored" in group else "1", pattern,
                    str(steps), *(cases or [])]
            log_path = os.path.join(workdir, f"parity-{name}.log")
            with open(log_path, "w") as log_file:
                # on CPUs: "mirrored" means 2 logical CPU devices, whatever GPUs the machine has
                running[name] = (log_path, launch(args, num_workers=2 if group == ["multi_worker"] else 0,
                                                  env={"CUDA_VISIBLE_DEVICES": ""}, stdout=log_file,
                                                  stderr=subprocess.STDOUT))
        for name, (log_path, processes) in running.items():
            for process in processes:
                process.wait(timeout=timeout)
            codes = [p.returncode for p in processes]
            if any(codes):
                with open(log_path) as handle:
                    raise RuntimeError(f"parity run {name} failed ({codes}):\n{handle.read()[-4000:]}")
        return {mode: _load_parity(pattern.format(mode=mode)) for mode in modes}
    finally:
        for _, processes in running.values():
            stop(processes)


def parity_table(results: dict, reference: str = "none") -> list:
    """Rows {case, mode: (max |weight difference|, max |loss difference|, max relative loss difference)} of
    each mode against `reference`."""
    import numpy as np

    rows = []
    for case, base in results[reference].items():
        row = {"case": case}
        for mode, result in results.items():
            if mode == reference:
                continue
            other = result[case]
            weight = max(float(np.max(np.abs(a - b))) for a, b in zip(other["weights"], base["weights"]))
            loss = float(np.max(np.abs(other["losses"] - base["losses"])))
            relative = float(np.max(np.abs(other["losses"] - base["losses"]) / np.abs(base["losses"])))
            row[mode] = (weight, loss, relative)
        rows.append(row)
    return rows


def parity_markdown(rows: list, modes=PARITY_MODES) -> str:
    names = {"mirrored": "2 devices (mirrored)", "multi_worker": "2 workers (multi_worker)"}
    header = "| defense | " + " | ".join(f"{names.get(m, m)}: max abs weight diff / max loss diff" for m in modes)
    lines = [header + " |", "| --- |" + " --- |" * len(modes)]
    for row in rows:
        cells = [f"{row[m][0]:.1e} / {row[m][1]:.1e}" if m in row else "-" for m in modes]
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
