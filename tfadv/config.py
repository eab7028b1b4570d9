"""The typed, validated configuration of a training run.

Sizes on the command line (`eps`, `step_size`) are in the dataset's pixel levels (8 means 8/255 on 8-bit
images; digits have 16 levels); `attack_config()` converts them once, here, to fractions of [0, 1].
Validation happens before anything is written, and every failure names the flag.
"""

from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

from tfadv import data, losses, models, targets, training
from tfadv.callbacks import LR_SCHEDULES

JIT_MODES = ("auto", "true", "false")
DISTRIBUTE_MODES = ("none", "mirrored")
PRECISIONS = ("none", "bfloat16", "float16")
OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("auto", "none", "crop", "crop_flip")


class ConfigError(ValueError):
    """A bad flag value; the message names the flag and what is allowed."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


@dataclasses.dataclass
class TrainConfig:
    defense: str = "pgd"
    dataset: str = "digits"
    model: str = "mlp"
    wrn_depth: int = 28
    wrn_width: int = 10
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    lr_schedule: str = "piecewise"
    lr_decay_epochs: List[int] = dataclasses.field(default_factory=list)
    lr_decay_factor: float = 0.1
    lr_warmup_epochs: float = 0.0
    lr_peak_fraction: float = 0.5
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weight_decay_scope: str = "all"
    eps: float = 2.0
    eps_warmup_epochs: float = 0.0
    step_size: float = 0.5
    attack_steps: int = 10
    norm: str = "linf"
    attack_bn_mode: str = "eval"
    free_replays: int = 8
    trades_beta: float = 6.0
    bat_attack: str = "mc"
    bat_random_start: bool = True
    bat_labels: str = "adversarial"
    bat_beta: float = 0.0
    bat_gamma: float = 0.01
    bat_eps_y: float = 0.5
    bat_top_k: int = 0
    bat_step_size: float = 0.0
    pgd_labels: str = "hard"
    ssat_replays: int = 8
    ssat_gamma: float = 0.3
    ssat_lambda0: float = 1.0
    ssat_lambda1: float = 0.3
    ssat_target_beta: float = 0.2
    ssat_step_size: float = 0.0
    ssat_boundary_split: bool = True
    ssat_adaptive: bool = True
    swa: bool = False
    swa_start_epoch: int = 0
    swa_mode: str = "swa"
    kd_adv_teacher: str = ""
    kd_std_teacher: str = ""
    kd_temperature: float = 2.0
    kd_weights: List[float] = dataclasses.field(default_factory=lambda: [0.25, 0.5, 0.25])
    ls_method: str = "none"
    ls_alpha: float = 0.0
    bls_temperature: float = 0.001
    squeeze_beta: float = 0.0
    squeeze_reduction: str = "frobenius"
    noise_sigma: float = 0.0
    augmentation: str = "auto"
    val_fraction: float = 0.1
    train_examples: int = -1
    val_every: int = 1
    val_examples: int = 500
    val_attack_steps: int = 10
    eval_attack_steps: int = 20
    eval_examples: int = -1
    seed: int = 0
    output_dir: str = ""
    data_dir: Optional[str] = None
    download: bool = False
    overwrite: bool = False
    jit_compile: str = "auto"
    distribute: str = "none"
    num_cpu_devices: int = 1
    mixed_precision: str = "none"

    # ------------------------------------------------------------------------------------------------------
    @property
    def spec(self) -> data.DatasetSpec:
        return data.get_spec(self.dataset)

    def budget(self) -> "Budget":
        """eps, the training step sizes and the noise, in levels and fractions (THE conversion: `budget()`)."""
        return budget(self.spec, eps=self.eps, step_size=self.step_size, noise_sigma=self.noise_sigma,
                      bat_step_size=self.bat_step_size or self.eps,
                      ssat_step_size=self.ssat_step_size or self.eps / self.ssat_replays)

    def build_network(self):
        """A freshly initialised network for this run's dataset and model (normalisation is its first layer)."""
        spec = self.spec
        return models.build(self.model, spec.image_shape, spec.num_classes, spec.mean, spec.std,
                            **self.model_options())

    def model_options(self) -> dict:
        return {"depth": self.wrn_depth, "width": self.wrn_width} if self.model == "wide_resnet" else {}

    def attack_config(self) -> training.AttackConfig:
        spec = self.spec
        step, random_start = self.step_size, True
        if self.defense == "bat":  # one step of --bat_step_size (default eps), random start by flag
            step, random_start = (self.bat_step_size or self.eps), self.bat_random_start
        if self.defense == "ssat":  # App. J rule 2: step eps / m
            step = self.ssat_step_size or self.eps / self.ssat_replays
        return training.AttackConfig(eps=spec.to_fraction(self.eps), step_size=spec.to_fraction(step),
                                     steps=self.attack_steps, norm=self.norm, random_start=random_start,
                                     bn_mode=self.attack_bn_mode)

    def swa_start(self) -> int:
        """The first averaged epoch, 1-based: --swa_start_epoch, or paper 001's code default, or 3/4 of the run.

        Paper 001's code averages when its 0-based epoch index is >= swa_start = first decay + 5 (55 with LR
        decays at 50, 150); its LR decays from 0-based epoch 50 on, as tfadv's piecewise schedule does. In
        tfadv's 1-based epochs that is first decay + 6.
        """
        if self.swa_start_epoch:
            return self.swa_start_epoch
        if self.lr_schedule == "piecewise" and self.lr_decay_epochs:
            return min(min(self.lr_decay_epochs) + 6, self.epochs)
        return max(1, (3 * self.epochs) // 4)

    def ssat_config(self) -> training.SSATConfig:
        return training.SSATConfig(self.ssat_replays, self.ssat_gamma, self.ssat_lambda0, self.ssat_lambda1,
                                   self.ssat_target_beta, self.ssat_boundary_split, self.ssat_adaptive)

    def label_adversary(self) -> training.LabelAdversary:
        """BAT's label choice (--bat_labels), or Madry-LA's adversarial labels for --pgd_labels=bat."""
        kind = self.bat_labels if self.defense == "bat" else "adversarial"
        beta = self.bat_beta or targets.bat_beta_default(self.spec.num_classes)
        return training.LabelAdversary(kind, beta, self.bat_gamma, self.bat_eps_y, self.bat_top_k or None)

    def smoothing_config(self) -> training.SmoothingConfig:
        return training.SmoothingConfig(self.ls_method, self.ls_alpha, self.bls_temperature, self.squeeze_beta,
                                        self.squeeze_reduction)

    def validate(self) -> "TrainConfig":
        """Raises ConfigError for the first bad value; returns self."""
        _one_of("defense", self.defense, training.DEFENSES)
        _one_of("dataset", self.dataset, tuple(data.DATASETS))
        _one_of("model", self.model, models.MODEL_NAMES)
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("norm", self.norm, ("linf", "l2") if self.defense == "pgd" else ("linf", "l2", "l1"))
        _one_of("attack_bn_mode", self.attack_bn_mode, training.BN_MODES)
        _one_of("jit_compile", self.jit_compile, JIT_MODES)
        _one_of("distribute", self.distribute, DISTRIBUTE_MODES)
        _one_of("mixed_precision", self.mixed_precision, PRECISIONS)
        _one_of("ls_method", self.ls_method, ("none",) + targets.LS_METHODS)
        _one_of("squeeze_reduction", self.squeeze_reduction, losses.SQUEEZE_REDUCTIONS)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.optimizer == "adam" and self.momentum != TrainConfig.momentum:
            raise ConfigError("momentum", "applies to --optimizer=sgd; Adam has its own moment estimates")
        _one_of("weight_decay_scope", self.weight_decay_scope, training.WEIGHT_DECAY_SCOPES)
        _one_of("augmentation", self.augmentation, AUGMENTATIONS)
        if not 0.0 <= self.eps_warmup_epochs <= self.epochs:
            raise ConfigError("eps_warmup_epochs", f"must be in [0, --epochs={self.epochs}], got {self.eps_warmup_epochs}")
        if self.eps_warmup_epochs and self.defense in training.CLEAN_DEFENSES:
            raise ConfigError("eps_warmup_epochs", f"--defense={self.defense} trains on clean inputs; there is no "
                                                   "training eps to warm up")
        if self.ssat_replays < 1:
            raise ConfigError("ssat_replays", f"must be a positive integer, got {self.ssat_replays}")
        if not 0.0 <= self.ssat_lambda1 <= self.ssat_lambda0 <= 1.0:
            raise ConfigError("ssat_lambda1", f"SSAT needs 0 <= lambda1 <= lambda0 <= 1 (Eq. 7), got "
                                              f"lambda0={self.ssat_lambda0}, lambda1={self.ssat_lambda1}")
        for flag in ("ssat_gamma", "ssat_target_beta", "ssat_step_size"):
            if getattr(self, flag) < 0:
                raise ConfigError(flag, f"must not be negative, got {getattr(self, flag)}")
        if self.ssat_gamma > 1:
            raise ConfigError("ssat_gamma", f"must be in [0, 1], got {self.ssat_gamma}")
        if self.defense == "ssat" and self.ls_method != "none":
            raise ConfigError("ls_method", "SSAT builds its own adaptive labels; --ls_method does not apply")
        _one_of("swa_mode", self.swa_mode, ("swa", "iswa"))
        if self.swa_start_epoch < 0 or self.swa_start_epoch > self.epochs:
            raise ConfigError("swa_start_epoch", f"must be in 1..{self.epochs} (0 = automatic), got {self.swa_start_epoch}")
        if self.kd_adv_teacher or self.kd_std_teacher:
            if self.defense not in ("pgd", "trades", "fgsm_rs", "natural"):
                raise ConfigError("kd_adv_teacher", f"distillation works with pgd, trades, fgsm_rs and natural, "
                                                    f"not --defense={self.defense}")
            if len(self.kd_weights) != 3 or any(w < 0 for w in self.kd_weights):
                raise ConfigError("kd_weights", f"needs three non-negative weights (CE, robust teacher, standard "
                                                f"teacher), got {self.kd_weights}")
            if not self.kd_temperature > 0:
                raise ConfigError("kd_temperature", f"must be positive, got {self.kd_temperature}")
            for flag in ("kd_adv_teacher", "kd_std_teacher"):
                path = getattr(self, flag)
                if path and not os.path.isdir(path):
                    raise ConfigError(flag, f"{path!r} is not a tfadv run directory or a SavedModel directory")
        _one_of("bat_attack", self.bat_attack, training.BAT_ATTACKS)
        _one_of("bat_labels", self.bat_labels, training.BAT_LABELS)
        _one_of("pgd_labels", self.pgd_labels, ("hard", "bat"))
        if self.pgd_labels == "bat" and self.defense != "pgd":
            raise ConfigError("pgd_labels", "bat labels (Madry-LA) apply to --defense=pgd")
        if (self.defense == "bat" or self.pgd_labels == "bat") and self.ls_method != "none":
            raise ConfigError("ls_method", "BAT's labels replace label smoothing; use --bat_labels=uniform for "
                                           "R-MC-LS")
        for flag in ("bat_beta", "bat_gamma", "bat_top_k", "bat_step_size"):
            if getattr(self, flag) < 0:
                raise ConfigError(flag, f"must not be negative, got {getattr(self, flag)}")
        if self.defense == "bat" and self.bat_top_k >= self.spec.num_classes:
            raise ConfigError("bat_top_k", f"must be below the {self.spec.num_classes} classes, got {self.bat_top_k}")
        if not 0.0 < self.bat_eps_y < 1.0:
            raise ConfigError("bat_eps_y", f"must be in (0, 1), got {self.bat_eps_y}")
        if self.defense == "label_smoothing" and self.ls_method == "none":
            raise ConfigError("ls_method", f"--defense=label_smoothing needs a method: {', '.join(targets.LS_METHODS)}")
        if self.defense == "logit_squeeze" and not self.squeeze_beta > 0:
            raise ConfigError("squeeze_beta", "--defense=logit_squeeze needs a positive --squeeze_beta")
        if not 0.0 <= self.ls_alpha <= 1.0:
            raise ConfigError("ls_alpha", f"must be in [0, 1], got {self.ls_alpha}")
        if self.ls_method != "none" and self.ls_alpha == 0.0:
            raise ConfigError("ls_alpha", f"--ls_method={self.ls_method} needs a positive --ls_alpha")
        if not self.bls_temperature > 0:
            raise ConfigError("bls_temperature", f"must be positive, got {self.bls_temperature}")
        for flag in ("epochs", "batch_size", "attack_steps", "free_replays", "val_every", "val_attack_steps",
                     "eval_attack_steps", "num_cpu_devices"):
            if getattr(self, flag) < 1:
                raise ConfigError(flag, f"must be a positive integer, got {getattr(self, flag)}")
        for flag in ("lr", "step_size"):
            if not getattr(self, flag) > 0:
                raise ConfigError(flag, f"must be positive, got {getattr(self, flag)}")
        for flag in ("weight_decay", "trades_beta", "momentum", "squeeze_beta", "noise_sigma"):
            if getattr(self, flag) < 0:
                raise ConfigError(flag, f"must not be negative, got {getattr(self, flag)}")
        spec = self.spec
        limit = spec.pixel_max if self.norm == "linf" else None
        if self.eps < 0:
            raise ConfigError("eps", f"must not be negative, got {self.eps}")
        if limit is not None and self.eps > limit:
            raise ConfigError("eps", f"{self.eps} exceeds the whole pixel range of {self.dataset} "
                                     f"(0..{spec.pixel_max:g} levels; --eps is in pixel levels, e.g. 8 for 8/255)")
        if self.noise_sigma > spec.pixel_max:
            raise ConfigError("noise_sigma", f"{self.noise_sigma} exceeds the pixel range of {self.dataset} "
                                             f"(0..{spec.pixel_max:g} levels; it is in pixel levels, e.g. 20 for 20/255)")
        if self.eps == 0 and self.defense not in training.CLEAN_DEFENSES:
            raise ConfigError("eps", f"must be positive for --defense={self.defense}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.train_examples == 0 or self.train_examples < -1:
            raise ConfigError("train_examples", f"must be positive or -1 (all), got {self.train_examples}")
        if not 0.0 < self.lr_peak_fraction < 1.0:
            raise ConfigError("lr_peak_fraction", f"must be in (0, 1), got {self.lr_peak_fraction}")
        if any(e < 1 for e in self.lr_decay_epochs):
            raise ConfigError("lr_decay_epochs", f"epochs must be positive, got {self.lr_decay_epochs}")
        if not self.output_dir:
            raise ConfigError("output_dir", "is required (the run's directory)")
        if self.data_dir is not None and spec.tfds_name is not None:
            if not os.path.isdir(self.data_dir) or not os.access(self.data_dir, os.R_OK | os.X_OK):
                raise ConfigError("data_dir", f"{self.data_dir!r} is not a readable directory")
        replicas = self.num_cpu_devices if self.distribute == "mirrored" else 1
        if self.batch_size % replicas:
            raise ConfigError("batch_size", f"{self.batch_size} does not split evenly over {replicas} replicas")
        if self.num_cpu_devices > 1 and self.distribute != "mirrored":
            raise ConfigError("num_cpu_devices", "only makes sense with --distribute=mirrored")
        try:
            models.build(self.model, spec.image_shape, spec.num_classes, **self.model_options())
        except ValueError as error:
            raise ConfigError("model", f"{self.model} cannot be built for {self.dataset} "
                                       f"{spec.image_shape}: {error}") from None
        return self

    def to_flagfile(self) -> str:
        """A flagfile that reproduces the run (without --overwrite)."""
        lines = ["# written by tfadv: `python scripts/train.py --flagfile=<this file>` reproduces the run"]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "overwrite" or value is None:
                continue
            if isinstance(value, bool):
                lines.append(f"--{field.name}" if value else f"--no{field.name}")
            elif isinstance(value, list):
                lines.append(f"--{field.name}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"--{field.name}={value}")
        return "\n".join(lines) + "\n"


def read_flagfile(path: str) -> TrainConfig:
    """The TrainConfig a run's flags.txt describes (the inverse of `TrainConfig.to_flagfile`)."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    values = {}
    with open(path) as handle:
        for raw in handle:
            line = raw.strip()
            if not line.startswith("--"):
                continue
            name, _, value = line[2:].partition("=")
            if not _ and name.startswith("no") and name[2:] in fields:
                values[name[2:]] = False
                continue
            if name not in fields:
                continue  # a flag of a later or earlier tfadv version
            default = getattr(TrainConfig(), name)
            if not _:
                values[name] = True
            elif isinstance(default, bool):
                values[name] = value.lower() in ("1", "true")
            elif isinstance(default, list):
                kind = float if name == "kd_weights" else int
                values[name] = [kind(v) for v in value.split(",") if v]
            elif isinstance(default, int):
                values[name] = int(value)
            elif isinstance(default, float):
                values[name] = float(value)
            else:
                values[name] = None if value == "None" else value
    return TrainConfig(**values)


# ----------------------------------------------------------------------------------------------------------
# THE one conversion of pixel levels (the command-line unit) to fractions of the [0, 1] pixel range

# Default l2 / l1 radii when none is given, as fractions: l2 0.5 (the CIFAR convention, 128/255 ~ 0.5), l1 12 on
# 32x32x3 inputs scaled by the number of input values (so it keeps its meaning per pixel on other shapes).
DEFAULT_EPS_L2 = 0.5
DEFAULT_EPS_L1_PER_3072 = 12.0
RADIUS_NAMES = {"linf": "eps", "l2": "eps_l2", "l1": "eps_l1"}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Radii, step sizes and noise of a run or an evaluation, in both units: `levels` (the dataset's pixel
    levels, what the flags say: 8 = 8/255 on CIFAR, 2 = 2/16 on digits) and `fractions` (of the [0, 1] pixel
    range, what the attacks use). Made by `budget()` only; read `fraction(name)` / `level(name)`."""

    dataset: str
    pixel_max: float
    levels: dict
    fractions: dict

    def fraction(self, name: str) -> Optional[float]:
        return self.fractions.get(name)

    def level(self, name: str) -> Optional[float]:
        return self.levels.get(name)

    @property
    def eps(self) -> float:
        return self.fractions["eps"]

    def radius(self, norm: str) -> float:
        return self.fractions[RADIUS_NAMES[norm]]

    def radii(self) -> dict:
        """{norm: radius as a fraction} for the norms this budget has a radius for."""
        return {norm: self.fractions[name] for norm, name in RADIUS_NAMES.items() if name in self.fractions}

    def to_json(self) -> dict:
        """{name: {"levels": .., "fraction": ..}} (plus the pixel range), for metrics, reports and metadata."""
        out = {"pixel_max": self.pixel_max}
        for name, fraction in self.fractions.items():
            out[name] = {"levels": self.levels[name], "fraction": fraction}
        return out


def budget(spec: "data.DatasetSpec", **levels) -> Budget:
    """THE conversion of pixel levels to fractions of [0, 1] (nothing else in tfadv divides by `pixel_max`).

    Each keyword is a size in the dataset's pixel levels (`eps`, `step_size`, `noise_sigma`, `eps_l2`,
    `eps_l1`, a method's step size, ...); `None` leaves it out, except `eps_l2` / `eps_l1`, which then take the
    default radii (given as fractions, recorded in levels too). Raises ConfigError (naming the flag) for a
    non-finite or negative size.
    """
    import math

    pixel_max = float(spec.pixel_max)
    fractions, recorded = {}, {}
    for name, value in levels.items():
        if value is None:
            continue
        value = float(value)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(name, f"must be a finite, non-negative size in pixel levels, got {value}")
        recorded[name], fractions[name] = value, value / pixel_max
    height, width, channels = spec.image_shape
    defaults = {"eps_l2": DEFAULT_EPS_L2, "eps_l1": DEFAULT_EPS_L1_PER_3072 * height * width * channels / 3072}
    for name, fraction in defaults.items():
        if name not in fractions:
            fractions[name], recorded[name] = fraction, fraction * pixel_max
    return Budget(spec.name, pixel_max, recorded, fractions)


def flag_names() -> set:
    """The names of every training flag (a training flagfile may hold any of them)."""
    return {field.name for field in dataclasses.fields(TrainConfig)} | {"flagfile"}


def read_flag_values(path: str, _seen=None) -> dict:
    """{flag name: raw value} of a flagfile, following nested `--flagfile=` lines as absl does (later lines
    win; `--name` is "true", `--noname` "false"). Unknown names are kept: the caller picks what it needs."""
    seen = set() if _seen is None else _seen
    real = os.path.realpath(path)
    if real in seen:
        raise ConfigError("flagfile", f"{path} includes itself")
    seen.add(real)
    values = {}
    with open(path) as handle:
        for raw in handle:
            line = raw.strip()
            if not line.startswith("--"):
                continue
            name, equals, value = line[2:].partition("=")
            if name == "flagfile":
                values.update(read_flag_values(value, seen))
            elif equals:
                values[name] = value
            elif name.startswith("no") and len(name) > 2:
                values[name[2:]] = "false"  # no tfadv flag name starts with "no"
            else:
                values[name] = "true"
    return values


def _one_of(flag, value, allowed):
    if value not in allowed:
        raise ConfigError(flag, f"unknown value {value!r}; valid: {', '.join(allowed)}")
