"""Replica parity: every defense, one short epoch, under one device, a MirroredStrategy over logical CPU devices
and two local worker processes (MultiWorkerMirroredStrategy), compared step by step (`parity_table`). The harness
behind tests/test_parity.py and scripts/parity_table.py; it launches processes, so it lives apart from the
strategy code in `tfadv.distribute`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

import tensorflow as tf

from tfadv import assembly
from tfadv.cluster import launch, stop
from tfadv.config import TrainConfig
from tfadv.distribute import is_chief, prepare_trainer, setup, strategy
from tfadv.training import registry

PARITY_BASE = {"dataset": "digits", "model": "mlp", "batch_size": 32, "lr": 0.05, "momentum": 0.9,
               "weight_decay": 5e-4, "eps": 2.0, "step_size": 0.5, "attack_steps": 3, "free_replays": 2,
               "ssat_replays": 2, "trades_beta": 6.0, "seed": 3, "epochs": 1, "lr_schedule": "constant"}
# two cases besides one per registered method; "distillation" and "swa" are special cases (see parity_run)
PARITY_EXTRA_CASES = {
    "pgd+distillation": {"defense": "pgd"},
    "pgd+swa": {"defense": "pgd", "swa": True, "swa_start_epoch": 1, "epochs": 2},
}
PARITY_MODES = ("mirrored", "multi_worker")


def parity_cases() -> dict:
    """case -> flags on top of PARITY_BASE: every registered method (in registration order) with its example
    flags (`registry.Method.example`: label_smoothing's --ls_method, ...), then PARITY_EXTRA_CASES. (fgsm_rs
    takes one step of 1.25 eps = 2.5.)"""
    cases = {method.name: {"defense": method.name, **method.example} for method in registry.methods()}
    return {**cases, **PARITY_EXTRA_CASES}


def __getattr__(name):
    if name == "PARITY_CASES":  # read from the registry when it is read (a method registered later is in it)
        return parity_cases()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parity_config(case: str, distribute: str = "none", replicas: int = 1) -> TrainConfig:
    flags = {**PARITY_BASE, **parity_cases()[case], "distribute": distribute, "output_dir": "unused"}
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


def _build(config, distillation, steps, strategy_):
    """(network, compiled trainer with its optimizer built) of `config` in `strategy_`'s scope."""
    import keras

    from tfadv import callbacks, experiment

    o = config.optimization
    updates = steps * config.updates_per_batch()
    keras.utils.set_random_seed(config.runtime.seed)
    with strategy_.scope():
        network = assembly.network(config)
        trainer = assembly.trainer(config, network, distillation, updates)
        schedule = callbacks.make_schedule(o.lr_schedule, o.lr, o.epochs, updates)
        optimizer = experiment.build_optimizer(config, schedule)
        trainer.compile(optimizer=optimizer, jit_compile=False)
        optimizer.build(network.trainable_variables)
    return network, trainer


def _state(trainer) -> list:
    """Everything a train step reads and writes: the network's weights, the optimizer's variables (its iteration
    counter, which keys the random draws, and the momentum) and the trainer's extra state (Free-AT's delta)."""
    variables = list(trainer.network.weights) + list(trainer.optimizer.variables)
    variables += [v for _, v in sorted(trainer.extra_state().items())]
    return [tf.convert_to_tensor(v).numpy() for v in variables]


def _set_state(trainer, state) -> None:
    variables = list(trainer.network.weights) + list(trainer.optimizer.variables)
    variables += [v for _, v in sorted(trainer.extra_state().items())]
    assert len(variables) == len(state)
    for variable, value in zip(variables, state):
        variable.assign(value)


def _one_device_steps(trainer, shadow, batches):
    """A callback comparing every step of `trainer` (under a distribution strategy) with the same step taken by
    `shadow`, a one-device trainer of the same case, from the same state on the same global batch: before each
    step the trainer's state is copied, after it the shadow is set to that copy and takes the step. Its records:
    `weights` (per step, the largest |weight difference| after the step, weights and extra state) and `losses`
    (per step, the two steps' losses, the trainer's from the logged running mean). Comparing steps from one state
    keeps what the trajectories of tests/test_parity.py cannot: there a last-bit difference of one step (the
    gradients summed over replicas in another order) can change a later step of a training attack that takes
    the sign of an input-gradient component lying within float32 round-off of zero, after which the two
    trajectories are different trainings."""
    import keras
    import numpy as np

    n = len(trainer.network.weights)
    extra = len(trainer.extra_state())
    # traced now, outside the strategy's scope: one replica, no 1/replicas scaling
    step = tf.function(shadow.train_step).get_concrete_function(
        tuple(tf.TensorSpec(b.shape, b.dtype) for b in batches[0]))

    class Callback(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights, self.losses, self.means, self.before = [], [], [], None

        def on_train_batch_begin(self, batch, logs=None):
            self.before = _state(trainer)

        def on_train_batch_end(self, batch, logs=None):
            k = len(self.weights)
            after = _state(trainer)
            self.means.append(float(np.asarray(logs["loss"]).reshape(-1)[0]))
            _set_state(shadow, self.before)
            shadow.reset_metrics()
            loss = float(step(tuple(tf.constant(b) for b in batches[k]))["loss"])
            ours = _state(shadow)
            compared = list(range(n)) + list(range(len(after) - extra, len(after)))
            self.weights.append(max(float(np.max(np.abs(ours[i] - after[i]))) for i in compared))
            # the step's own loss from the logged running mean of the epoch (`batch` counts within it)
            mean, previous = self.means[-1], (self.means[-2] if batch else 0.0)
            self.losses.append(((batch + 1) * mean - batch * previous, loss))

    return Callback()


def parity_run(strategy_, cases=None, steps: int = 4, log: Callable = print, stepwise: bool = False) -> dict:
    """Trains every case of `parity_cases()` (or `cases`) for one short epoch (`steps` global batches; the SWA case
    two) under `strategy_` (the default strategy, or the process's strategy made by `setup`/`strategy`) and
    returns {case: {"losses": per-step losses, "weights": [arrays]}}. A new network is built in the strategy's
    scope for each case. With `stepwise`, every step is also taken by a one-device trainer from the same state on
    the same global batch (`_one_device_steps`), and each case's result holds "step_weights" (per step, the
    largest |weight difference| after it) and "step_losses" (per step: this run's loss, the one-device loss)."""
    import keras
    import numpy as np

    from tfadv import callbacks, data

    splits = None
    results = {}
    for case in cases or parity_cases():
        config = parity_config(case)
        o = config.optimization
        if splits is None:
            splits = data.load("digits")
        train = data.take(splits.train, steps * o.batch_size)
        distillation = _parity_teacher(splits.spec) if case.endswith("distillation") else None
        network, trainer = _build(config, distillation, steps, strategy_)
        dataset = data.train_pipeline(train, splits.spec, o.batch_size, config.runtime.seed, o.epochs,
                                      noise_sigma=config.budget().fraction("noise_sigma"))
        check = None
        if stepwise:  # the one-device trainer, built outside the strategy's scope
            _, shadow = _build(config, distillation, steps, tf.distribute.get_strategy())
            check = _one_device_steps(trainer, shadow, [tuple(np.asarray(t) for t in b) for b in dataset])
        prepare_trainer(trainer, strategy_, dataset.element_spec)
        means = []
        record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: means.append(
            float(np.asarray(logs["loss"]).reshape(-1)[0])))
        swa = None
        extra = [] if check is None else [check]
        if config.averaging.swa:
            swa = callbacks.StochasticWeightAveraging(network, config.swa_start(), config.averaging.swa_mode)
            extra.append(swa)
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
        if check is not None:
            results[case]["step_weights"] = np.array(check.weights, np.float64)
            results[case]["step_losses"] = np.array(check.losses, np.float64)
        log(f"{case}: {len(losses)} steps, last loss {losses[-1]:.6f}")
    return results


PARITY_WORKER = r"""
import sys
from tfadv import cli
cli.quiet_tensorflow()
from tfadv import parity
parity.parity_worker_main(sys.argv[1:])
"""


def parity_worker_main(argv):
    """Entry of one parity process: argv = [modes, replicas, result path pattern with {mode}, steps, case, ...];
    `modes` is one of none, mirrored, multi_worker, or "none,mirrored" (one device, then the mirrored strategy,
    in one process: the default strategy does not collide with a MirroredStrategy)."""
    import numpy as np

    modes, replicas, pattern, steps, *cases = argv
    quiet = lambda *_: None  # noqa: E731
    configs = {mode: parity_config(next(iter(parity_cases())), mode, int(replicas)) for mode in modes.split(",")}
    for config in configs.values():  # before any other TensorFlow op: logical devices, a multi-worker strategy
        setup(config, log=quiet)
    for mode, config in configs.items():
        strategy_ = strategy(config, log=quiet)
        results = parity_run(strategy_, cases or None, int(steps), log=quiet, stepwise=mode != "none")
        if is_chief(strategy_):
            arrays = {}
            for case, result in results.items():
                for name in ("losses", "step_weights", "step_losses"):
                    if name in result:
                        arrays[f"{case}/{name}"] = result[name]
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
            if name.startswith("w"):
                entry["weights"][int(name[1:])] = archive[key]
            else:
                entry[name] = archive[key]
    return {case: {**e, "weights": [e["weights"][i] for i in sorted(e["weights"])]} for case, e in out.items()}


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


def parity_step_table(results: dict, reference: str = "none") -> list:
    """Rows {case, mode: (max |weight difference| after a step, max relative loss difference of a step)} of every
    step of each mode against the same step taken by one device from the same state (`_one_device_steps`; the
    modes other than `reference` record it)."""
    import numpy as np

    rows = []
    for case in results[reference]:
        row = {"case": case}
        for mode, result in results.items():
            if mode == reference:
                continue
            ours, one_device = result[case]["step_losses"].T
            row[mode] = (float(np.max(result[case]["step_weights"])),
                         float(np.max(np.abs(ours - one_device) / np.abs(one_device))))
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
