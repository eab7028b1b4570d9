"""The typed, validated configuration of a training run, as nested sections.

A run config is the chosen `defense` (a method of `tfadv.training.registry`), the options of every registered
method (each method module owns its `Options`), and one section per concern: data, model, optimizer (and
schedule), attack, adversarial labels, smoothing, distillation, SWA, validation, runtime. Every field of a
section (and of a method's options) is one command-line flag of the same name (method options: prefixed, e.g.
`ssat_replays`); `define_flags()` generates the absl flags from the fields, so flagfiles keep working.

Sizes on the command line (`eps`, step sizes, noise) are in the dataset's pixel levels (8 means 8/255 on 8-bit
images; digits have 16 levels); `budget()` converts them, once, to fractions of [0, 1]. A config is data:
`validate()` checks the values (every failure names the flag) and touches neither the file system nor the
environment nor builds anything; what needs those (directories, TF_CONFIG, a network built for the images) and
building the network and trainer are `tfadv.assembly`'s, on the training side, before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import List, Optional

from tfadv import cluster, data, losses, models, targets, training
from tfadv.precision import PRECISIONS
from tfadv.errors import ConfigError
from tfadv.callbacks import LR_SCHEDULES
from tfadv.training import registry
from tfadv.training.registry import option

JIT_MODES = ("auto", "true", "false")
DISTRIBUTE_MODES = ("none", "mirrored", "multi_worker")
OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("auto", "none", "crop", "crop_flip")


def _one_of(flag, value, allowed):
    if value not in allowed:
        raise ConfigError(flag, f"unknown value {value!r}; valid: {', '.join(allowed)}")


def _positive_ints(section, *names):
    for name in names:
        if getattr(section, name) < 1:
            raise ConfigError(name, f"must be a positive integer, got {getattr(section, name)}")


def _finite(flag, value):
    """ConfigError naming `flag` for a NaN or infinite number (or list entry); bools and non-numbers pass."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(flag, f"must be a finite number, got {item}")


MAX_SEED = 2 ** 31 - 1  # seeds key stateless TF random ops and numpy generators: a non-negative int32


def check_seed(flag: str, seed) -> int:
    """ConfigError naming `flag` unless `seed` is an integer in [0, 2**31 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(flag, f"must be an integer in 0..{MAX_SEED} (2**31 - 1), got {seed}")
    return seed


def _non_negative(section, *names):
    for name in names:
        if getattr(section, name) < 0:
            raise ConfigError(name, f"must not be negative, got {getattr(section, name)}")


# ----------------------------------------------------------------------------------------------------------
# sections: each field is a flag of the same name; `validate(run)` checks the section (run = the TrainConfig)


@dataclasses.dataclass
class DataSection:
    dataset: str = option("digits", f"dataset: {', '.join(data.DATASETS)}")
    data_dir: Optional[str] = option(None, "tensorflow-datasets directory (default: $TFDS_DATA_DIR or "
                                           "~/tensorflow_datasets)")
    download: bool = option(False, "let tensorflow-datasets download a missing dataset (off by default: offline "
                                   "machines would wait minutes for network retries)")
    val_fraction: float = option(0.1, "held-out share of the training split in [0,1) that selects the best "
                                      "checkpoints (0.1 = paper 001's 9:1); 0 = none: curves on test images, no "
                                      "checkpoint selection")
    train_examples: int = option(-1, "train on the first N examples of the training split (after the validation "
                                     "split; -1: all) — a small set makes robust overfitting easy to see")
    augmentation: str = option("auto", "training augmentation: auto (the dataset's: crop_flip for CIFAR, crop for "
                                       "SVHN, none for digits/MNIST), none, crop (random crop from a padded image), "
                                       "crop_flip")
    crop_padding: int = option(4, "pixels of padding on each side before the random crop (4: most papers' code; 2: "
                                  "Madry's and Free-AT's cifar10_input.py, a 36x36 pad)")
    noise_sigma: float = option(0.0, "Gaussian noise on training images, std in pixel levels (20 = 20/255 on "
                                     "CIFAR), clipped to [0, 1]; 0 = off")

    def validate(self, run):
        _one_of("dataset", self.dataset, tuple(data.DATASETS))
        _one_of("augmentation", self.augmentation, AUGMENTATIONS)
        _non_negative(self, "noise_sigma")
        spec = run.spec
        if not 1 <= self.crop_padding < min(spec.image_shape[:2]):
            raise ConfigError("crop_padding", f"must be in 1..{min(spec.image_shape[:2]) - 1} for "
                                              f"{self.dataset}'s {spec.image_shape[0]}x{spec.image_shape[1]} images, "
                                              f"got {self.crop_padding}")
        if self.noise_sigma > spec.pixel_max:
            raise ConfigError("noise_sigma", f"{self.noise_sigma} exceeds the pixel range of {self.dataset} "
                                             f"(0..{spec.pixel_max:g} levels; it is in pixel levels, e.g. 20 for "
                                             "20/255)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.train_examples == 0 or self.train_examples < -1:
            raise ConfigError("train_examples", f"must be positive or -1 (all), got {self.train_examples}")


@dataclasses.dataclass
class ModelSection:
    model: str = option("mlp", f"network: {', '.join(models.MODEL_NAMES)}")
    wrn_depth: int = option(28, "wide_resnet depth (6n+4: 28, 34)")
    wrn_width: int = option(10, "wide_resnet width factor (10, 4)")

    def options(self) -> dict:
        return {"depth": self.wrn_depth, "width": self.wrn_width} if self.model == "wide_resnet" else {}

    def validate(self, run):
        _one_of("model", self.model, models.MODEL_NAMES)  # whether it builds for the images: assembly.check


@dataclasses.dataclass
class OptimizerSection:
    """The optimizer and its learning-rate schedule."""

    epochs: int = option(30, "training epochs (passes over the training split)")
    batch_size: int = option(64, "global minibatch size")
    lr: float = option(0.05, "base (piecewise, cosine) or peak (cyclic) learning rate")
    lr_schedule: str = option("piecewise", f"learning-rate schedule: {', '.join(LR_SCHEDULES)}")
    lr_decay_epochs: List[int] = option([], "piecewise: epochs at which the rate is multiplied by "
                                            "--lr_decay_factor", item=int)
    lr_decay_factor: float = option(0.1, "piecewise: the factor")
    lr_warmup_epochs: float = option(0.0, "cosine: linear warm-up epochs")
    lr_peak_fraction: float = option(0.5, "cyclic: where in the run the rate peaks, in (0,1)")
    optimizer: str = option("sgd", "sgd (with --momentum; most papers' code) or adam (Madry et al.'s MNIST model: "
                                   "--optimizer=adam --lr=1e-4 --batch_size=50)")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(5e-4, "L2 weight decay (coupled, as torch.optim.SGD)")
    weight_decay_scope: str = option("all", "which weights decay: all (torch.optim.SGD in most papers' code) or "
                                            "kernels (conv/dense kernels only, as BAT's and Madry's code)")

    def validate(self, run):
        _one_of("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        if self.optimizer == "adam" and self.momentum != OptimizerSection.momentum:
            raise ConfigError("momentum", "applies to --optimizer=sgd; Adam has its own moment estimates")
        _one_of("weight_decay_scope", self.weight_decay_scope, training.WEIGHT_DECAY_SCOPES)
        _positive_ints(self, "epochs", "batch_size")
        if not self.lr > 0:
            raise ConfigError("lr", f"must be positive, got {self.lr}")
        _non_negative(self, "weight_decay", "momentum")
        if not 0.0 < self.lr_peak_fraction < 1.0:
            raise ConfigError("lr_peak_fraction", f"must be in (0, 1), got {self.lr_peak_fraction}")
        if any(e < 1 for e in self.lr_decay_epochs):
            raise ConfigError("lr_decay_epochs", f"epochs must be positive, got {self.lr_decay_epochs}")
        # typed (not from a flagfile, whose schedule a shorter --epochs may cut): a decay at or after the last
        # epoch never happens, so the flag would be accepted and not applied
        typed = run.explicit is None or "lr_decay_epochs" in run.explicit
        late = [e for e in self.lr_decay_epochs if e >= self.epochs]
        if typed and late and self.lr_schedule == "piecewise":
            raise ConfigError("lr_decay_epochs", f"{late} is not before the end of training (--epochs={self.epochs}; "
                                                 f"a decay at epoch e applies from the (e+1)-th epoch on): the rate "
                                                 f"would never decay there")


@dataclasses.dataclass
class AttackSection:
    """The training attack (each method reads what it needs; BAT, SSAT, FGSM-RS and Free-AT have their own step
    sizes: `Method.step_flag`)."""

    eps: float = option(2.0, "perturbation radius in the dataset's pixel levels (8 = 8/255 on CIFAR)")
    eps_warmup_epochs: float = option(0.0, "training eps (and step size) grow linearly from 0 to --eps over this "
                                           "many epochs (common for MNIST-scale eps); 0 = off")
    step_size: float = option(0.5, "PGD / TRADES training attack step size in pixel levels (bat, ssat, fgsm_rs and "
                                   "free use --bat_step_size, --ssat_step_size, --fgsm_rs_step_size, --free_step_size)")
    attack_steps: int = option(10, "steps of the training attack (PGD-k, TRADES-k)")
    norm: str = option("linf", "threat model of the training attack: linf, l2 (l1 for free/fgsm_rs/trades)")
    attack_bn_mode: str = option("eval", "BatchNorm during the training attack: eval (inference statistics), "
                                         "train (batch statistics), or auto (what the method's reference code does: "
                                         "train for pgd, fgsm_rs, free, ssat; eval for trades, bat)")

    def validate(self, run):
        _one_of("norm", self.norm, run.method.norms)
        _one_of("attack_bn_mode", self.attack_bn_mode, ("auto",) + tuple(training.BN_MODES))
        if not 0.0 <= self.eps_warmup_epochs <= run.optimization.epochs:
            raise ConfigError("eps_warmup_epochs", f"must be in [0, --epochs={run.optimization.epochs}], got "
                                                   f"{self.eps_warmup_epochs}")
        if self.eps_warmup_epochs and run.method.clean:
            raise ConfigError("eps_warmup_epochs", f"--defense={run.defense} trains on clean inputs; there is no "
                                                   "training eps to warm up")
        _positive_ints(self, "attack_steps")
        if not self.step_size > 0:
            raise ConfigError("step_size", f"must be positive, got {self.step_size}")
        spec = run.spec
        if self.eps < 0:
            raise ConfigError("eps", f"must not be negative, got {self.eps}")
        if self.norm == "linf" and self.eps > spec.pixel_max:
            raise ConfigError("eps", f"{self.eps} exceeds the whole pixel range of {run.data.dataset} "
                                     f"(0..{spec.pixel_max:g} levels; --eps is in pixel levels, e.g. 8 for 8/255)")
        if self.eps == 0 and not run.method.clean:
            raise ConfigError("eps", f"must be positive for --defense={run.defense}")


@dataclasses.dataclass
class LabelsSection:
    """BAT's adversarial labels (paper 002 Eq. 14-18), used by --defense=bat and --pgd_labels=bat (Madry-LA)."""

    bat_beta: float = option(0.0, "bat: beta of Eq. 16-18 (0 = 9 for <= 10 classes, 11 for more)")
    bat_gamma: float = option(0.01, "bat: gamma of Eq. 14")
    bat_eps_y: float = option(0.5, "bat: fixed label budget for --bat_labels=uniform")
    bat_top_k: int = option(0, "bat: spread eps_y over the k wrong classes of largest loss (LA9 of section 5.4); "
                               "0 = all")

    def label_adversary(self, num_classes: int) -> training.LabelAdversary:
        """Eq. 14 / 18 labels (kind "adversarial"; BAT swaps in its --bat_labels kind)."""
        beta = self.bat_beta or targets.bat_beta_default(num_classes)
        return training.LabelAdversary("adversarial", beta, self.bat_gamma, self.bat_eps_y, self.bat_top_k or None)

    def validate(self, run):
        _non_negative(self, "bat_beta", "bat_gamma", "bat_top_k")
        if "adversarial_labels" in run.method.supports and self.bat_top_k >= run.spec.num_classes:
            raise ConfigError("bat_top_k", f"must be below the {run.spec.num_classes} classes, got {self.bat_top_k}")
        if not 0.0 < self.bat_eps_y < 1.0:
            raise ConfigError("bat_eps_y", f"must be in (0, 1), got {self.bat_eps_y}")


@dataclasses.dataclass
class SmoothingSection:
    """Targets and logit penalty of the outer minimisation (papers 003, 004), for every method that supports them."""

    ls_method: str = option("none", "label smoothing of the outer minimisation: none, uniform (y - a(y - 1/K)), "
                                    "sls, als, bls, sbls (paper 003); also for pgd, fgsm_rs, free, trades")
    ls_alpha: float = option(0.0, "label-smoothing mass alpha in [0, 1]")
    bls_temperature: float = option(0.001, "BLS temperature T (paper 003 default 0.001)")
    squeeze_beta: float = option(0.0, "logit squeezing weight beta (paper 004); 0 = off")
    squeeze_reduction: str = option("frobenius", "logit squeezing: frobenius (||Z||_F of the batch, paper 004 Eq. 5) "
                                                 "or mean_l2")

    def config(self) -> training.SmoothingConfig:
        return training.SmoothingConfig(self.ls_method, self.ls_alpha, self.bls_temperature, self.squeeze_beta,
                                        self.squeeze_reduction)

    def validate(self, run):
        _one_of("ls_method", self.ls_method, ("none",) + targets.LS_METHODS)
        _one_of("squeeze_reduction", self.squeeze_reduction, losses.SQUEEZE_REDUCTIONS)
        if not 0.0 <= self.ls_alpha <= 1.0:
            raise ConfigError("ls_alpha", f"must be in [0, 1], got {self.ls_alpha}")
        if self.ls_method != "none" and self.ls_alpha == 0.0:
            raise ConfigError("ls_alpha", f"--ls_method={self.ls_method} needs a positive --ls_alpha")
        if not self.bls_temperature > 0:
            raise ConfigError("bls_temperature", f"must be positive, got {self.bls_temperature}")
        _non_negative(self, "squeeze_beta")


@dataclasses.dataclass
class DistillationSection:
    """Self-teacher distillation (paper 001)."""

    kd_adv_teacher: str = option("", "distillation: the robust self-teacher (a tfadv run dir or a SavedModel) — "
                                     "paper 001")
    kd_std_teacher: str = option("", "distillation: the standard (naturally trained) teacher")
    kd_temperature: float = option(2.0, "distillation temperature T")
    kd_weights: List[float] = option([0.25, 0.5, 0.25], "weights of CE, robust teacher, standard teacher (paper "
                                                        "0.25,0.5,0.25; official code 0.3,0.6,0.1)", item=float)

    @property
    def enabled(self) -> bool:
        return bool(self.kd_adv_teacher or self.kd_std_teacher)

    def loss_weights(self) -> dict:
        """{"ce", "robust", "standard"}: paper 001 Eq. 1, (1 - lambda1 - lambda2) L + lambda1 KD_adv + lambda2 KD_std,
        with lambda1 / lambda2 from --kd_weights for the teachers given; a teacher not given has lambda 0 and its
        weight goes to the method's own loss L (the paper's one-teacher ablations)."""
        _, robust, standard = self.kd_weights
        robust = robust if self.kd_adv_teacher else 0.0
        standard = standard if self.kd_std_teacher else 0.0
        return {"ce": 1.0 - robust - standard, "robust": robust, "standard": standard}

    def validate(self, run):
        if not self.enabled:
            return
        if len(self.kd_weights) != 3 or any(w < 0 for w in self.kd_weights):
            raise ConfigError("kd_weights", f"needs three non-negative weights (CE, robust teacher, standard "
                                            f"teacher), got {self.kd_weights}")
        if abs(sum(self.kd_weights) - 1.0) > 1e-6:
            raise ConfigError("kd_weights", f"must sum to 1 (paper 001 Eq. 1: the CE weight is 1 - lambda1 - lambda2), "
                                            f"got {self.kd_weights}")
        if not self.kd_temperature > 0:
            raise ConfigError("kd_temperature", f"must be positive, got {self.kd_temperature}")


@dataclasses.dataclass
class SWASection:
    swa: bool = option(False, "stochastic weight averaging (paper 001): evaluation and export use the average")
    swa_start_epoch: int = option(0, "first epoch averaged (0: 5 after the first LR decay)")
    swa_mode: str = option("swa", "swa, or iswa (training continues from the average, paper 001 A1.6)")
    swa_bn_data: str = option("clean", "images that recompute the average's BatchNorm statistics: clean (one pass "
                                       "of unaugmented training images) or augmented (one pass of the run's training "
                                       "augmentation, as paper 001's bn_update(train_loader))")

    def start(self, run) -> int:
        """The first averaged epoch, 1-based: --swa_start_epoch, or paper 001's code default, or 3/4 of the run.

        Paper 001's code averages when its 0-based epoch index is >= swa_start = first decay + 5 (55 with LR
        decays at 50, 150); its LR decays from 0-based epoch 50 on, as tfadv's piecewise schedule does. In
        tfadv's 1-based epochs that is first decay + 6.
        """
        o = run.optimization
        if self.swa_start_epoch:
            return self.swa_start_epoch
        if o.lr_schedule == "piecewise" and o.lr_decay_epochs:
            return min(min(o.lr_decay_epochs) + 6, o.epochs)
        return max(1, (3 * o.epochs) // 4)

    def validate(self, run):
        _one_of("swa_mode", self.swa_mode, ("swa", "iswa"))
        _one_of("swa_bn_data", self.swa_bn_data, ("clean", "augmented"))
        if self.swa_start_epoch < 0 or self.swa_start_epoch > run.optimization.epochs:
            raise ConfigError("swa_start_epoch", f"must be in 1..{run.optimization.epochs} (0 = automatic), got "
                                                 f"{self.swa_start_epoch}")


@dataclasses.dataclass
class ValidationSection:
    """Robust validation during training and the final test evaluation."""

    val_every: int = option(1, "robust validation every N epochs (and at the last)")
    val_examples: int = option(500, "without --val_fraction: validate on this many test examples")
    val_attack_steps: int = option(10, "PGD steps of the robust validation")
    eval_attack_steps: int = option(20, "PGD steps of the final test evaluation")
    eval_examples: int = option(-1, "final evaluation on the first N test examples (-1: all)")

    def validate(self, run):
        _positive_ints(self, "val_every", "val_attack_steps", "eval_attack_steps")
        if self.eval_examples == 0 or self.eval_examples < -1:
            raise ConfigError("eval_examples", f"must be a positive number of test examples or -1 (all), got "
                                               f"{self.eval_examples}")
        # --val_examples is used only without a held-out split (--val_fraction=0); with one it is not read (typed,
        # it is refused: `TrainConfig.unused_flags`)
        if run.data.val_fraction == 0 and (self.val_examples == 0 or self.val_examples < -1):
            raise ConfigError("val_examples", f"with --val_fraction=0 validation uses this many test examples: must "
                                              f"be positive or -1 (all), got {self.val_examples}")
        if self.val_examples < -1:
            raise ConfigError("val_examples", f"must be a number of test examples or -1 (all), got "
                                              f"{self.val_examples}")


@dataclasses.dataclass
class RuntimeSection:
    seed: int = option(0, "random seed (data order, augmentation, initialisation, attacks)")
    output_dir: str = option("", "the run's directory")
    overwrite: bool = option(False, "replace a finished run in --output_dir")
    jit_compile: str = option("auto", f"XLA for train_step: {', '.join(JIT_MODES)}")
    distribute: str = option("none", f"distribution: {', '.join(DISTRIBUTE_MODES)} (multi_worker: "
                                     "MultiWorkerMirroredStrategy, the cluster from TF_CONFIG)")
    num_cpu_devices: int = option(1, "split the CPU into N logical devices (mirrored tests)")
    cluster_timeout: float = option(600.0, "multi_worker: seconds to wait for every worker of TF_CONFIG to join "
                                           "before giving up with one line (the worker is killed: exit status 137)")
    mixed_precision: str = option("auto", f"compute dtype: {', '.join(PRECISIONS)} (auto: mixed bfloat16 on CPUs "
                                          "with AMX-BF16 / AVX512-BF16 and GPUs of compute capability >= 8.0, "
                                          "else none = float32; a resumed run keeps its precision)")

    @property
    def replicas(self) -> int:
        """Replicas in sync: --num_cpu_devices when mirrored (over CPUs), the workers of TF_CONFIG for
        multi_worker, else 1."""
        if self.distribute == "multi_worker":
            return cluster.cluster_from_environment().num_workers
        return self.num_cpu_devices if self.distribute == "mirrored" else 1

    def validate(self, run):
        check_seed("seed", self.seed)
        _one_of("jit_compile", self.jit_compile, JIT_MODES)
        _one_of("distribute", self.distribute, DISTRIBUTE_MODES)
        _one_of("mixed_precision", self.mixed_precision, PRECISIONS)
        _positive_ints(self, "num_cpu_devices")
        if not self.cluster_timeout > 0:
            raise ConfigError("cluster_timeout", f"must be a positive number of seconds, got {self.cluster_timeout}")
        if not self.output_dir:
            raise ConfigError("output_dir", "is required (the run's directory)")
        if self.distribute != "multi_worker" and run.optimization.batch_size % self.replicas:  # TF_CONFIG's: assembly
            raise ConfigError("batch_size", f"{run.optimization.batch_size} does not split evenly over "
                                            f"{self.replicas} replicas")
        if self.num_cpu_devices > 1 and self.distribute != "mirrored":
            raise ConfigError("num_cpu_devices", "only makes sense with --distribute=mirrored")


SECTIONS = (("data", DataSection), ("network", ModelSection), ("optimization", OptimizerSection),
            ("attack", AttackSection), ("labels", LabelsSection), ("smoothing", SmoothingSection),
            ("distillation", DistillationSection), ("averaging", SWASection), ("validation", ValidationSection),
            ("runtime", RuntimeSection))
# The flag that switches each feature on (a method that does not support it refuses it, naming this flag).
FEATURE_FLAGS = {"label_smoothing": "ls_method", "logit_squeeze": "squeeze_beta", "distillation": "kd_adv_teacher"}
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


# ----------------------------------------------------------------------------------------------------------
# flagfiles: THE reader is absl's (`FlagValues.read_flags_from_files`); tfadv only checks a file before absl reads
# it (what absl would ignore or crash on) and adds a preset's per-method flagfile for the chosen --defense


def check_flagfile(path: str) -> list:
    """The flagfiles absl reads for `--flagfile=PATH`, in the order it reads them (PATH, then the ones it includes,
    depth first); ConfigError naming --flagfile for what absl would ignore or crash on: a flagfile that includes
    itself, directly or through another (absl warns "Ignoring" and goes on without it), a file that is not UTF-8
    text (absl: a UnicodeDecodeError traceback), and a line that is neither a flag (`--name=value`, `-name`), a
    comment (`#`, `//` at the start of the line) nor blank (absl hands it to the script as a stray argument).
    OSError if one cannot be read. The same file included twice side by side is no cycle (absl reads it twice)."""
    def pre_order(node):
        return [node[0]] + [path for child in node[1] for path in pre_order(child)]

    return pre_order(_flagfile_tree(path))


def _flagfile_tree(path: str, _including=()) -> tuple:
    """(path, [the trees of the flagfiles it includes, in order]), checked as `check_flagfile` says."""
    real = os.path.realpath(path)
    chain = [*(shown for _, shown in _including), path]
    if any(real == seen for seen, _ in _including):
        raise ConfigError("flagfile", f"{path} includes itself ({' -> '.join(chain)}); absl would ignore it")
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError as error:
        raise ConfigError("flagfile", f"{path} is not a text flagfile (not UTF-8: byte "
                                      f"{error.object[error.start]:#04x} at offset {error.start})") from None
    included = []
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or raw.startswith(("#", "//")):  # absl's rule: a comment starts the line
            continue
        if not line.startswith("-") or line == "-" or "\x00" in line:
            raise ConfigError("flagfile", f"{path}:{number}: not a flag line: {line[:60]!r} (one --name=value per "
                                          "line; comments start with #)")
        if raw.startswith(("--flagfile=", "-flagfile=")):
            included.append(_flagfile_tree(os.path.expanduser(line.split("=", 1)[1].strip()),
                                           (*_including, (real, path))))
    return path, included


def read_flags(path: str) -> list:
    """The flag lines (`--name=value`, `--name`, `--noname`) absl reads for `--flagfile=PATH`, nested flagfiles
    expanded where they stand (later lines win), after `check_flagfile`."""
    from absl import flags

    check_flagfile(path)
    return flags.FlagValues().read_flags_from_files([f"--flagfile={path}"], force_gnu=True)


def read_flag_values(path: str) -> dict:
    """{flag name: raw value} of a flagfile as absl reads it (`read_flags`; the last setting of a flag wins,
    `--name` is "true", `--noname` "false"). Unknown names are kept: the caller picks what it needs."""
    values = {}
    for line in read_flags(path):
        name, equals, value = line.lstrip("-").partition("=")
        if equals:
            values[name] = value
        elif name.startswith("no") and len(name) > 2:
            values[name[2:]] = "false"  # no tfadv flag name starts with "no"
        else:
            values[name] = "true"
    return values


def method_flagfile(path: str, defense: str) -> str:
    """Where a preset keeps the options of one method: flags/cifar10.cfg -> flags/cifar10/<defense>.cfg."""
    return os.path.join(os.path.splitext(path)[0], f"{defense}.cfg")


def method_flagfiles(path: str, defense: str) -> list:
    """The per-method flagfiles `--defense=DEFENSE --flagfile=PATH` reads after PATH: `method_flagfile` of PATH
    and of every flagfile it includes, when it exists, the included files' first (an including preset's own wins).
    Each may set only options of DEFENSE (ConfigError naming --flagfile otherwise)."""
    def post_order(node):
        return [path for child in node[1] for path in post_order(child)] + [node[0]]

    method = registry.lookup(defense)
    found = []
    for flagfile in post_order(_flagfile_tree(path)):
        candidate = method_flagfile(flagfile, defense)
        if method is None or not os.path.isfile(candidate) or candidate in found:
            continue
        for name in read_flag_values(candidate):
            if name not in method.flags():
                raise ConfigError("flagfile", f"{candidate} sets --{name}: a per-method flagfile holds only options "
                                              f"of --defense={defense} ({', '.join(method.flags()) or 'none'})")
        found.append(candidate)
    return found


def training_argv(argv: list, flag_values=None) -> list:
    """`argv` (a train.py command line) with each `--flagfile=PATH` followed by `--flagfile=` of its per-method
    flagfiles for the run's --defense (`method_flagfiles`), so that what a preset sets for one method is read
    only when that method trains; flags typed after PATH still win. The defense is the last --defense of the
    command line as absl expands it (default: TrainConfig.defense). ConfigError / OSError as `check_flagfile`."""
    from absl import flags

    flag_values = flag_values if flag_values is not None else flags.FLAGS
    argv, given = [argv[0]], list(argv[1:])
    while given:  # `--flagfile PATH` as `--flagfile=PATH`
        arg = given.pop(0)
        argv.append(f"{arg}={given.pop(0)}" if arg in ("--flagfile", "-flagfile") and given else arg)
        if arg == "--":
            argv += given
            break
    files = [arg.split("=", 1)[1] for arg in argv[1:argv.index("--") if "--" in argv else None]
             if arg.startswith(("--flagfile=", "-flagfile="))]
    if not files:
        return argv
    for path in files:
        check_flagfile(path)
    defense = TrainConfig.defense
    expanded = flag_values.read_flags_from_files(list(argv[1:]), force_gnu=True)
    for index, arg in enumerate(expanded):
        if arg == "--":
            break
        if arg.startswith(("--defense=", "-defense=")):
            defense = arg.split("=", 1)[1]
        elif arg in ("--defense", "-defense") and index + 1 < len(expanded):
            defense = expanded[index + 1]
    out = [argv[0]]
    for index, arg in enumerate(argv[1:], 1):
        out.append(arg)
        if arg == "--":
            return out + argv[index + 1:]
        if arg.startswith(("--flagfile=", "-flagfile=")):
            out += [f"--flagfile={extra}" for extra in method_flagfiles(arg.split("=", 1)[1], defense)]
    return out


def _default_methods() -> dict:
    return {method.name: method.options() for method in registry.methods()}


@dataclasses.dataclass
class TrainConfig:
    """A run: the defense (a registered method), every method's options (`methods`), and the sections.

    A field is read where it lives (`config.attack.eps`; the chosen method's options: `config.options.replays`,
    another's: `config.methods["ssat"].replays`), never by its flag name on the config; `from_flags` / `flat`
    convert from / to the flat {flag: value} form of the command line and flags.txt.
    """

    defense: str = "pgd"
    data: DataSection = dataclasses.field(default_factory=DataSection)
    network: ModelSection = dataclasses.field(default_factory=ModelSection)
    optimization: OptimizerSection = dataclasses.field(default_factory=OptimizerSection)
    attack: AttackSection = dataclasses.field(default_factory=AttackSection)
    labels: LabelsSection = dataclasses.field(default_factory=LabelsSection)
    smoothing: SmoothingSection = dataclasses.field(default_factory=SmoothingSection)
    distillation: DistillationSection = dataclasses.field(default_factory=DistillationSection)
    averaging: SWASection = dataclasses.field(default_factory=SWASection)
    validation: ValidationSection = dataclasses.field(default_factory=ValidationSection)
    runtime: RuntimeSection = dataclasses.field(default_factory=RuntimeSection)
    methods: dict = dataclasses.field(default_factory=_default_methods)
    # The flags the user gave directly (not through a flagfile); None = all of them (a library call). A shared
    # flag this run does not read (`unused_flags`) is refused when given directly with a non-default value; from a
    # flagfile (a preset for several settings) it is recorded, unused. Another method's option with a non-default
    # value is refused whatever its source: presets keep method options in per-method flagfiles
    # (`method_flagfile`), read only for that --defense.
    explicit: Optional[frozenset] = dataclasses.field(default=None, compare=False, repr=False)

    @classmethod
    def from_flags(cls, values: Optional[dict] = None, strict: bool = True, explicit=None, **more) -> "TrainConfig":
        """A config from {flag name: value} (values typed, or strings as in flags.txt). With `strict`, an
        unknown flag name is a ConfigError; otherwise it is skipped (a flag of another tfadv version).
        A `flagfile` value is read as the command line reads it (`from_flagfile`), the other values override it."""
        values = {**(values or {}), **more}
        if "flagfile" in values:
            flagfile = values.pop("flagfile")
            return cls.from_flagfile(flagfile, **values)
        homes = _flag_homes()
        sections = {name: {} for name, _ in SECTIONS}
        method_values = {method.name: {} for method in registry.methods()}
        defense = cls.defense
        for name, value in values.items():
            if name == "defense":
                defense = value
                continue
            home = homes.get(name)
            if home is None:
                if strict:
                    raise ConfigError(name, "unknown flag")
                continue
            kind, owner, field = home
            typed = _typed(name, value, _field_of(kind, owner, field))
            (method_values[owner] if kind == "method" else sections[owner])[field] = typed
        built = {name: section_type(**sections[name]) for name, section_type in SECTIONS}
        try:  # a method's Options checks its own values when it is made
            methods = {method.name: method.options(**method_values[method.name]) for method in registry.methods()}
        except registry.OptionError as error:
            raise ConfigError(error.flag, str(error).split(": ", 1)[1]) from None
        return cls(defense=defense, methods=methods, explicit=None if explicit is None else frozenset(explicit),
                   **built)

    def flat(self) -> dict:
        """{flag name: value} for every flag (the defense, the sections, every registered method's options)."""
        out = {"defense": self.defense}
        for name, _ in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, name)))
        for method in registry.methods():
            options = self.methods.get(method.name) or method.options()
            for flag, field in method.flags().items():
                out[flag] = getattr(options, field)
        return out

    @classmethod
    def from_flagfile(cls, path: str, **overrides) -> "TrainConfig":
        """What `train.py --flagfile=PATH --name=value ...` builds, from Python: the flagfile is read by the
        command line's own parser (nested --flagfile lines relative to the working directory, --noname, comments;
        the preset's per-method flagfile of the `defense` override, `training_argv`; an unknown or malformed flag
        is a ConfigError, as the command line refuses it), then `overrides` (flag names) replace what it set, as
        flags typed after --flagfile do."""
        from absl import flags

        flag_values = flags.FlagValues()
        define_flags(flag_values)
        argv = ["tfadv", f"--flagfile={path}"]
        defense = [f"--defense={overrides['defense']}"] if "defense" in overrides else []
        try:
            flag_values(training_argv(argv + defense, flag_values))
        except flags.Error as error:
            raise ConfigError("flagfile", f"{path}: {str(error).splitlines()[0]}") from None
        except OSError as error:
            raise ConfigError("flagfile", f"cannot read {error.filename}: {error.strerror or error}") from None
        config = from_parsed_flags(flag_values, argv=argv)
        return config.replace(**overrides) if overrides else config

    def replace(self, **values) -> "TrainConfig":
        """A copy with some flags changed (by flag name)."""
        return TrainConfig.from_flags({**self.flat(), **values}, explicit=self.explicit)

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def spec(self) -> data.DatasetSpec:
        return data.get_spec(self.data.dataset)

    @property
    def method(self) -> registry.Method:
        return registry.get(self.defense)

    @property
    def options(self):
        """The chosen method's options."""
        return self.methods.get(self.defense) or self.method.options()

    def budget(self) -> "Budget":
        """eps, the training attack's step size (the method's rule: BAT --bat_step_size or eps, SSAT eps / m, ...)
        and the noise, in levels and fractions (THE conversion: `budget()`)."""
        a = self.attack
        step = self.method.step_levels(self.options, a.eps, a.step_size)
        return budget(self.spec, eps=a.eps, step_size=step, noise_sigma=self.data.noise_sigma)

    def attack_config(self) -> training.AttackConfig:
        b, a = self.budget(), self.attack
        return training.AttackConfig(eps=b.eps, step_size=b.fraction("step_size"), steps=a.attack_steps,
                                     norm=a.norm, random_start=self.method.random_start(self.options),
                                     bn_mode=self.attack_bn_mode())

    def attack_bn_mode(self) -> str:
        """--attack_bn_mode, with `auto` read as the chosen method's reference code (`Method.attack_bn_mode`)."""
        mode = self.attack.attack_bn_mode
        return self.method.attack_bn_mode if mode == "auto" else mode

    def updates_per_batch(self) -> int:
        return int(self.method.updates_per_batch(self.options))

    def swa_start(self) -> int:
        return self.averaging.start(self)

    # -- validation ------------------------------------------------------------------------------------------
    def validate(self) -> "TrainConfig":
        """Raises ConfigError for the first bad value (naming its flag); returns self."""
        for name, value in self.flat().items():  # every float flag (and float list entry) must be finite
            _finite(name, value)
        _one_of("defense", self.defense, registry.names())
        _one_of("dataset", self.data.dataset, tuple(data.DATASETS))
        method = self.method
        try:
            self.options.validate(self)
        except registry.OptionError as error:
            raise ConfigError(error.flag, str(error).split(": ", 1)[1]) from None
        for other in registry.methods():
            if other.name == self.defense or other.name not in self.methods:
                continue
            defaults, options = other.options(), self.methods[other.name]
            for flag, field in other.flags().items():
                if getattr(options, field) != getattr(defaults, field):  # typed or from a flagfile alike
                    typed = self.explicit is None or flag in self.explicit
                    where = "" if typed else (f" (a flagfile sets it: a preset keeps --{other.name}'s options in its "
                                              f"per-method flagfile, <preset>/{other.name}.cfg, read only for "
                                              f"--defense={other.name})")
                    raise ConfigError(flag, f"applies to --defense={other.name}, not --defense={self.defense}{where}")
        given = self.explicit is None or "attack_bn_mode" in self.explicit
        if given and self.attack.attack_bn_mode != AttackSection.attack_bn_mode and (
                method.clean or not method.attack_bn_applies):
            why = "trains on clean inputs" if method.clean else "takes its input gradient from the training pass"
            raise ConfigError("attack_bn_mode", f"--defense={self.defense} {why}: there is no separate attack for "
                                                f"--attack_bn_mode to set (set it in a flagfile to record it unused)")
        for name, _ in SECTIONS:
            getattr(self, name).validate(self)
        active = {"label_smoothing": self.smoothing.ls_method != "none",
                  "logit_squeeze": self.smoothing.squeeze_beta > 0,
                  "distillation": self.distillation.enabled}
        for feature, on in active.items():
            flag = FEATURE_FLAGS[feature]
            if feature == "distillation" and not self.distillation.kd_adv_teacher:
                flag = "kd_std_teacher"
            if on and feature not in method.supports:
                supported = [m.name for m in registry.methods() if feature in m.supports]
                raise ConfigError(flag, f"--defense={self.defense} does not apply {feature.replace('_', ' ')}; "
                                        f"methods that do: {', '.join(supported)}")
        for feature in method.requires:
            if not active.get(feature):
                if feature == "label_smoothing":
                    raise ConfigError("ls_method", f"--defense={self.defense} needs a method: "
                                                   f"{', '.join(targets.LS_METHODS)}")
                raise ConfigError(FEATURE_FLAGS[feature], f"--defense={self.defense} needs a positive "
                                                          f"--{FEATURE_FLAGS[feature]}")
        self._refuse_unused_flags()
        self.budget()  # finite, non-negative sizes
        return self

    def unused_flags(self) -> dict:
        """{flag: why this run does not read it} for the flags that matter only together with another one (a
        held-out split makes --val_examples unused, --wrn_depth needs --model=wide_resnet, --attack_steps needs a
        k-step method, ...). Another method's options, --attack_bn_mode of methods without a separate attack, and
        --num_cpu_devices have their own rules above."""
        d, o, s = self.data, self.optimization, self.smoothing
        method, unused = self.method, {}
        # the training attack's --step_size / --attack_steps: read by k-step methods only (`Method.attack_flags`);
        # a preset sets them for PGD and TRADES, so from a flagfile they are recorded, unused, by the others
        for flag in sorted(set(registry.ATTACK_FLAGS) - method.attack_flags):
            if method.clean:
                unused[flag] = (f"--defense={self.defense} trains on clean inputs: there is no training attack "
                                "(robust validation takes --val_attack_steps steps of eps/4)")
            elif flag == "step_size":
                unused[flag] = (f"--defense={self.defense} takes its training step from --{method.step_flag} (see "
                                "--help), not --step_size")
            else:
                unused[flag] = (f"--defense={self.defense} runs no k-step attack (its step: --{method.step_flag}; "
                                "--attack_steps is PGD's and TRADES' k)")
        if d.val_fraction > 0:
            unused["val_examples"] = (f"applies to --val_fraction=0 (curves on test images); with "
                                      f"--val_fraction={d.val_fraction:g} the run validates on its held-out split")
        if self.network.model != "wide_resnet":
            for flag in ("wrn_depth", "wrn_width"):
                unused[flag] = f"applies to --model=wide_resnet, not --model={self.network.model}"
        for flag, schedule in (("lr_decay_epochs", "piecewise"), ("lr_decay_factor", "piecewise"),
                               ("lr_warmup_epochs", "cosine"), ("lr_peak_fraction", "cyclic")):
            if o.lr_schedule != schedule:
                unused[flag] = f"applies to --lr_schedule={schedule}, not --lr_schedule={o.lr_schedule}"
        if o.lr_schedule == "piecewise" and not o.lr_decay_epochs:
            unused["lr_decay_factor"] = "no --lr_decay_epochs are given: the rate is never multiplied by it"
        if o.weight_decay == 0:
            unused["weight_decay_scope"] = "--weight_decay=0: no weights decay"
        augmentation = self.spec.augmentation if d.augmentation == "auto" else d.augmentation
        if augmentation not in ("crop", "crop_flip"):
            unused["crop_padding"] = (f"pads before the random crop; --augmentation={d.augmentation} on "
                                      f"{d.dataset} does not crop")
        if self.spec.tfds_name is None:
            for flag in ("data_dir", "download"):
                unused[flag] = f"--dataset={d.dataset} ships with tfadv (not from tensorflow-datasets)"
        if self.runtime.distribute != "multi_worker":
            unused["cluster_timeout"] = ("applies to --distribute=multi_worker, not "
                                         f"--distribute={self.runtime.distribute}")
        # the kind of BAT labels the run builds: --bat_labels for bat, "adversarial" for Madry-LA, None without
        if self.defense == "bat":
            kind = self.options.labels
        elif self.defense == "pgd":
            kind = "adversarial" if self.options.labels == "bat" else None
        else:  # another method that declares BAT's labels: its use of them is its own
            kind = "any" if "adversarial_labels" in method.supports else None
        if kind not in ("adversarial", "any"):
            for flag in ("bat_beta", "bat_gamma", "bat_top_k"):
                unused[flag] = "applies to BAT's adversarial labels (--defense=bat, or --pgd_labels=bat)"
        if kind not in ("uniform", "any"):
            unused["bat_eps_y"] = "applies to --defense=bat --bat_labels=uniform"
        if s.ls_method == "none":
            unused["ls_alpha"] = "no --ls_method is given (none): there is no label smoothing to weigh"
        if s.ls_method != "bls":
            unused["bls_temperature"] = f"applies to --ls_method=bls, not --ls_method={s.ls_method}"
        if s.squeeze_beta == 0:
            unused["squeeze_reduction"] = "--squeeze_beta=0: there is no logit squeezing"
        if not self.distillation.enabled:
            for flag in ("kd_temperature", "kd_weights"):
                unused[flag] = "applies with a teacher (--kd_adv_teacher or --kd_std_teacher)"
        if not self.averaging.swa:
            for flag in ("swa_start_epoch", "swa_mode", "swa_bn_data"):
                unused[flag] = "applies with --swa"
        unused.update(method.unused_options(self.options))  # the method's own options that depend on each other
        return unused

    def _refuse_unused_flags(self):
        """A flag given directly (or through the Python API) with a value the run would not read is refused; from a
        flagfile (a preset for several settings) it is recorded and unused, as another method's options are. On the
        command line (`explicit` known) a typed flag is refused even at its default value (`--bat_beta=9` without
        BAT is as unused as `--bat_beta=3`); through the Python API, where every field has a value, only a value
        other than the default."""
        defaults = TrainConfig().flat()
        values = self.flat()
        for flag, why in self.unused_flags().items():
            if self.explicit is not None and flag in self.explicit or (
                    self.explicit is None and values[flag] != defaults[flag]):
                raise ConfigError(flag, f"not used by this run: {why}; drop it (a flagfile may set it: recorded, "
                                        "unused)")

    # -- flags.txt -------------------------------------------------------------------------------------------
    def to_flagfile(self) -> str:
        """A flagfile that reproduces the run (without --overwrite)."""
        lines = ["# written by tfadv: `python scripts/train.py --flagfile=<this file>` reproduces the run"]
        for name, value in self.flat().items():
            if name == "overwrite" or value is None:
                continue
            if isinstance(value, bool):
                lines.append(f"--{name}" if value else f"--no{name}")
            elif isinstance(value, list):
                lines.append(f"--{name}={','.join(str(v) for v in value)}")
            else:
                lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"


def read_flagfile(path: str) -> TrainConfig:
    """The TrainConfig a run's flags.txt describes (the inverse of `TrainConfig.to_flagfile`); flags of another
    tfadv version are skipped."""
    return TrainConfig.from_flags(read_flag_values(path), strict=False)


# ----------------------------------------------------------------------------------------------------------
# flags: generated from the fields


def _flag_homes() -> dict:
    """{flag name: ("section", section name, field) or ("method", method name, field)}."""
    homes = {}
    for section, section_type in SECTIONS:
        for field in dataclasses.fields(section_type):
            homes[field.name] = ("section", section, field.name)
    for method in registry.methods():
        for flag, field in method.flags().items():
            homes[flag] = ("method", method.name, field)
    return homes


def _field_of(kind: str, owner: str, name: str) -> dataclasses.Field:
    owner_type = registry.get(owner).options if kind == "method" else dict(SECTIONS)[owner]
    return {f.name: f for f in dataclasses.fields(owner_type)}[name]


def _default(field: dataclasses.Field):
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def _typed(flag: str, value, field: dataclasses.Field):
    """`value` (typed, or a string from a flagfile) as the field's type; ConfigError naming the flag if not."""
    default = _default(field)
    try:
        if isinstance(default, bool):
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        if isinstance(default, list):
            item = field.metadata.get("item", str)
            items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v]
            typed = [item(v) for v in items]
        elif isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        elif isinstance(default, float):
            typed = float(value)
        elif default is None:
            return None if value in (None, "None") else str(value)
        else:
            return str(value)
    except (TypeError, ValueError):
        kind = field.metadata.get("item", type(default)).__name__
        raise ConfigError(flag, f"expected {'comma-separated ' + kind + 's' if isinstance(default, list) else kind}, "
                                f"got {value}") from None
    _finite(flag, typed)  # NaN / inf parse as floats but are no size, rate or weight
    return typed


def flag_names() -> set:
    """The names of every training flag (a training flagfile may hold any of them)."""
    return set(_flag_homes()) | {"defense", "flagfile"}


def define_flags(flag_values=None, methods=None):
    """Defines one absl flag per config field (today's names and defaults) and --defense; `methods` (default:
    every registered one) are the methods whose options get flags and which --defense's help lists (the flags
    reference documents the built-in ones)."""
    from absl import flags

    flag_values = flag_values if flag_values is not None else flags.FLAGS
    methods = registry.methods() if methods is None else methods
    lines = [f"{m.name}" + (f" ({m.description})" if m.description else "") for m in methods]
    flags.DEFINE_string("defense", TrainConfig.defense, "training method: " + ", ".join(lines),
                        flag_values=flag_values)
    fields = [(f, f.name) for _, section_type in SECTIONS for f in dataclasses.fields(section_type)]
    for method in methods:
        fields += [(f, method.flag(f.name)) for f in dataclasses.fields(method.options)]
    for field, name in fields:
        help_text = field.metadata.get("help", name)
        default = _default(field)
        if isinstance(default, bool):
            flags.DEFINE_boolean(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, list):
            flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
        elif isinstance(default, int):
            flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
        elif isinstance(default, float):
            flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
        else:
            flags.DEFINE_string(name, default, help_text, flag_values=flag_values)


def from_parsed_flags(flag_values=None, argv=None) -> TrainConfig:
    """The TrainConfig of parsed absl flags (ConfigError naming the flag for a malformed list entry). `argv`
    (the command line) tells which flags were given directly rather than through a flagfile."""
    from absl import flags

    flag_values = flag_values if flag_values is not None else flags.FLAGS
    explicit = None
    if argv is not None:
        explicit = set()
        for arg in argv[1:]:
            name = arg.lstrip("-").split("=", 1)[0]
            if arg.startswith("-") and name != "flagfile":
                explicit.add(name[2:] if name.startswith("no") and name not in flag_values else name)
    return TrainConfig.from_flags({name: flag_values[name].value for name in flag_names() - {"flagfile"}},
                                  explicit=explicit)


