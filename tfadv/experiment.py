"""A training run from a TrainConfig: data -> network -> method -> fit -> evaluation -> SavedModel.

Order matters for a user who mistyped something: configuration and data are checked before the output
directory is touched; a finished run is never overwritten without --overwrite; an interrupted run resumes
from its last completed epoch (rerun the same command).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from tfadv import data, evaluation, export, models, training
from tfadv.callbacks import (EpochLog, ResumableCheckpoint, RobustValidation, StochasticWeightAveraging,
                             atomic_write, make_schedule, schedule_curve)
from tfadv.config import ConfigError, TrainConfig

FLAGS_FILE = "flags.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
# Checkpoints kept by robust validation (paper 001's code keeps both): "best" is the best-robust-accuracy
# checkpoint (the run's reported best and the robust self-teacher), "best_clean" the best-clean one (the
# standard self-teacher).
CHECKPOINTS = {"best_robust": "best", "best_clean": "best_clean", "final": "final"}


class RunError(RuntimeError):
    """A run cannot start (e.g. a finished output_dir without --overwrite); nothing was written."""


# ----------------------------------------------------------------------------------------------------------
# devices, precision, distribution


def configure_devices(config: TrainConfig, log: Callable = print):
    """Splits the CPU into logical devices (for testing mirrored training); must run before TF starts."""
    if config.num_cpu_devices > 1:
        cpus = tf.config.list_physical_devices("CPU")
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * config.num_cpu_devices)
        except RuntimeError:
            existing = len(tf.config.list_logical_devices("CPU"))
            if existing != config.num_cpu_devices:
                raise ConfigError("num_cpu_devices", f"TensorFlow already started with {existing} CPU device(s); "
                                                     "set it before anything else runs") from None


def make_strategy(config: TrainConfig):
    if config.distribute == "none":
        return tf.distribute.get_strategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices=devices)


def resolve_jit(config: TrainConfig, log: Callable = print) -> bool:
    """`auto`: XLA on GPUs; not on CPUs (measured ~20 % slower for a ResNet step on this 2-core CPU), and never
    with MirroredStrategy over logical CPU devices (fails in TF 2.21: resource on another CPU device)."""
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    cpu_mirrored = config.distribute == "mirrored" and not has_gpu
    if config.jit_compile == "true":
        if cpu_mirrored:
            log("warning: XLA with MirroredStrategy over CPU devices fails in TF 2.21; --jit_compile=true kept")
        return True
    if config.jit_compile == "false":
        return False
    if cpu_mirrored:
        log("jit_compile=auto: XLA off (MirroredStrategy over logical CPU devices does not compile with XLA)")
        return False
    log(f"jit_compile=auto: XLA {'on (GPU)' if has_gpu else 'off (CPU: XLA measured slower here)'}")
    return has_gpu


def set_precision(config: TrainConfig):
    policy = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[config.mixed_precision]
    keras.mixed_precision.set_global_policy(policy)


# ----------------------------------------------------------------------------------------------------------
# pieces


def build_network(config: TrainConfig) -> keras.Model:
    spec = config.spec
    return models.build(config.model, spec.image_shape, spec.num_classes, spec.mean, spec.std,
                        **config.model_options())


def updates_per_batch(config: TrainConfig) -> int:
    return {"free": config.free_replays, "ssat": config.ssat_replays}.get(config.defense, 1)


def build_trainer(config: TrainConfig, network: keras.Model, distillation=None,
                  updates_per_epoch: int = 1) -> training.Trainer:
    """The registered method's trainer, with its Options read from the run's flags (flag = prefix_field) and
    the common keywords every trainer takes."""
    import dataclasses

    method = training.registry.get(config.defense)
    options = method.options(**{field: getattr(config, flag) for flag, field in method.flags().items()})
    label_adversary = dataclasses.replace(config.label_adversary(), kind="adversarial")
    return method.trainer(network, config.attack_config(), options, weight_decay=config.weight_decay,
                          weight_decay_scope=config.weight_decay_scope, smoothing=config.smoothing_config(),
                          distillation=distillation, label_adversary=label_adversary, seed=config.seed,
                          eps_warmup_updates=int(round(config.eps_warmup_epochs * updates_per_epoch)),
                          batch_size=config.batch_size)


def load_run_network(run_dir: str, weights: str = "final"):
    """(network, TrainConfig) of a finished tfadv run (its flags.txt and checkpoints/<weights>.weights.h5)."""
    from tfadv import config as config_lib

    flags_path = os.path.join(run_dir, FLAGS_FILE)
    weights_path = os.path.join(run_dir, "checkpoints", f"{weights}.weights.h5")
    for path in (flags_path, weights_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{run_dir} is not a finished tfadv run: {path} is missing")
    run_config = config_lib.read_flagfile(flags_path)
    network = build_network(run_config)
    network.load_weights(weights_path)
    return network, run_config


def _teacher_record(path: str, checkpoint: str, wanted: str) -> dict:
    """Which checkpoint of which run a teacher came from, with that checkpoint's recorded accuracies."""
    record = {"run": os.path.abspath(path), "checkpoint": f"checkpoints/{checkpoint}.weights.h5",
              "selected_by": wanted if checkpoint == CHECKPOINTS[wanted] else
              f"final weights (the run kept no {wanted} checkpoint)"}
    metrics_path = os.path.join(path, METRICS_FILE)
    if os.path.exists(metrics_path):
        with open(metrics_path) as handle:
            run_metrics = json.load(handle)
        entry = run_metrics.get(checkpoint) or {}  # metrics.json names its entries after the checkpoints
        for key in ("epoch", "clean_accuracy", "robust_accuracy", "robust_attack", "num_examples",
                    "val_clean_accuracy", "val_robust_accuracy", "selected_by"):
            if key in entry:
                record[("checkpoint_" + key) if key == "selected_by" else key] = entry[key]
    return record


def load_teacher(path: str, flag: str, spec: data.DatasetSpec, wanted: str = "best_robust", log: Callable = print):
    """(logits_fn, record) of a frozen teacher (inference mode) from a tfadv run dir or a SavedModel, checked
    against the dataset's input shape and class count before training starts. From a run directory, `wanted`
    ("best_robust" for the robust self-teacher, "best_clean" for the standard one, as paper 001's code
    selects them) names the checkpoint; `record` says which checkpoint of which run was loaded, with its
    accuracies from the run's metrics.json."""
    if os.path.exists(os.path.join(path, FLAGS_FILE)):
        checkpoint = CHECKPOINTS[wanted]
        if not os.path.exists(os.path.join(path, "checkpoints", f"{checkpoint}.weights.h5")):
            log(f"warning: --{flag}: {path} has no {wanted} checkpoint (trained without a validation split or "
                "by an older tfadv); using its final weights")
            checkpoint = "final"
        try:
            network, _ = load_run_network(path, checkpoint)
        except FileNotFoundError as error:
            raise ConfigError(flag, str(error)) from None
        record = _teacher_record(path, checkpoint, wanted)
        network.trainable = False
        shape, classes = tuple(network.input_shape[1:]), network.output_shape[-1]
        logits_fn = lambda images: network(images, training=False)  # noqa: E731  frozen, inference BN
    else:
        saved = path if os.path.exists(os.path.join(path, "saved_model.pb")) else os.path.join(path, "saved_model", "1")
        if not os.path.exists(os.path.join(saved, "saved_model.pb")):
            raise ConfigError(flag, f"{path!r} is neither a tfadv run nor a SavedModel")
        logits_fn = export.load_logits_fn(saved)
        record = {"saved_model": os.path.abspath(saved), "checkpoint": "SavedModel (as exported)"}
        shape = tuple(logits_fn.input_shape[1:])
        classes = logits_fn(tf.zeros((1,) + tuple(spec.image_shape))).shape[-1] if shape == spec.image_shape else None
    if shape != tuple(spec.image_shape) or classes != spec.num_classes:
        raise ConfigError(flag, f"the teacher at {path} takes {shape} and predicts {classes} classes, but "
                                f"{spec.name} has {tuple(spec.image_shape)} images and {spec.num_classes} classes")
    return logits_fn, record


def build_distillation(config: TrainConfig, log: Callable = print):
    """(Distillation or None, {teacher name: record}): the robust teacher is its run's best-robust checkpoint,
    the standard teacher its run's best-clean checkpoint (paper 001's code)."""
    if not (config.kd_adv_teacher or config.kd_std_teacher):
        return None, {}
    spec = config.spec
    ce, adv, std = config.kd_weights
    teachers, records = {}, {}
    for name, flag, wanted, weight in (("robust", "kd_adv_teacher", "best_robust", adv),
                                       ("standard", "kd_std_teacher", "best_clean", std)):
        path = getattr(config, flag)
        if path:
            logits_fn, record = load_teacher(path, flag, spec, wanted, log)
            teachers[name] = (logits_fn, weight)
            records[name] = {**record, "weight": weight}
    return training.Distillation(teachers, ce, config.kd_temperature), records


def build_optimizer(config: TrainConfig, schedule):
    """--optimizer: SGD with momentum (most papers' code) or Adam (Madry et al.'s MNIST model, paper 004)."""
    if config.optimizer == "adam":
        optimizer = keras.optimizers.Adam(learning_rate=schedule)
    else:
        optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)
    if config.mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


# The attacks' per-example randomness in validation and the final test figure: evaluate.py's --seed default, so
# `evaluate.py --attacks=pgd20 --num_examples=<eval_examples>` reproduces the run's number whatever its --seed.
EVALUATION_SEED = 0


def robust_attack_name(steps: int, norm: str) -> str:
    """The name `evaluate.py --attacks=...` gives the same attack (same spec, same per-example randomness), so
    the final figure in metrics.json and an evaluation of the same model and examples agree."""
    return f"pgd{steps}" + ("" if norm == "linf" else f"_{norm}")


def pgd_accuracy_fn(eps: float, steps: int, norm: str = "linf", batch_size: int = 256):
    """(network, x, y) -> (clean accuracy, PGD-`steps` robust accuracy), BatchNorm in inference mode.

    The compiled attack is kept per network, so calling it every epoch does not retrace.
    """
    spec = evaluation.parse_attack(robust_attack_name(steps, norm), {norm: eps})
    evaluators = {}

    def measure(network, x, y):
        if id(network) not in evaluators:
            # Evaluation always uses inference-mode BatchNorm.
            evaluators[id(network)] = evaluation.Evaluator(lambda images: network(images, training=False),
                                                           [spec], batch_size, seed=EVALUATION_SEED)
        report = evaluators[id(network)](x, y)
        return report["clean_accuracy"], report["attacks"][spec.name]["robust_accuracy"]

    return measure


def _check_output_dir(config: TrainConfig):
    """Refuses a finished run without --overwrite, and an interrupted one started with other flags."""
    out = config.output_dir
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ConfigError("output_dir", f"{out!r} exists and is not a directory")
    if config.overwrite:
        return
    if os.path.exists(os.path.join(out, METRICS_FILE)):
        raise RunError(f"--output_dir={out} holds a finished run; pass --overwrite to replace it or choose "
                       "another directory")
    flags_path = os.path.join(out, FLAGS_FILE)
    if os.path.exists(flags_path):
        with open(flags_path) as handle:
            previous = handle.read()
        if previous != config.to_flagfile():
            raise RunError(f"--output_dir={out} holds an interrupted run with different flags (see {flags_path}); "
                           "rerun with the same flags to resume, or pass --overwrite")
    elif os.listdir(out):
        raise RunError(f"--output_dir={out} is not empty and is not a tfadv run; choose another directory or "
                       "pass --overwrite")


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
    epochs, lrs = schedule_curve(schedule, config.epochs, updates_per_epoch)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(epochs, lrs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_title(f"{config.lr_schedule} schedule")
    fig.tight_layout()
    fig.savefig(os.path.join(plots_dir, "learning_rate.png"), dpi=120)
    plt.close(fig)

    rows = [r for r in history if r.get("val_robust_accuracy") not in (None, "", "nan", "NA")]
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3))
        x = [int(r["epoch"]) + 1 for r in rows]
        ax.plot(x, [float(r["val_clean_accuracy"]) for r in rows], label="clean (SA)")
        ax.plot(x, [float(r["val_robust_accuracy"]) for r in rows], label=f"PGD-{config.val_attack_steps} (RA)")
        ax.plot([int(r["epoch"]) + 1 for r in history], [float(r["accuracy"]) for r in history],
                label="training batches", alpha=0.6)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.legend()
        ax.set_title(f"{config.defense} on {config.dataset}")
        fig.tight_layout()
        fig.savefig(os.path.join(plots_dir, "accuracy.png"), dpi=120)
        plt.close(fig)


# ----------------------------------------------------------------------------------------------------------


def train(config: TrainConfig, log: Callable = print) -> dict:
    """Runs (or resumes) a training run and returns its metrics (also in `<output_dir>/metrics.json`)."""
    configure_devices(config, log)
    config.validate()
    _check_output_dir(config)
    spec = config.spec
    splits = data.load(config.dataset, config.data_dir, config.val_fraction, config.seed, config.download)
    if config.train_examples > 0:
        splits.train = data.take(splits.train, config.train_examples)
    set_precision(config)
    # a wrong teacher fails here, before anything is written
    distillation, teacher_records = build_distillation(config, log)

    # Everything below writes into output_dir.
    out = config.output_dir
    if config.overwrite and os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    atomic_write(os.path.join(out, FLAGS_FILE), config.to_flagfile())
    keras.utils.set_random_seed(config.seed)
    jit = resolve_jit(config, log)
    strategy = make_strategy(config)

    steps = data.steps_per_epoch(len(splits.train[0]), config.batch_size)
    if steps < 1:
        raise ConfigError("batch_size", f"{config.batch_size} exceeds the {len(splits.train[0])} training examples")
    updates = steps * updates_per_batch(config)
    with strategy.scope():
        network = build_network(config)
        trainer = build_trainer(config, network, distillation, updates)
        schedule = make_schedule(config.lr_schedule, config.lr, config.epochs, updates, config.lr_decay_epochs,
                                 config.lr_decay_factor, config.lr_warmup_epochs, config.lr_peak_fraction)
        optimizer = build_optimizer(config, schedule)
        trainer.compile(optimizer=optimizer, jit_compile=jit)
        optimizer.build(network.trainable_variables)

    checkpoints = os.path.join(out, "checkpoints")
    os.makedirs(checkpoints, exist_ok=True)
    best_paths = {"robust": os.path.join(checkpoints, f"{CHECKPOINTS['best_robust']}.weights.h5"),
                  "clean": os.path.join(checkpoints, f"{CHECKPOINTS['best_clean']}.weights.h5")}
    if splits.val is not None:
        val_arrays = splits.val
        validation_info = {"source": f"held-out {config.val_fraction:g} of the training split",
                           "num_examples": int(len(splits.val[1]))}
    else:
        # No held-out data: the curve is still logged, but no checkpoint is chosen on the test images that the
        # run then reports on.
        val_arrays = data.take(splits.test, config.val_examples)
        validation_info = {"source": f"first {len(val_arrays[1])} test examples (--val_fraction=0: monitoring "
                                     "only, no best checkpoint is selected)", "num_examples": int(len(val_arrays[1]))}
        best_paths = {}
        log("warning: --val_fraction=0: validation curves use test images, so no best checkpoint is selected")
    validation_info["attack"] = robust_attack_name(config.val_attack_steps, config.norm)
    eps = spec.to_fraction(config.eps)
    swa = None
    if config.swa:
        # BatchNorm statistics for the averaged weights come from one pass over clean training images.
        bn_data = data.eval_pipeline(splits.train, config.batch_size).map(lambda images, labels: images)
        swa = StochasticWeightAveraging(network, config.swa_start(), config.swa_mode, bn_data)
        log(f"SWA ({config.swa_mode}) from epoch {config.swa_start()}")
    validation = RobustValidation(network, val_arrays, pgd_accuracy_fn(eps, config.val_attack_steps, config.norm),
                                  best_paths, config.val_every, swa=swa, log=log)
    resume = ResumableCheckpoint(os.path.join(checkpoints, "resume"), network, optimizer,
                                 {**trainer.extra_state(), **validation.state(), **(swa.state() if swa else {})})
    initial_epoch = resume.restore()
    history_path = os.path.join(out, HISTORY_FILE)
    _truncate_history(history_path, initial_epoch)  # rows of an epoch that finished after the last checkpoint
    if initial_epoch >= config.epochs:
        log(f"all {config.epochs} epochs were already trained; finishing the run")
    elif initial_epoch:
        log(f"resuming {out} after epoch {initial_epoch}")
    log(f"{config.defense} on {config.dataset} with {config.model}: {len(splits.train[1])} training images, "
        f"{steps} batches of {config.batch_size} per epoch, eps {config.eps:g}/{spec.pixel_max:g} = {eps:.4f}, "
        f"validation on the {validation_info['source']} ({validation_info['num_examples']} examples), "
        f"{strategy.num_replicas_in_sync} replica(s), precision {keras.mixed_precision.global_policy().name}, "
        f"optimizer {config.optimizer}")

    augmentation = None if config.augmentation == "auto" else config.augmentation
    train_ds = data.train_pipeline(splits.train, spec, config.batch_size, config.seed, config.epochs,
                                   initial_epoch, augmentation=augmentation,
                                   noise_sigma=spec.to_fraction(config.noise_sigma))
    callbacks = [
        EpochLog(steps * config.batch_size, log=log),
        *([swa] if swa else []),  # before validation: it validates the average once averaging has started
        validation,
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(history_path, append=True),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard"), write_graph=False, profile_batch=0),
        resume,  # last: an epoch counts as done once everything above has seen it
    ]
    if initial_epoch < config.epochs:
        # A progress bar within each epoch on a terminal (CIFAR epochs take minutes); one line per epoch in logs.
        progress = 1 if sys.stdout.isatty() else 0
        trainer.fit(train_ds, epochs=config.epochs, initial_epoch=initial_epoch, steps_per_epoch=steps,
                    callbacks=callbacks, verbose=progress, shuffle=False)
    if trainer.stop_training and not np.isfinite(_last_loss(out)):
        raise RunError(f"training diverged (loss is not finite); see {out}/history.csv. Lower --lr?")
    if swa is not None and swa.apply_average():
        log(f"SWA: evaluating and exporting the average of {swa.count} epochs (BatchNorm recomputed)")
    network.save_weights(os.path.join(checkpoints, f"{CHECKPOINTS['final']}.weights.h5"))

    # Final numbers on the test split with PGD-{eval_attack_steps} at the run's eps: the same attack, name and
    # per-example randomness as `evaluate.py --attacks=<robust_attack>` on the same examples.
    history = _history_rows(history_path)
    test_x, test_y = data.take(splits.test, config.eval_examples)
    attack_name = robust_attack_name(config.eval_attack_steps, config.norm)
    measure = pgd_accuracy_fn(eps, config.eval_attack_steps, config.norm)
    final_clean, final_robust = measure(network, test_x, test_y)
    metrics = {
        "defense": config.defense, "dataset": config.dataset, "model": config.model,
        "eps": eps, "eps_levels": config.eps, "norm": config.norm,
        "final": {"epoch": config.epochs, "clean_accuracy": final_clean, "robust_accuracy": final_robust,
                  "robust_attack": attack_name, "num_examples": int(len(test_y)), "attack_seed": EVALUATION_SEED,
                  "weights": f"SWA average of {swa.count} epochs" if swa is not None and swa.count else "last epoch"},
        "validation": validation_info,
    }
    what = "SWA-averaged weights (BatchNorm recomputed) once averaging started" if swa is not None else "weights"
    for key, kind, criterion in (("best", "robust", "robust"), ("best_clean", "clean", "clean")):
        path = best_paths.get(kind)
        if not path or not os.path.exists(path):
            continue
        best_network = build_network(config)
        best_network.load_weights(path)
        best_clean, best_robust = measure(best_network, test_x, test_y)
        metrics[key] = {
            **validation.best(kind), "clean_accuracy": best_clean, "robust_accuracy": best_robust,
            "robust_attack": attack_name, "num_examples": int(len(test_y)),
            "checkpoint": f"checkpoints/{os.path.basename(path)}",
            "selected_by": (f"{criterion} accuracy (PGD-{config.val_attack_steps} for robust) of the {what} on the "
                            f"{validation_info['source']}"),
        }
    if teacher_records:
        metrics["teachers"] = teacher_records
    if trainer.eps_warmup_updates:
        metrics["eps_warmup"] = {"epochs": config.eps_warmup_epochs, "optimizer_updates": trainer.eps_warmup_updates}
    seconds = [float(r["epoch_seconds"]) for r in history if r.get("epoch_seconds")]
    metrics["train_seconds"] = round(sum(seconds), 2)
    metrics["images_per_second"] = round(len(seconds) * steps * config.batch_size / max(sum(seconds), 1e-9), 1)
    metrics["epochs"] = config.epochs
    metrics["seconds_per_epoch"] = round(float(np.mean(seconds)), 3) if seconds else None
    metrics["warnings"] = _chance_warnings(history, final_clean, spec.num_classes)
    for warning in metrics["warnings"]:
        log("WARNING: " + warning)

    if "best" in metrics:
        atomic_write(os.path.join(out, "robust_overfitting.md"), robust_overfitting_table(metrics, config))
    export.export(network, os.path.join(out, "saved_model", "1"), metadata={
        "dataset": config.dataset, "image_shape": list(spec.image_shape), "num_classes": spec.num_classes,
        "pixel_max": spec.pixel_max, "eps": eps, "defense": config.defense, "model": config.model,
    })
    _plot(history, schedule, config, updates, os.path.join(out, "plots"))
    atomic_write(os.path.join(out, METRICS_FILE), json.dumps(metrics, indent=2) + "\n")
    log(f"final: clean accuracy {final_clean:.4f}, {attack_name} robust accuracy {final_robust:.4f} "
        f"on {len(test_y)} test examples (eps {eps:.4f}); SavedModel in {out}/saved_model/1")
    return metrics


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
    atomic_write(path, buffer.getvalue())


def robust_overfitting_table(metrics: dict, config: TrainConfig) -> str:
    """Paper 001's robust-overfitting table: robust (RA) and standard (SA) test accuracy of the best-RA
    checkpoint and of the final one, and their difference (best - final), in %."""
    best, final = metrics["best"], metrics["final"]
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    ra_diff = best["robust_accuracy"] - final["robust_accuracy"]
    sa_diff = best["clean_accuracy"] - final["clean_accuracy"]
    return "\n".join([
        f"Robust overfitting of `{config.defense}` on {config.dataset} ({config.model}): test accuracy in %, RA = "
        f"{final['robust_attack']} at eps {metrics['eps']:.4f} on {final['num_examples']} test examples; the best "
        f"checkpoint is epoch {best['epoch']} of {final['epoch']}, {best['selected_by']}.",
        "",
        "| RA best | RA final | RA diff | SA best | SA final | SA diff |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| {pct(best['robust_accuracy'])} | {pct(final['robust_accuracy'])} | {pct(ra_diff)} | "
        f"{pct(best['clean_accuracy'])} | {pct(final['clean_accuracy'])} | {pct(sa_diff)} |",
        "",
    ])


def _last_loss(out: str) -> float:
    rows = _history_rows(os.path.join(out, "history.csv"))
    try:
        return float(rows[-1]["loss"]) if rows else float("nan")
    except (KeyError, ValueError):
        return float("nan")
