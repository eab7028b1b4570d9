"""The run directory: its layout, atomic writes, and loading a run's network or configuration.

Nothing else in tfadv spells a path inside a run directory. A training run writes:

    <run>/flags.txt                  the flags that reproduce it (both units recorded in metrics.json)
    <run>/checkpoints/               best.weights.h5 (best validation RA), best_clean.weights.h5, final.weights.h5,
                                     resume/ (the resumable checkpoint)
    <run>/saved_model/1/             the SavedModel (with tfadv.json metadata)
    <run>/history.csv  metrics.json  robust_overfitting.md  plots/  tensorboard/

A Co-SSAT build writes calibration.{json,md}, detector.json, metrics.json, plots/ and saved_model/1/; an
evaluation with --output_dir writes report.json, report.md and plots/.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import socket
from typing import Optional

FLAGS_FILE = "flags.txt"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
OVERFITTING_FILE = "robust_overfitting.md"
CHECKPOINTS_DIR = "checkpoints"
RESUME_DIR = "resume"
SAVED_MODEL_DIR = os.path.join("saved_model", "1")
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CALIBRATION_JSON = "calibration.json"
CALIBRATION_MD = "calibration.md"
DETECTOR_FILE = "detector.json"
# plots/ of a run, a Co-SSAT build and an evaluation
LEARNING_RATE_PLOT = "learning_rate.png"
ACCURACY_PLOT = "accuracy.png"
DETECTOR_ROC_PLOT = "detector_roc.png"
ROBUST_ACCURACY_PLOT = "robust_accuracy.png"
# Checkpoints kept by robust validation (paper 001's code keeps both): "best_robust" is the best-robust-accuracy
# checkpoint (the run's reported best and the robust self-teacher), "best_clean" the best-clean one (the standard
# self-teacher). The values are the file stems (and the keys of metrics.json's entries).
CHECKPOINTS = {"best_robust": "best", "best_clean": "best_clean", "final": "final"}
# the checkpoint each self-teacher flag reads from a run directory (paper 001's code: the robust teacher's best
# robust accuracy, the standard teacher's best clean accuracy)
TEACHER_CHECKPOINTS = {"kd_adv_teacher": "best_robust", "kd_std_teacher": "best_clean"}
# held while a training run writes its directory: "<pid> <host>" of the writer (`run_lock`)
LOCK_FILE = ".tfadv-run.lock"


class RunLocked(RuntimeError):
    """Another live process is writing this run directory."""


def _lock_holder(run_dir: str) -> Optional[str]:
    """Who holds the run directory's lock ("PID 123 on host h"), or None if nobody does (no lock file, or a stale
    one: its process on this host is gone). A lock of another host is taken as live (its PID cannot be checked)."""
    try:
        with open(os.path.join(run_dir, LOCK_FILE)) as handle:
            pid_text, _, host = handle.read().strip().partition(" ")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return "an unreadable lock"
    try:
        pid = int(pid_text)
    except ValueError:
        return None  # not a lock we wrote (an empty file of a writer killed mid-write): stale
    if host and host != socket.gethostname():
        return f"PID {pid} on host {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        pass
    try:  # a killed writer that its parent has not reaped yet (a zombie) writes nothing any more
        with open(f"/proc/{pid}/stat") as handle:
            if handle.read().rpartition(")")[2].split()[0] == "Z":
                return None
    except (OSError, IndexError):
        pass
    return f"PID {pid}"


def check_unlocked(run_dir: str) -> None:
    """RunLocked (naming the holder) if a live process holds `run_dir`'s lock; reads only."""
    holder = _lock_holder(run_dir)
    if holder:
        raise RunLocked(f"--output_dir={run_dir} is being written by another training run ({holder}); wait for it "
                        f"to finish or choose another directory (if no run is writing it, remove "
                        f"{os.path.join(run_dir, LOCK_FILE)})")


@contextlib.contextmanager
def run_lock(run_dir: str):
    """Holds `run_dir` for this process while the block runs: an O_EXCL lock file with the PID and host (a stale
    one, of a process that is gone, is replaced); removed on exit, and so is the directory if the lock created
    it and nothing else was written. RunLocked if a live process holds it."""
    created = not os.path.isdir(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, LOCK_FILE)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            check_unlocked(run_dir)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)  # stale: its writer is gone
    else:
        check_unlocked(run_dir)
        raise RunLocked(f"--output_dir={run_dir}: could not take the run lock {path}")
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    finally:
        os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)  # only if empty: a run refused before writing leaves nothing


def path(run_dir: str, *parts: str) -> str:
    return os.path.join(run_dir, *parts)


def flags_path(run_dir: str) -> str:
    return os.path.join(run_dir, FLAGS_FILE)


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS_FILE)


def history_path(run_dir: str) -> str:
    return os.path.join(run_dir, HISTORY_FILE)


def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR)


def checkpoint_path(run_dir: str, which: str) -> str:
    """`which`: a CHECKPOINTS key (best_robust, best_clean, final) or a file stem (best, best_clean, final)."""
    stem = CHECKPOINTS.get(which, which)
    return os.path.join(run_dir, CHECKPOINTS_DIR, f"{stem}.weights.h5")


def checkpoint_relpath(which: str) -> str:
    """The checkpoint's path relative to the run directory (as metrics.json records it)."""
    return os.path.join(CHECKPOINTS_DIR, f"{CHECKPOINTS.get(which, which)}.weights.h5")


def resume_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR, RESUME_DIR)


def saved_model_dir(run_dir: str) -> str:
    return os.path.join(run_dir, SAVED_MODEL_DIR)


def plots_dir(run_dir: str) -> str:
    return os.path.join(run_dir, PLOTS_DIR)


def tensorboard_dir(run_dir: str) -> str:
    return os.path.join(run_dir, TENSORBOARD_DIR)


def is_run(run_dir: str) -> bool:
    """Whether `run_dir` is a tfadv training run (it has flags.txt)."""
    return os.path.exists(flags_path(run_dir))


def find_saved_model(location: str) -> Optional[str]:
    """The SavedModel directory at `location` (a SavedModel itself, or a run / build holding saved_model/1), or
    None when there is none."""
    if os.path.exists(os.path.join(location, "saved_model.pb")):
        return location
    candidate = saved_model_dir(location)
    if os.path.exists(os.path.join(candidate, "saved_model.pb")):
        return candidate
    return None


TRAINING_OUTPUTS = (FLAGS_FILE, METRICS_FILE, HISTORY_FILE, OVERFITTING_FILE, CHECKPOINTS_DIR,
                    os.path.dirname(SAVED_MODEL_DIR), os.path.join(PLOTS_DIR, LEARNING_RATE_PLOT),
                    os.path.join(PLOTS_DIR, ACCURACY_PLOT), TENSORBOARD_DIR)


def remove_training_outputs(run_dir: str) -> list:
    """Removes what a training run writes into `run_dir` (TRAINING_OUTPUTS: flags.txt, metrics.json, history.csv,
    robust_overfitting.md, checkpoints/, saved_model/, plots/learning_rate.png and plots/accuracy.png,
    tensorboard/) and nothing else: an evaluation's report.json, report.md, plots/robust_accuracy.png or a
    user's eval/ stay (plots/ goes only when it is left empty). Returns the removed paths."""
    import shutil

    removed = []
    for name in TRAINING_OUTPUTS:
        target = os.path.join(run_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.remove(target)
        else:
            continue
        removed.append(target)
    plots = plots_dir(run_dir)
    if os.path.isdir(plots) and not os.listdir(plots):
        os.rmdir(plots)
    return removed


@contextlib.contextmanager
def replacing(target: str):
    """Yields a temporary path beside `target` to write; renamed to `target` when the block ends, removed if it
    fails (a full disk, a signal): the old file stays as it was and no half-written or temporary file is left."""
    tmp = f"{target}.tmp{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(target: str, text: str):
    """Writes `text` to `target` via a temporary file (`replacing`), so a crash never leaves a half-written file."""
    with replacing(target) as tmp, open(tmp, "w") as handle:
        handle.write(text)


def save_figure(fig, target: str, **kwargs) -> str:
    """`fig.savefig(target, **kwargs)` via a temporary file (`replacing`): never a half-written image."""
    with replacing(target) as tmp:
        fig.savefig(tmp, format=os.path.splitext(target)[1].lstrip(".") or "png", **kwargs)
    return target


def json_text(obj, indent: int = 2) -> str:
    """Strict JSON of a report or metrics dict: a non-finite number (NaN, inf) becomes null, and a top-level dict
    gets "non_finite_values": the paths of those numbers. Never writes bare NaN (which is not JSON)."""
    replaced = []

    def clean(value, where):
        if isinstance(value, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            replaced.append(where)
            return None
        if hasattr(value, "item") and hasattr(value, "dtype") and getattr(value, "ndim", 1) == 0:
            return clean(value.item(), where)  # numpy scalars
        return value

    cleaned = clean(obj, "")
    if replaced and isinstance(cleaned, dict):
        cleaned["non_finite_values"] = {"note": "these numbers were NaN or infinite and are written as null",
                                        "paths": replaced}
    return json.dumps(cleaned, indent=indent, allow_nan=False)


@dataclasses.dataclass
class Run:
    """A finished (or interrupted) training run on disk: its configuration and where its pieces are."""

    path: str
    config: object  # tfadv.config.TrainConfig

    @property
    def dataset(self) -> str:
        return self.config.data.dataset

    @property
    def defense(self) -> str:
        return self.config.defense

    @property
    def seed(self) -> int:
        return self.config.runtime.seed

    @property
    def data_dir(self) -> Optional[str]:
        return self.config.data.data_dir

    @property
    def budget(self):
        """The run's Budget (eps and sizes in levels and fractions)."""
        return self.config.budget()

    def has_checkpoint(self, which: str) -> bool:
        return os.path.exists(checkpoint_path(self.path, which))

    def network(self, which: str = "final"):
        """The run's network with the `which` checkpoint's weights (FileNotFoundError if it is missing)."""
        weights = checkpoint_path(self.path, which)
        if not os.path.exists(weights):
            raise FileNotFoundError(f"{self.path} is not a finished tfadv run: {weights} is missing")
        from tfadv import assembly

        network = assembly.network(self.config)
        network.load_weights(weights)
        return network


def load_run(run_dir: str) -> Run:
    """The run in `run_dir` (FileNotFoundError when it has no flags.txt)."""
    from tfadv import config as config_lib

    flags = flags_path(run_dir)
    if not os.path.exists(flags):
        raise FileNotFoundError(f"{run_dir} is not a tfadv run: {flags} is missing")
    return Run(run_dir, config_lib.read_flagfile(flags))


def load_run_network(run_dir: str, which: str = "final"):
    """(network, config) of a finished run: its flags.txt and its `which` checkpoint."""
    run = load_run(run_dir)
    return run.network(which), run.config


def _teacher_record(run_dir: str, checkpoint: str, wanted: str) -> dict:
    """Which checkpoint of which run a teacher came from, with that checkpoint's recorded accuracies."""
    import json

    record = {"run": os.path.abspath(run_dir), "checkpoint": checkpoint_relpath(checkpoint),
              "selected_by": wanted if checkpoint == CHECKPOINTS[wanted] else
              f"final weights (the run kept no {wanted} checkpoint)"}
    if os.path.exists(metrics_path(run_dir)):
        with open(metrics_path(run_dir)) as handle:
            run_metrics = json.load(handle)
        entry = run_metrics.get(checkpoint) or {}  # metrics.json names its entries after the checkpoint stems
        for key in ("epoch", "clean_accuracy", "robust_accuracy", "robust_attack", "num_examples",
                    "val_clean_accuracy", "val_robust_accuracy", "selected_by"):
            if key in entry:
                record[("checkpoint_" + key) if key == "selected_by" else key] = entry[key]
    return record


def load_teacher(location: str, flag: str, spec, wanted: str = "best_robust", log=print):
    """(logits_fn, record) of a frozen teacher (inference mode) from a tfadv run dir or a SavedModel, checked
    against the dataset's input shape and class count before training starts. From a run directory, `wanted`
    ("best_robust" for the robust self-teacher, "best_clean" for the standard one, as paper 001's code selects
    them) names the checkpoint; `record` says which checkpoint of which run was loaded, with its accuracies from
    the run's metrics.json. Raises ConfigError naming `flag`."""
    from tfadv import export
    from tfadv.config import ConfigError

    if is_run(location):
        checkpoint = CHECKPOINTS[wanted]
        if not os.path.exists(checkpoint_path(location, checkpoint)):
            log(f"warning: --{flag}: {location} has no {wanted} checkpoint (trained without a validation split or "
                "by an older tfadv); using its final weights")
            checkpoint = "final"
        try:
            network, _ = load_run_network(location, checkpoint)
        except FileNotFoundError as error:
            raise ConfigError(flag, str(error)) from None
        record = _teacher_record(location, checkpoint, wanted)
        network.trainable = False
        shape, classes = tuple(network.input_shape[1:]), network.output_shape[-1]
        logits_fn = lambda images: network(images, training=False)  # noqa: E731  frozen, inference BN
    else:
        saved = find_saved_model(location)
        if saved is None:
            raise ConfigError(flag, f"{location!r} is neither a tfadv run nor a SavedModel")
        logits_fn = export.load_logits_fn(saved)
        record = {"saved_model": os.path.abspath(saved), "checkpoint": "SavedModel (as exported)"}
        shape = tuple(logits_fn.input_shape[1:])
        if shape == tuple(spec.image_shape):
            import tensorflow as tf

            classes = logits_fn(tf.zeros((1,) + tuple(spec.image_shape))).shape[-1]
        else:
            classes = None
    if shape != tuple(spec.image_shape) or classes != spec.num_classes:
        raise ConfigError(flag, f"the teacher at {location} takes {shape} and predicts {classes} classes, but "
                                f"{spec.name} has {tuple(spec.image_shape)} images and {spec.num_classes} classes")
    return logits_fn, record
