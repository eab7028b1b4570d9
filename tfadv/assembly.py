"""From a run configuration to what a training run trains with, in one place on the training side.

`tfadv.config.TrainConfig` is data: its `validate()` checks values against each other and reads neither the file
system, nor the environment, nor builds anything. What needs the world is here: `check` (the data directory and
the teachers' directories exist, no cluster description is ignored, the network can be built for the dataset's
images) runs before a run writes anything, and `network` / `trainer` build the objects the run trains (the
network; the method's trainer with its training attack, adversarial labels, smoothing and distillation).
"""

from __future__ import annotations

import functools
import os

from tfadv import cluster, models, training
from tfadv.errors import ConfigError


def check(config) -> None:
    """Raises ConfigError (naming the flag) for what the values alone cannot tell: a data directory that is not
    readable, a teacher path that is not a directory, a TF_CONFIG cluster a single-process run would ignore, and
    a network that cannot be built for the dataset's image shape. Writes nothing."""
    d, spec = config.data, config.spec
    if d.data_dir is not None and spec.tfds_name is not None:
        if not os.path.isdir(d.data_dir) or not os.access(d.data_dir, os.R_OK | os.X_OK):
            raise ConfigError("data_dir", f"{d.data_dir!r} is not a readable directory")
    m = config.network
    error = _unbuildable(m.model, tuple(spec.image_shape), spec.num_classes, tuple(sorted(m.options().items())))
    if error:
        raise ConfigError("model", f"{m.model} cannot be built for {d.dataset} {spec.image_shape}: {error}")
    if config.distillation.enabled:
        for flag in ("kd_adv_teacher", "kd_std_teacher"):
            path = getattr(config.distillation, flag)
            if path and not os.path.isdir(path):
                raise ConfigError(flag, f"{path!r} is not a tfadv run directory or a SavedModel directory")
    rt = config.runtime
    if rt.distribute == "multi_worker":
        try:
            cluster.cluster_from_environment()
        except ValueError as error:
            raise ConfigError("distribute", str(error)) from None
        batch_size, replicas = config.optimization.batch_size, rt.replicas
        if batch_size % replicas:
            raise ConfigError("batch_size", f"{batch_size} does not split evenly over {replicas} replicas")
    elif os.environ.get(cluster.TF_CONFIG, "").strip():
        # a cluster manager sets TF_CONFIG for every worker of a multi-worker job: under --distribute=none or
        # mirrored each worker would silently train alone, on all the data, into the same run directory
        raise ConfigError("distribute", f"{rt.distribute} trains in this one process, but the {cluster.TF_CONFIG} "
                                        "environment variable describes a cluster (it is read only by "
                                        "--distribute=multi_worker); pass --distribute=multi_worker, or unset "
                                        f"{cluster.TF_CONFIG} for a single-process run")


@functools.lru_cache(maxsize=64)
def _unbuildable(model: str, image_shape: tuple, num_classes: int, options: tuple) -> str:
    """Why the network cannot be built ("" if it can); cached: building a WRN-28-10 to check it takes seconds."""
    try:
        models.build(model, image_shape, num_classes, **dict(options))
    except ValueError as error:
        return str(error)
    return ""


def network(config):
    """A freshly initialised network for the run's dataset and model (normalisation is its first layer)."""
    spec = config.spec
    return models.build(config.network.model, spec.image_shape, spec.num_classes, spec.mean, spec.std,
                        **config.network.options())


def trainer(config, network, distillation=None, updates_per_epoch: int = 1) -> training.Trainer:
    """The chosen method's trainer (a keras.Model with its train_step) around `network`, with the run's training
    attack (`TrainConfig.attack_config`), adversarial labels, smoothing and distillation."""
    o = config.optimization
    return config.method.trainer(
        network, config.attack_config(), options=config.options, weight_decay=o.weight_decay,
        weight_decay_scope=o.weight_decay_scope, smoothing=config.smoothing.config(), distillation=distillation,
        label_adversary=config.labels.label_adversary(config.spec.num_classes), seed=config.runtime.seed,
        batch_size=o.batch_size, eps_warmup_updates=int(round(config.attack.eps_warmup_epochs * updates_per_epoch)))
