"""A training run from a TrainConfig: data -> network -> method -> fit -> evaluation -> SavedModel.

Order matters for a user who mistyped something: configuration and data are checked before the output
directory is touched; a finished run is never overwritten without --overwrite; an interrupted run resumes
from its last completed epoch (rerun the same command).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import sys
from typing import Callable, Optional

import keras
import numpy as np

from tfadv import assembly, cluster, data, distribute, evaluation, export, runs, training
from tfadv import precision as precision_lib
from tfadv.callbacks import (EpochLog, ResumableCheckpoint, RobustValidation, StochasticWeightAveraging,
                             make_schedule, schedule_curve, weights_finite)
from tfadv.config import ConfigError, TrainConfig, read_flagfile
from tfadv.errors import RunError  # noqa: F401  (experiment.RunError, as before)


# ----------------------------------------------------------------------------------------------------------
# precision (devices, strategy and XLA: tfadv.distribute)


def resolve_precision(config: TrainConfig) -> precision_lib.Precision:
    """--mixed_precision for this run (`tfadv.precision`): `auto` resolves from the device, or, for an interrupted
    run in --output_dir that this run resumes, to the precision that run started with (its flags.txt)."""
    out, recorded = config.runtime.output_dir, None
    if (config.runtime.mixed_precision == precision_lib.AUTO and out and not config.runtime.overwrite
            and not os.path.exists(runs.metrics_path(out))):
        recorded = precision_lib.recorded_in_run(runs.flags_path(out))
    return precision_lib.resolve(config.runtime.mixed_precision, recorded)


def set_precision(config: TrainConfig, resolved: Optional[precision_lib.Precision] = None) -> precision_lib.Precision:
    """Sets Keras' global dtype policy for the run's precision (`resolve_precision` unless given); returns it."""
    resolved = resolved or resolve_precision(config)
    keras.mixed_precision.set_global_policy(resolved.policy)
    return resolved


# ----------------------------------------------------------------------------------------------------------
# pieces


def build_optimizer(config: TrainConfig, schedule):
    """--optimizer: SGD with momentum (most papers' code) or Adam (Madry et al.'s MNIST model, paper 004)."""
    o = config.optimization
    if o.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=o.momentum)
    if config.runtime.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def build_distillation(config: TrainConfig, log: Callable = print):
    """(Distillation or None, {teacher name: record}): the robust teacher is its run's best-robust checkpoint,
    the standard teacher its run's best-clean checkpoint (paper 001's code)."""
    d = config.distillation
    if not d.enabled:
        return None, {}
    weights = d.loss_weights()
    teachers, records = {}, {}
    for name, flag in (("robust", "kd_adv_teacher"), ("standard", "kd_std_teacher")):
        path, wanted = getattr(d, flag), runs.TEACHER_CHECKPOINTS[flag]
        if path:
            logits_fn, record = runs.load_teacher(path, flag, config.spec, wanted, log)
            teachers[name] = (logits_fn, weights[name])
            records[name] = {**record, "weight": weights[name]}
    return training.Distillation(teachers, weights["ce"], d.kd_temperature), records


def _check_output_dir(config: TrainConfig):
    """Refuses a finished run without --overwrite, and an interrupted one started with other flags."""
    out, overwrite = config.runtime.output_dir, config.runtime.overwrite
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ConfigError("output_dir", f"{out!r} exists and is not a directory")
    # a run that is writing it now (a second train.py into the same directory): refused, nothing touched. A
    # non-chief worker of a multi-worker job shares the chief's --output_dir but never writes it (its own writes go
    # to a temporary directory): the chief's lock is its own job's, not another run's
    if config.runtime.distribute != "multi_worker" or cluster.cluster_from_environment().is_chief:
        try:
            runs.check_unlocked(out)
        except runs.RunLocked as error:
            raise RunError(str(error)) from None
    if overwrite:
        return
    if os.path.exists(runs.metrics_path(out)):
        raise RunError(f"--output_dir={out} holds a finished run; pass --overwrite to replace it or choose "
                       "another directory")
    flags_path = runs.flags_path(out)
    if os.path.exists(flags_path):
        changed = _changed_flags(read_flagfile(flags_path), config)
        if changed:
            raise RunError(f"--output_dir={out} holds an interrupted run with different flags ({', '.join(changed)}; "
                           f"see {flags_path}); rerun with the same flags to resume, or pass --overwrite")
    elif set(os.listdir(out)) - {runs.LOCK_FILE}:
        raise RunError(f"--output_dir={out} is not empty and is not a tfadv run; choose another directory or "
                       "pass --overwrite")


FREE_SPACE_SLACK = 32 * 2**20  # logs, history.csv, TensorBoard events, plots, flags.txt, metrics.json


def space_needed(network, optimizer) -> int:
    """Bytes a run writes, at most: the resumable checkpoint (weights, optimizer slots, an SWA average), two best
    checkpoints, the SavedModel and one more copy of the weights while a checkpoint is replaced, plus
    FREE_SPACE_SLACK."""
    def size(variables):
        return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables)

    return 6 * size(network.weights) + size(optimizer.variables) + FREE_SPACE_SLACK


def _check_free_space(out: str, network, optimizer, overwrite: bool):
    """Refuses a run whose checkpoints and SavedModel would not fit on --output_dir's file system (the space of
    a run --overwrite replaces counts as free), before anything is written or removed."""
    existing = os.path.abspath(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if overwrite and os.path.isdir(out):
        free += sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(out) for f in names
                    if os.path.isfile(os.path.join(d, f)))
    needed = space_needed(network, optimizer)
    if free < needed:
        raise ConfigError("output_dir", f"{free / 2**20:.1f} MiB free on the file system of {out}, but the run "
                          f"writes up to {needed / 2**20:.1f} MiB (checkpoints, SavedModel, logs): free some space "
                          "or choose another directory")


def _changed_flags(previous: TrainConfig, config: TrainConfig) -> list:
    """["--lr=0.01 (was 0.05)", ...]: the flags in which `config` differs from an interrupted run's flags.txt.
    The output directory counts as the same however it is spelled (relative, absolute, ./x, x/)."""
    old, new = previous.flat(), config.flat()
    changed = []
    for name in new:
        if name == "overwrite":
            continue
        a, b = old.get(name), new[name]
        if name == "output_dir":
            a, b = os.path.realpath(a or ""), os.path.realpath(b or "")
        if name == "mixed_precision" and b == precision_lib.AUTO:
            continue  # auto resumes in the precision the run started with, whatever it recorded (resolve_precision)
        if a != b:
            changed.append(f"--{name}={new[name]} (was {old.get(name)})")
    return changed


def _history_rows(path: str):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return list(csv.DictReader(handle))


def _plot(history, schedule, config: TrainConfig, updates_per_epoch: int, plots_dir: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots_dir, exist_ok=True)
    o = config.optimization
    epochs, lrs = schedule_curve(schedule, o.epochs, updates_per_epoch)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(epochs, lrs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{o.lr_schedule} schedule")
    fig.tight_layout()
    runs.save_figure(fig, os.path.join(plots_dir, runs.LEARNING_RATE_PLOT), dpi=120)
    plt.close(fig)

    rows = [r for r in history if r.get("val_robust_accuracy") not in (None, "", "nan", "NA")]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        x = [int(r["epoch"]) + 1 for r in rows]
        where = "held-out" if config.data.val_fraction > 0 else "test (monitoring)"
        budget_ = config.budget()
        radius = (f"eps {budget_.level('eps'):g}/{config.spec.pixel_max:g}" if config.attack.norm == "linf"
                  else f"{config.attack.norm} eps {budget_.eps:.3g}")
        ax.plot(x, [float(r["val_clean_accuracy"]) for r in rows], label=f"{where}: clean (SA)")
        ax.plot(x, [float(r["val_robust_accuracy"]) for r in rows],
                label=f"{where}: PGD-{config.validation.val_attack_steps} (RA)")
        trained_on = "clean" if config.method.clean else "the method's training inputs (adversarial)"
        ax.plot([int(r["epoch"]) + 1 for r in history], [float(r["accuracy"]) for r in history],
                label=f"training batches: {trained_on}", alpha=0.6)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        ax.set_title(f"{config.defense} on {config.data.dataset} ({config.network.model}), {radius}", fontsize=9)
        fig.tight_layout()
        runs.save_figure(fig, os.path.join(plots_dir, runs.ACCURACY_PLOT), dpi=120)
        plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# a run: prepare -> build -> fit -> finish


@dataclasses.dataclass
class Prepared:
    """What `prepare` checked and loaded; nothing has been written yet."""

    config: TrainConfig
    splits: data.Splits
    distillation: Optional[training.Distillation]
    teacher_records: dict
    # the process's tf.distribute strategy, and the run directory the user named (`config.runtime.output_dir`
    # is where this process writes: the same on the chief, a temporary directory on another worker)
    strategy: object = None
    run_dir: str = ""
    precision: Optional[precision_lib.Precision] = None  # --mixed_precision resolved (auto: from the device)


@dataclasses.dataclass
class Built:
    """The model, its trainer and everything `fit` needs; the run directory exists from here on."""

    network: keras.Model
    trainer: training.Trainer
    schedule: object
    strategy: object
    steps: int
    updates: int
    validation: RobustValidation
    validation_info: dict
    best_paths: dict
    swa: Optional[StochasticWeightAveraging]
    callbacks: list
    initial_epoch: int
    train_ds: object


def prepare(config: TrainConfig, log: Callable = print) -> Prepared:
    """Checks the configuration, the output directory, the data and the teachers; makes the strategy. Writes
    nothing (a non-chief worker of multi_worker gets a temporary directory to write to; `train` removes it)."""
    # resolved before any TF op (it reads /proc/cpuinfo, TF's physical device list and an interrupted run's flags.txt)
    # so that the workers of a multi-worker run check they resolved it alike
    precision = resolve_precision(config) if config.runtime.mixed_precision in precision_lib.PRECISIONS else None
    # the values alone (pure: no file, no environment, no TF op): a bad value is refused at once on each worker,
    # not after waiting up to --cluster_timeout for a cluster it would then refuse anyway
    config.validate()
    # then logical devices; a MultiWorkerMirroredStrategy precedes every TF op
    distribute.setup(config, log, precision=precision and precision.value)
    assembly.check(config)  # the directories, TF_CONFIG, the network for the images
    log(precision.describe())  # the run's first line (a multi-worker run may first say it waits for its cluster)
    onednn_note = precision_lib.onednn_note()  # asks TensorFlow and the GPU list once
    if onednn_note:
        log(onednn_note)
    _check_output_dir(config)
    unwritable = evaluation.api.unwritable_reason(config.runtime.output_dir, directory=True)
    if unwritable:
        raise ConfigError("output_dir", unwritable)
    d = config.data
    splits = data.load(d.dataset, d.data_dir, d.val_fraction, d.download)
    if d.train_examples > 0:
        splits.train = data.take(splits.train, d.train_examples)
    batch_size = config.optimization.batch_size
    if data.steps_per_epoch(len(splits.train[0]), batch_size) < 1:  # refused before anything is written or removed
        raise ConfigError("batch_size", f"{batch_size} exceeds the {len(splits.train[0])} training examples")
    set_precision(config, precision)
    # a wrong teacher fails here, before anything is written
    distillation, teacher_records = build_distillation(config, log)
    strategy = distribute.strategy(config, log)
    run_dir = config.runtime.output_dir
    write_dir = distribute.worker_directory(run_dir, strategy)
    if write_dir != run_dir:
        log(f"not the chief: writing to {write_dir} (removed at the end); the chief writes {run_dir}")
        config = config.replace(output_dir=write_dir)
    return Prepared(config, splits, distillation, teacher_records, strategy, run_dir, precision)


def build(prepared: Prepared, log: Callable = print) -> Built:
    """Builds the network, the method's trainer and the optimizer (anything these refuse is refused before the
    run directory is touched: a finished run under --overwrite is removed only then), then creates the run
    directory (flags.txt first), the callbacks (SWA before robust validation, the resumable checkpoint last) and
    the input pipeline."""
    config, splits = prepared.config, prepared.splits
    o, rt = config.optimization, config.runtime
    out, spec, budget_ = rt.output_dir, config.spec, config.budget()
    keras.utils.set_random_seed(rt.seed)
    jit = distribute.resolve_jit(config, log)
    strategy = prepared.strategy

    steps = data.steps_per_epoch(len(splits.train[0]), o.batch_size)  # >= 1: checked in prepare
    updates = steps * config.updates_per_batch()
    with strategy.scope():
        network = assembly.network(config)
        trainer = assembly.trainer(config, network, prepared.distillation, updates)
        schedule = make_schedule(o.lr_schedule, o.lr, o.epochs, updates, o.lr_decay_epochs, o.lr_decay_factor,
                                 o.lr_warmup_epochs, o.lr_peak_fraction)
        optimizer = build_optimizer(config, schedule)
        trainer.compile(optimizer=optimizer, jit_compile=jit)
        optimizer.build(network.trainable_variables)

    _check_free_space(out, network, optimizer, rt.overwrite)  # before --overwrite removes anything
    if rt.overwrite and os.path.isdir(out):
        runs.remove_training_outputs(out)  # an evaluation's report.json, report.md, eval/ ... stay
    os.makedirs(out, exist_ok=True)
    # `--mixed_precision=auto` as typed, then what it resolved to: a resumed run keeps it (resolve_precision)
    runs.atomic_write(runs.flags_path(out), config.to_flagfile() + precision_lib.record_line(prepared.precision))
    os.makedirs(runs.checkpoints_dir(out), exist_ok=True)
    validation, validation_info, best_paths, swa = _validation(config, splits, network, log)
    # Every worker continues from the run directory's checkpoint (a non-chief one saves to its temporary
    # directory); with --overwrite the chief deletes it above, so the other workers start afresh too.
    chief = out == prepared.run_dir
    restore_from = runs.resume_dir(prepared.run_dir) if chief or not rt.overwrite else None
    resume = ResumableCheckpoint(runs.resume_dir(out), network, optimizer,
                                 {**trainer.extra_state(), **validation.state(), **(swa.state() if swa else {})},
                                 restore_from=restore_from)
    initial_epoch = resume.restore()
    history_path = runs.history_path(out)
    _truncate_history(history_path, initial_epoch)  # rows of an epoch that finished after the last checkpoint
    if initial_epoch >= o.epochs:
        log(f"all {o.epochs} epochs were already trained; finishing the run")
    elif initial_epoch:
        log(f"resuming {out} after epoch {initial_epoch}")
    log(f"{config.defense} on {config.data.dataset} with {config.network.model}: {len(splits.train[1])} training "
        f"images, {steps} batches of {o.batch_size} per epoch, eps {budget_.level('eps'):g}/{spec.pixel_max:g} = "
        f"{budget_.eps:.4f}, validation on the {validation_info['source']} ({validation_info['num_examples']} "
        f"examples), {strategy.num_replicas_in_sync} replica(s), precision "
        f"{keras.mixed_precision.global_policy().name}, optimizer {o.optimizer}")

    train_ds = training_pipeline(config, splits, initial_epoch)
    distribute.prepare_trainer(trainer, strategy, train_ds.element_spec)
    callbacks = [
        EpochLog(steps * o.batch_size, log=log),
        *([swa] if swa else []),  # before validation: it validates the average once averaging has started
        validation,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(runs.tensorboard_dir(out), write_graph=False, profile_batch=0),
        resume,  # last: an epoch counts as done once everything above has seen it
    ]
    return Built(network, trainer, schedule, strategy, steps, updates, validation, validation_info, best_paths, swa,
                 callbacks, initial_epoch, train_ds)


def training_pipeline(config: TrainConfig, splits, initial_epoch: int, epochs: Optional[int] = None):
    """The run's training batches (its augmentation, padding and noise) from `initial_epoch` to --epochs."""
    d, o = config.data, config.optimization
    return data.train_pipeline(splits.train, config.spec, o.batch_size, config.runtime.seed,
                               o.epochs if epochs is None else epochs, initial_epoch,
                               augmentation=None if d.augmentation == "auto" else d.augmentation,
                               noise_sigma=config.budget().fraction("noise_sigma"), crop_padding=d.crop_padding)


def _validation(config: TrainConfig, splits, network, log: Callable):
    """(RobustValidation, what it validates on, best-checkpoint paths, SWA callback or None). Validation uses the
    held-out split; without one (--val_fraction=0) the curves use test images and no checkpoint is selected."""
    out, v, o, norm = config.runtime.output_dir, config.validation, config.optimization, config.attack.norm
    best_paths = {"robust": runs.checkpoint_path(out, "best_robust"), "clean": runs.checkpoint_path(out, "best_clean")}
    if splits.val is not None:
        val_arrays = splits.val
        validation_info = {"source": f"held-out {config.data.val_fraction:g} of the training split",
                           "num_examples": int(len(splits.val[1]))}
    else:
        # No held-out data: the curve is still logged, but no checkpoint is chosen on the test images that the
        # run then reports on.
        val_arrays = data.take(splits.test, v.val_examples)
        validation_info = {"source": f"first {len(val_arrays[1])} test examples (--val_fraction=0: monitoring "
                                     "only, no best checkpoint is selected)", "num_examples": int(len(val_arrays[1]))}
        best_paths = {}
        log("warning: --val_fraction=0: validation curves use test images, so no best checkpoint is selected")
    validation_info["attack"] = evaluation.robust_attack_name(v.val_attack_steps, norm)
    swa = None
    if config.averaging.swa:
        # BatchNorm statistics for the averaged weights: one pass over the training images, clean or as the run
        # augments them (the first epoch's augmentation, the same at every recomputation and after a resume)
        if config.averaging.swa_bn_data == "augmented":
            bn_data = training_pipeline(config, splits, 0, epochs=1)
        else:
            bn_data = data.eval_pipeline(splits.train, o.batch_size)
        bn_data = bn_data.map(lambda images, labels: images)
        swa = StochasticWeightAveraging(network, config.swa_start(), config.averaging.swa_mode, bn_data)
        log(f"SWA ({config.averaging.swa_mode}) from epoch {config.swa_start()}")
    measure = evaluation.pgd_accuracy_fn(config.budget().eps, v.val_attack_steps, norm)
    validation = RobustValidation(network, val_arrays, measure,
                                  best_paths, v.val_every, swa=swa, log=log)
    return validation, validation_info, best_paths, swa


def fit(config: TrainConfig, built: Built, log: Callable = print):
    """Trains the remaining epochs (a progress bar on a terminal); applies the SWA average; saves final weights."""
    out, epochs = config.runtime.output_dir, config.optimization.epochs
    if built.initial_epoch < epochs:
        # A progress bar within each epoch on a terminal (CIFAR epochs take minutes); one line per epoch in logs.
        progress = 1 if sys.stdout.isatty() else 0
        built.trainer.fit(built.train_ds, epochs=epochs, initial_epoch=built.initial_epoch,
                          steps_per_epoch=built.steps, callbacks=built.callbacks, verbose=progress, shuffle=False)
    if (built.trainer.stop_training and not np.isfinite(_last_loss(out))) or not weights_finite(built.network):
        raise RunError(_divergence_message(out))  # nothing is exported, no metrics.json: the run is not finished
    if built.swa is not None and built.swa.apply_average():
        log(f"SWA: evaluating and exporting the average of {built.swa.count} epochs (BatchNorm recomputed)")
    built.network.save_weights(runs.checkpoint_path(out, "final"))


def finish(prepared: Prepared, built: Built, log: Callable = print) -> dict:
    """Final numbers on the test split with PGD-{eval_attack_steps} at the run's eps (the same attack, name and
    per-example randomness as `evaluate.py --attacks=<robust_attack>` on the same examples), for the final
    weights and each best checkpoint; metrics.json, robust_overfitting.md, the SavedModel and the plots. The
    numbers are measured on the float32 network that is exported (under --mixed_precision the run trained in
    bfloat16 / float16; metrics.json's `precision` says both)."""
    config = prepared.config
    out, spec, budget_, v = config.runtime.output_dir, config.spec, config.budget(), config.validation
    norm, swa, network = config.attack.norm, built.swa, built.network
    history = _history_rows(runs.history_path(out))
    test_x, test_y = data.take(prepared.splits.test, v.eval_examples)
    attack_name = evaluation.robust_attack_name(v.eval_attack_steps, norm)
    measure = evaluation.pgd_accuracy_fn(budget_.eps, v.eval_attack_steps, norm)
    final_clean, final_robust = measure(export.as_float32(network), test_x, test_y)
    metrics = {
        "defense": config.defense, "dataset": config.data.dataset, "model": config.network.model,
        "eps": budget_.eps, "eps_levels": budget_.level("eps"), "norm": norm, "budget": budget_.to_json(),
        "final": {"epoch": config.optimization.epochs, "clean_accuracy": final_clean,
                  "robust_accuracy": final_robust, "robust_attack": attack_name, "num_examples": int(len(test_y)),
                  "attack_seed": evaluation.EVALUATION_SEED,
                  "weights": f"SWA average of {swa.count} epochs" if swa is not None and swa.count else "last epoch"},
        "validation": built.validation_info,
        "precision": {"training": keras.mixed_precision.global_policy().name, "measured": "float32",
                      **prepared.precision.to_json()},
    }
    what = "SWA-averaged weights (BatchNorm recomputed) once averaging started" if swa is not None else "weights"
    for key, kind, checkpoint in (("best", "robust", "best_robust"), ("best_clean", "clean", "best_clean")):
        path = built.best_paths.get(kind)
        if not path or not os.path.exists(path):
            continue
        best_network = assembly.network(config)
        best_network.load_weights(path)
        best_clean, best_robust = measure(export.as_float32(best_network), test_x, test_y)
        metrics[key] = {
            **built.validation.best(kind), "clean_accuracy": best_clean, "robust_accuracy": best_robust,
            "robust_attack": attack_name, "num_examples": int(len(test_y)),
            "checkpoint": runs.checkpoint_relpath(checkpoint),
            "selected_by": (f"{kind} accuracy (PGD-{v.val_attack_steps} for robust) of the {what} on the "
                            f"{built.validation_info['source']}"),
        }
    if prepared.teacher_records:
        metrics["teachers"] = prepared.teacher_records
    if built.trainer.eps_warmup_updates:
        metrics["eps_warmup"] = {"epochs": config.attack.eps_warmup_epochs,
                                 "optimizer_updates": built.trainer.eps_warmup_updates}
    seconds = [float(r["epoch_seconds"]) for r in history if r.get("epoch_seconds")]
    images = len(seconds) * built.steps * config.optimization.batch_size
    metrics["train_seconds"] = round(sum(seconds), 2)
    metrics["images_per_second"] = round(images / max(sum(seconds), 1e-9), 1)
    metrics["epochs"] = config.optimization.epochs
    metrics["seconds_per_epoch"] = round(float(np.mean(seconds)), 3) if seconds else None
    metrics["warnings"] = _chance_warnings(history, final_clean, spec.num_classes) + _collapse_warnings(history)
    for warning in metrics["warnings"]:
        log("WARNING: " + warning)

    if "best" in metrics:
        runs.atomic_write(runs.path(out, runs.OVERFITTING_FILE), robust_overfitting_table(metrics, config))
    export.export(network, runs.saved_model_dir(out), metadata={
        "dataset": config.data.dataset, "image_shape": list(spec.image_shape), "num_classes": spec.num_classes,
        "pixel_max": spec.pixel_max, "eps": budget_.eps, "budget": budget_.to_json(), "defense": config.defense,
        "model": config.network.model,
    })
    _plot(history, built.schedule, config, built.updates, runs.plots_dir(out))
    runs.atomic_write(runs.metrics_path(out), runs.json_text(metrics) + "\n")  # strict: NaN -> null
    log(f"final: clean accuracy {final_clean:.4f}, {attack_name} robust accuracy {final_robust:.4f} "
        f"on {len(test_y)} test examples (eps {budget_.eps:.4f}); SavedModel in {runs.saved_model_dir(out)}")
    return metrics


def train(config: TrainConfig, log: Callable = print) -> dict:
    """Runs (or resumes) a training run and returns its metrics (also in `<output_dir>/metrics.json`):
    prepare (check, load; nothing written) -> build -> fit -> finish."""
    policy = keras.mixed_precision.global_policy()  # --mixed_precision sets Keras' global policy for the run
    try:
        prepared = prepare(config, log)
        try:
            # the run directory is this process's until the run ends (a second run into it is refused)
            with runs.run_lock(prepared.config.runtime.output_dir):
                built = build(prepared, log)
                fit(prepared.config, built, log)
                try:
                    return finish(prepared, built, log)
                except OSError as error:  # a full disk, a permission changed during the run
                    raise RunError(_finish_failed_message(prepared.config, error)) from None
        except runs.RunLocked as error:  # another run took it between the check in prepare and here
            raise RunError(str(error)) from None
        finally:  # a non-chief worker's temporary directory
            distribute.remove_worker_directory(prepared.config.runtime.output_dir, prepared.run_dir)
    finally:  # a caller in the same process gets its own policy back
        keras.mixed_precision.set_global_policy(policy)


CHANCE_MARGIN = 0.05


def _chance_warnings(history, final_clean: float, num_classes: int) -> list:
    """A loud warning when the model never learned: training accuracy never above chance + 5 points (e.g.
    PGD-AT at MNIST's eps 0.3 with a too-high SGD rate stays at 11 %), or final clean test accuracy at chance."""
    chance = 1.0 / num_classes
    warnings = []
    accuracies = [float(r["accuracy"]) for r in history if r.get("accuracy") not in (None, "", "nan")]
    if accuracies and max(accuracies) <= chance + CHANCE_MARGIN:
        warnings.append(f"training accuracy never left chance level ({max(accuracies):.3f} at best, chance "
                        f"{chance:.3f}): the model did not learn; the robust accuracy reported is meaningless. Try "
                        "the paper's optimiser (--optimizer=adam --lr=1e-4 for Madry's MNIST model), a lower --lr, "
                        "or --eps_warmup_epochs")
    if final_clean <= chance + CHANCE_MARGIN:
        warnings.append(f"final clean test accuracy {final_clean:.3f} is at chance level ({chance:.3f})")
    return warnings


COLLAPSE_DROP = 0.10  # validation robust accuracy this far below its best, and below half of it, at the end


def _collapse_warnings(history) -> list:
    """A loud warning when robust validation accuracy collapsed after a peak (catastrophic overfitting, known for
    single-step training: BAT at MNIST's eps 0.3 went from 14.5 % to about 2 % for 50 epochs, silently): the last
    validated value more than 10 points below the best one and below half of it."""
    rows = [(int(r["epoch"]) + 1, float(r["val_robust_accuracy"])) for r in history
            if r.get("val_robust_accuracy") not in (None, "", "nan", "NA")]
    if len(rows) < 2:
        return []
    best_epoch, best = max(rows, key=lambda row: row[1])
    last_epoch, last = rows[-1]
    if best - last > COLLAPSE_DROP and last < best / 2:
        return [f"robust validation accuracy collapsed from {best:.3f} at epoch {best_epoch} to {last:.3f} at epoch "
                f"{last_epoch} (catastrophic overfitting, known for single-step attacks): the final weights are "
                "not robust; use the best checkpoint (checkpoints/best.weights.h5 with a held-out split), a smaller "
                "step, a random start, or a multi-step attack"]
    return []


def _truncate_history(path: str, completed_epochs: int):
    """Keeps the history rows of the epochs the resumable checkpoint holds (0-based epoch < completed_epochs),
    so a run killed after CSVLogger wrote a row but before the checkpoint never lists an epoch twice."""
    if not os.path.exists(path):
        return
    with open(path) as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames
        rows = [row for row in reader if row.get("epoch", "").isdigit() and int(row["epoch"]) < completed_epochs]
    if not fields or not rows:
        os.remove(path)
        return
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    runs.atomic_write(path, buffer.getvalue())


def robust_overfitting_table(metrics: dict, config: TrainConfig) -> str:
    """Paper 001's robust-overfitting table: robust (RA) and standard (SA) test accuracy of the best-RA
    checkpoint and of the final one, and their difference (best - final), in %."""
    best, final = metrics["best"], metrics["final"]
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    ra_diff = best["robust_accuracy"] - final["robust_accuracy"]
    sa_diff = best["clean_accuracy"] - final["clean_accuracy"]
    return "\n".join([
        f"Robust overfitting of `{config.defense}` on {config.data.dataset} ({config.network.model}): test accuracy "
        "in %, RA = "
        f"{final['robust_attack']} at eps {metrics['eps']:.4f} on {final['num_examples']} test examples; the best "
        f"checkpoint is epoch {best['epoch']} of {final['epoch']}, {best['selected_by']}.",
        "",
        "| RA best | RA final | RA diff | SA best | SA final | SA diff |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {pct(best['robust_accuracy'])} | {pct(final['robust_accuracy'])} | {pct(ra_diff)} | "
        f"{pct(best['clean_accuracy'])} | {pct(final['clean_accuracy'])} | {pct(sa_diff)} |",
        "",
    ])


def _finish_failed_message(config: TrainConfig, error: OSError) -> str:
    """One line: what could not be written, and that the trained epochs wait for the same command to finish."""
    out = config.runtime.output_dir
    what = f" {error.filename}" if error.filename else ""
    return (f"finishing the run failed: could not write{what} ({error.strerror or error}); the "
            f"{config.optimization.epochs} trained epochs are kept in {runs.resume_dir(out)} and no metrics.json or "
            f"SavedModel was written: fix that and rerun the same command to finish the run without training again")


def _divergence_message(out: str) -> str:
    """Which logged values were not finite, at which epoch, and how to restart."""
    rows = _history_rows(runs.history_path(out))
    where = "in the first epoch"
    bad = ["loss"]
    if rows:
        last = rows[-1]
        bad = [k for k, v in last.items() if k != "epoch" and v not in (None, "") and not np.isfinite(_float(v))]
        where = f"at epoch {int(last.get('epoch', 0)) + 1}"
    return (f"training diverged {where}: {', '.join(bad) or 'loss'} not finite (see {runs.history_path(out)}); "
            "restart with --overwrite and a lower --lr (or --eps_warmup_epochs for a large eps)")


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _last_loss(out: str) -> float:
    rows = _history_rows(runs.history_path(out))
    try:
        return float(rows[-1]["loss"]) if rows else float("nan")
    except (KeyError, ValueError):
        return float("nan")
