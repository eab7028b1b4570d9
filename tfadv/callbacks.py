"""Learning-rate schedules and training callbacks, SWA included (tfadv's own: TF Addons is end-of-life and
Keras-2 only).

Schedules are Keras `LearningRateSchedule`s over optimizer updates, so they resume exactly with the
optimizer's iteration counter. Callbacks: robust validation with best-checkpoint keeping, and a resumable
checkpoint of everything a run needs to continue after a crash or `kill -9`.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

LR_SCHEDULES = ("constant", "piecewise", "cosine", "cyclic")


@keras.saving.register_keras_serializable("tfadv")
class PiecewiseSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`base_lr`, multiplied by `factor` at each epoch in `decay_epochs`."""

    def __init__(self, base_lr, updates_per_epoch, decay_epochs=(), factor=0.1):
        self.base_lr = float(base_lr)
        self.updates_per_epoch = int(updates_per_epoch)
        self.decay_epochs = tuple(int(e) for e in decay_epochs)
        self.factor = float(factor)

    def __call__(self, step):
        epoch = tf.cast(step, tf.float32) / float(self.updates_per_epoch)
        decays = tf.add_n([tf.cast(epoch >= e, tf.float32) for e in self.decay_epochs] + [tf.constant(0.0)])
        return self.base_lr * tf.pow(self.factor, decays)

    def get_config(self):
        return dict(base_lr=self.base_lr, updates_per_epoch=self.updates_per_epoch,
                    decay_epochs=list(self.decay_epochs), factor=self.factor)


@keras.saving.register_keras_serializable("tfadv")
class CosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 over `warmup_updates`, then cosine decay to 0 at `total_updates`."""

    def __init__(self, base_lr, total_updates, warmup_updates=0):
        self.base_lr = float(base_lr)
        self.total_updates = int(total_updates)
        self.warmup_updates = int(warmup_updates)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warmup = float(max(self.warmup_updates, 1))
        span = float(max(self.total_updates - self.warmup_updates, 1))
        progress = tf.clip_by_value((step - self.warmup_updates) / span, 0.0, 1.0)
        cosine = 0.5 * self.base_lr * (1.0 + tf.cos(math.pi * progress))
        if self.warmup_updates <= 0:
            return cosine
        return tf.where(step < self.warmup_updates, self.base_lr * step / warmup, cosine)

    def get_config(self):
        return dict(base_lr=self.base_lr, total_updates=self.total_updates, warmup_updates=self.warmup_updates)


@keras.saving.register_keras_serializable("tfadv")
class CyclicSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Triangular one-cycle: 0 -> `max_lr` at `peak_fraction` of the run -> 0 (Wong et al., SSAT)."""

    def __init__(self, max_lr, total_updates, peak_fraction=0.5):
        if not 0.0 < peak_fraction < 1.0:
            raise ValueError(f"peak_fraction must be in (0, 1), got {peak_fraction}")
        self.max_lr = float(max_lr)
        self.total_updates = int(total_updates)
        self.peak_fraction = float(peak_fraction)

    def __call__(self, step):
        position = tf.cast(step, tf.float32) / float(max(self.total_updates, 1))
        rising = position / self.peak_fraction
        falling = (1.0 - position) / (1.0 - self.peak_fraction)
        return self.max_lr * tf.clip_by_value(tf.minimum(rising, falling), 0.0, 1.0)

    def get_config(self):
        return dict(max_lr=self.max_lr, total_updates=self.total_updates, peak_fraction=self.peak_fraction)


def make_schedule(name: str, base_lr: float, epochs: int, updates_per_epoch: int,
                  decay_epochs: Sequence[int] = (), decay_factor: float = 0.1, warmup_epochs: float = 0.0,
                  peak_fraction: float = 0.5):
    """A learning-rate schedule by name; every schedule counts optimizer updates."""
    total = epochs * updates_per_epoch
    if name == "constant":
        return PiecewiseSchedule(base_lr, updates_per_epoch, (), 1.0)
    if name == "piecewise":
        return PiecewiseSchedule(base_lr, updates_per_epoch, decay_epochs, decay_factor)
    if name == "cosine":
        return CosineSchedule(base_lr, total, int(round(warmup_epochs * updates_per_epoch)))
    if name == "cyclic":
        return CyclicSchedule(base_lr, total, peak_fraction)
    raise ValueError(f"unknown lr_schedule {name!r}; valid: {', '.join(LR_SCHEDULES)}")


def schedule_curve(schedule, epochs: int, updates_per_epoch: int, points: int = 400):
    """(epoch, lr) samples of a schedule, for the run's LR plot."""
    total = max(epochs * updates_per_epoch, 1)
    steps = np.unique(np.linspace(0, total, num=min(points, total + 1)).astype(np.int64))
    return steps / updates_per_epoch, np.array([float(schedule(int(s))) for s in steps])


class RobustValidation(keras.callbacks.Callback):
    """Every `every` epochs: clean and robust accuracy on held-out arrays, logged as `val_clean_accuracy` /
    `val_robust_accuracy` (so History, CSVLogger and TensorBoard record them). With `best_paths`
    ({"robust": path, "clean": path}) it keeps two checkpoints, as paper 001's code does: the best-robust
    weights (the run's "best", and the robust self-teacher) and the best-clean weights (the standard
    self-teacher). `robust_accuracy_fn(network, x, y) -> (clean, robust)` does the measuring.

    With `swa` (a `StochasticWeightAveraging` placed *before* this callback), once averaging has started the
    validated, logged and checkpointed weights are the average with BatchNorm recomputed (paper 001's code
    evaluates its SWA model every epoch); the raw weights' numbers are logged beside them as
    `val_raw_clean_accuracy` / `val_raw_robust_accuracy`.
    """

    def __init__(self, network, arrays, robust_accuracy_fn: Callable, best_paths: Optional[dict] = None,
                 every: int = 1, swa=None, log: Callable = print):
        super().__init__()
        self.network = network
        self.arrays = arrays
        self.robust_accuracy_fn = robust_accuracy_fn
        self.best_paths = dict(best_paths or {})
        unknown = set(self.best_paths) - {"robust", "clean"}
        if unknown:
            raise ValueError(f"best_paths keys must be robust and/or clean, got {sorted(unknown)}")
        self.every = max(int(every), 1)
        self.swa = swa
        # tf.Variables, so the best so far is part of the resumable checkpoint.
        self.best_robust = tf.Variable(-1.0, trainable=False, name="best_robust_accuracy")
        self.best_clean = tf.Variable(-1.0, trainable=False, name="best_clean_accuracy")
        self.best_epoch = tf.Variable(-1, trainable=False, name="best_epoch", dtype=tf.int64)
        # the best-clean checkpoint: its clean accuracy (the criterion), robust accuracy and epoch
        self.best_sa_clean = tf.Variable(-1.0, trainable=False, name="best_sa_clean_accuracy")
        self.best_sa_robust = tf.Variable(-1.0, trainable=False, name="best_sa_robust_accuracy")
        self.best_sa_epoch = tf.Variable(-1, trainable=False, name="best_sa_epoch", dtype=tf.int64)
        self.log = log
        self.total_epochs = None

    def state(self):
        return {"best_robust": self.best_robust, "best_clean": self.best_clean, "best_epoch": self.best_epoch,
                "best_sa_clean": self.best_sa_clean, "best_sa_robust": self.best_sa_robust,
                "best_sa_epoch": self.best_sa_epoch}

    def best(self, kind: str = "robust") -> dict:
        """{"epoch", "val_clean_accuracy", "val_robust_accuracy"} of the best-`kind` checkpoint (epoch -1: none)."""
        if kind == "robust":
            return {"epoch": int(self.best_epoch.numpy()), "val_clean_accuracy": float(self.best_clean.numpy()),
                    "val_robust_accuracy": float(self.best_robust.numpy())}
        return {"epoch": int(self.best_sa_epoch.numpy()), "val_clean_accuracy": float(self.best_sa_clean.numpy()),
                "val_robust_accuracy": float(self.best_sa_robust.numpy())}

    def on_train_begin(self, logs=None):
        self.total_epochs = self.params.get("epochs") if self.params else None

    def _keys(self):
        keys = ["val_clean_accuracy", "val_robust_accuracy"]
        return keys + ["val_raw_clean_accuracy", "val_raw_robust_accuracy"] if self.swa is not None else keys

    def on_epoch_end(self, epoch, logs=None):
        last = self.total_epochs is not None and epoch + 1 == self.total_epochs
        if (epoch + 1) % self.every and not last:
            if logs is not None:  # CSVLogger fixes its columns at the first epoch: keep them present
                for key in self._keys():
                    logs[key] = float("nan")
            return
        start = time.time()
        clean, robust = self.robust_accuracy_fn(self.network, *self.arrays)
        averaged = False
        if self.swa is not None:
            raw_clean, raw_robust = clean, robust
            averaged = self.swa.swap_in()  # the average with recomputed BatchNorm, once averaging has started
        try:
            if averaged:
                clean, robust = self.robust_accuracy_fn(self.network, *self.arrays)
            if logs is not None:
                logs["val_clean_accuracy"] = clean
                logs["val_robust_accuracy"] = robust
                if self.swa is not None:
                    logs["val_raw_clean_accuracy"] = raw_clean
                    logs["val_raw_robust_accuracy"] = raw_robust
            if "robust" in self.best_paths and robust > float(self.best_robust.numpy()):
                self.best_robust.assign(robust)
                self.best_clean.assign(clean)
                self.best_epoch.assign(epoch + 1)
                _save_weights(self.network, self.best_paths["robust"])
            if "clean" in self.best_paths and clean > float(self.best_sa_clean.numpy()):
                self.best_sa_clean.assign(clean)
                self.best_sa_robust.assign(robust)
                self.best_sa_epoch.assign(epoch + 1)
                _save_weights(self.network, self.best_paths["clean"])
        finally:
            if averaged:
                self.swa.swap_out()
        what = f"SWA average of {self.swa.count} epochs" if averaged else "weights"
        raw = f" (raw weights: clean {raw_clean:.4f} robust {raw_robust:.4f})" if averaged else ""
        best = ""
        # only the checkpoints this run keeps (no "-1.0000 at epoch -1" for one it does not)
        if "robust" in self.best_paths:
            best += f"; best robust {float(self.best_robust.numpy()):.4f} at epoch {int(self.best_epoch.numpy())}"
        if "clean" in self.best_paths:
            best += (f"{', ' if best else '; '}best clean {float(self.best_sa_clean.numpy()):.4f} at epoch "
                     f"{int(self.best_sa_epoch.numpy())}")
        self.log(f"epoch {epoch + 1}: validation of the {what}: clean {clean:.4f} robust {robust:.4f}{raw}{best} "
                 f"({time.time() - start:.1f}s)")


class ResumableCheckpoint(keras.callbacks.Callback):
    """Writes network, optimizer, extra state and the finished-epoch count at every epoch end; `restore()`
    returns the epoch to continue from. Old checkpoints are pruned; a write is atomic (index file last).
    `restore_from` (default: `directory`) is where `restore()` looks: a non-chief worker of a multi-worker run
    continues from the chief's checkpoint but saves into its own temporary directory.
    """

    def __init__(self, directory: str, network, optimizer, extra_state: Optional[dict] = None,
                 restore_from: Optional[str] = None):
        super().__init__()
        self.directory = directory
        self.restore_from = directory if restore_from is None else restore_from
        self.epoch = tf.Variable(0, trainable=False, dtype=tf.int64, name="completed_epochs")
        self.checkpoint = tf.train.Checkpoint(network=network, optimizer=optimizer, epoch=self.epoch,
                                              **(extra_state or {}))
        self.manager = tf.train.CheckpointManager(self.checkpoint, directory, max_to_keep=2)

    def restore(self) -> int:
        latest = (self.manager.latest_checkpoint if self.restore_from == self.directory
                  else tf.train.latest_checkpoint(self.restore_from))
        if not latest:
            return 0
        self.checkpoint.restore(latest).expect_partial()
        return int(self.epoch.numpy())

    def on_epoch_end(self, epoch, logs=None):
        # A diverged epoch (non-finite loss or weights) is never checkpointed as completed: a rerun resumes from
        # the last finite one instead of "finishing" a run with NaN weights.
        loss = (logs or {}).get("loss")
        if (loss is not None and not np.isfinite(float(loss))) or not weights_finite(self.model):
            return
        self.epoch.assign(epoch + 1)
        self.manager.save(checkpoint_number=epoch + 1)


def weights_finite(model) -> bool:
    """Every weight of `model` (a Keras model, or None: True) is finite."""
    if model is None:
        return True
    return all(bool(np.all(np.isfinite(np.asarray(w)))) for w in model.get_weights())


class EpochLog(keras.callbacks.Callback):
    """Adds `epoch_seconds` and `images_per_second` (training only) to the epoch logs and prints one line.

    Put it first among the callbacks: the seconds then exclude validation, and later callbacks (CSVLogger,
    TensorBoard) record them.
    """

    def __init__(self, images_per_epoch: int, log: Callable = print):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.log = log
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self._start
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.images_per_epoch / max(seconds, 1e-9)
        shown = {k: round(float(v), 4) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        total = self.params.get("epochs") if self.params else "?"
        self.log(f"epoch {epoch + 1}/{total} " + json.dumps(shown))


def _save_weights(network, path: str):
    """network.save_weights, creating the directory first (a Python API user may name any path)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    network.save_weights(path)


def recompute_batchnorm(network, batches) -> int:
    """Sets every BatchNorm layer's moving mean/variance to the average of its batch statistics over one pass
    of `batches` (an iterable of image batches or (images, labels) pairs) — the statistics of the current
    weights, as SWA needs. Runs eagerly so each batch can use momentum k/(k+1) (a running average with equal
    weights); the layers' momentum is restored afterwards. Returns the number of batches used."""
    layers = [layer for layer in network._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    count = 0
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            for layer in layers:
                layer.momentum = count / (count + 1.0)
            network(tf.convert_to_tensor(images, tf.float32), training=True)
            count += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return count


class StochasticWeightAveraging(keras.callbacks.Callback):
    """SWA (paper 001 Eq. 2) as tfadv's own callback: from epoch `start_epoch` (1-based, the first epoch whose
    weights are averaged) an equal-weight running average of the trainable weights, once per epoch.
    `mode="iswa"` continues training from the average (paper 001 App. A1.6). BatchNorm statistics are not
    averaged but recomputed for the averaged weights on one pass of clean `bn_data` whenever the average is
    put into the network (`swap_in`, `apply_average`). The average is part of the resumable checkpoint
    through `state()`.
    """

    def __init__(self, network, start_epoch: int, mode: str = "swa", bn_data=None):
        super().__init__()
        if mode not in ("swa", "iswa"):
            raise ValueError(f"swa_mode must be swa or iswa, got {mode!r}")
        if start_epoch < 1:
            raise ValueError(f"swa_start_epoch must be at least 1, got {start_epoch}")
        self.network = network
        self.start_epoch = int(start_epoch)
        self.mode = mode
        self.bn_data = bn_data
        self.tracker = tf.Module()
        self.tracker.average = [tf.Variable(tf.cast(v, tf.float32), trainable=False, name="swa_average")
                                for v in network.trainable_variables]
        self.tracker.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="swa_count")
        self._raw = None

    def state(self):
        return {"swa": self.tracker}

    @property
    def count(self) -> int:
        return int(self.tracker.count.numpy())

    def update_average(self):
        n = float(self.count)
        for average, variable in zip(self.tracker.average, self.network.trainable_variables):
            average.assign((average * n + tf.cast(variable, tf.float32)) / (n + 1.0))
        self.tracker.count.assign_add(1)

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 < self.start_epoch:
            return
        self.update_average()
        if self.mode == "iswa":
            self._assign_average()
        if logs is not None:
            logs["swa_count"] = float(self.count)

    def _assign_average(self):
        for average, variable in zip(self.tracker.average, self.network.trainable_variables):
            variable.assign(tf.cast(average, variable.dtype))

    def _recompute_bn(self):
        if self.bn_data is not None:
            recompute_batchnorm(self.network, self.bn_data)

    def swap_in(self):
        """Puts the averaged weights (with recomputed BatchNorm statistics) into the network; `swap_out`
        restores the raw weights and statistics exactly."""
        if self.count == 0:
            return False
        self._raw = [v.numpy().copy() for v in self.network.weights]
        self._assign_average()
        self._recompute_bn()
        return True

    def swap_out(self):
        if self._raw is not None:
            for variable, value in zip(self.network.weights, self._raw):
                variable.assign(value)
            self._raw = None

    def apply_average(self) -> bool:
        """Leaves the averaged weights and recomputed BatchNorm statistics in the network (end of training)."""
        if self.count == 0:
            return False
        self._assign_average()
        self._recompute_bn()
        return True
