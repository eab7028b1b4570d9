"""Command-line plumbing shared by the scripts: absl flag definitions, one-line errors with exit code 2."""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags

from tfadv import data, models, training
from tfadv.callbacks import LR_SCHEDULES
from tfadv.config import DISTRIBUTE_MODES, JIT_MODES, PRECISIONS, TrainConfig

USAGE_ERROR = 2


def quiet_tensorflow():
    """Keeps TensorFlow's C++ start-up chatter out of the user's terminal (set before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_logging():
    """TensorFlow's Python INFO/WARNING chatter off; our own progress lines stay."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def fail(message: str, code: int = USAGE_ERROR):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags_or_exit(argv):
    """An `app.run(flags_parser=...)` parser: a bad flag is one line on stderr and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(str(error))


def training_flagfile_parser(argv):
    """An `app.run(flags_parser=...)` parser for scripts that define only their own flags but accept a training
    flagfile (e.g. `--flagfile=flags/cifar10.cfg` for the dataset and eps): each `--flagfile=PATH` is replaced,
    in place, by the `--name=value` lines of that file (nested flagfiles followed) for the flags this script
    defines; training-only flags in it are skipped; an unknown name is still an error. Flags after
    `--flagfile` override it, as with absl's own flagfiles."""
    from tfadv import config as config_lib

    defined = set(flags.FLAGS)
    training_names = config_lib.flag_names()
    expanded = [argv[0]]
    for arg in argv[1:]:
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or name != "flagfile" or not equals:
            expanded.append(arg)
            continue
        try:
            values = config_lib.read_flag_values(value)
        except OSError as error:
            fail(f"--flagfile: cannot read {value}: {error.strerror or error}")
        except config_lib.ConfigError as error:
            fail(str(error))
        for key, raw in values.items():
            if key in defined:
                expanded.append(f"--{key}={raw}")
            elif key not in training_names:
                fail(f"--flagfile={value}: unknown flag --{key}")
    return parse_flags_or_exit(expanded)


def define_train_flags():
    d = TrainConfig()
    f = flags
    f.DEFINE_string("defense", d.defense, f"training method: {', '.join(training.DEFENSES)}")
    f.DEFINE_string("dataset", d.dataset, f"dataset: {', '.join(data.DATASETS)}")
    f.DEFINE_string("model", d.model, f"network: {', '.join(models.MODEL_NAMES)}")
    f.DEFINE_integer("wrn_depth", d.wrn_depth, "wide_resnet depth (6n+4: 28, 34)")
    f.DEFINE_integer("wrn_width", d.wrn_width, "wide_resnet width factor (10, 4)")
    f.DEFINE_integer("epochs", d.epochs, "training epochs (passes over the training split)")
    f.DEFINE_integer("batch_size", d.batch_size, "global minibatch size")
    f.DEFINE_float("lr", d.lr, "base (piecewise, cosine) or peak (cyclic) learning rate")
    f.DEFINE_string("lr_schedule", d.lr_schedule, f"learning-rate schedule: {', '.join(LR_SCHEDULES)}")
    f.DEFINE_list("lr_decay_epochs", [], "piecewise: epochs at which the rate is multiplied by --lr_decay_factor")
    f.DEFINE_float("lr_decay_factor", d.lr_decay_factor, "piecewise: the factor")
    f.DEFINE_float("lr_warmup_epochs", d.lr_warmup_epochs, "cosine: linear warm-up epochs")
    f.DEFINE_float("lr_peak_fraction", d.lr_peak_fraction, "cyclic: where in the run the rate peaks, in (0,1)")
    f.DEFINE_string("optimizer", d.optimizer, "sgd (with --momentum; most papers' code) or adam (Madry et al.'s "
                    "MNIST model: --optimizer=adam --lr=1e-4 --batch_size=50)")
    f.DEFINE_float("momentum", d.momentum, "SGD momentum")
    f.DEFINE_float("weight_decay", d.weight_decay, "L2 weight decay (coupled, as torch.optim.SGD)")
    f.DEFINE_string("weight_decay_scope", d.weight_decay_scope, "which weights decay: all (torch.optim.SGD in "
                    "most papers' code) or kernels (conv/dense kernels only, as BAT's and Madry's code)")
    f.DEFINE_float("eps", d.eps, "perturbation radius in the dataset's pixel levels (8 = 8/255 on CIFAR)")
    f.DEFINE_float("eps_warmup_epochs", d.eps_warmup_epochs, "training eps (and step size) grow linearly from 0 "
                   "to --eps over this many epochs (common for MNIST-scale eps); 0 = off")
    f.DEFINE_float("step_size", d.step_size, "attack step size in pixel levels (fgsm_rs: 1.25 eps; free: eps)")
    f.DEFINE_integer("attack_steps", d.attack_steps, "steps of the training attack (PGD-k, TRADES-k)")
    f.DEFINE_string("norm", d.norm, "threat model of the training attack: linf, l2 (l1 for free/fgsm_rs/trades)")
    f.DEFINE_string("attack_bn_mode", d.attack_bn_mode,
                    "BatchNorm during the training attack: eval (inference statistics) or train (Madry/Free-AT)")
    f.DEFINE_integer("free_replays", d.free_replays, "free: replays m of each minibatch")
    f.DEFINE_float("trades_beta", d.trades_beta, "trades: weight of the KL term")
    f.DEFINE_string("bat_attack", d.bat_attack, "bat: mc (targeted most confusing), ll (least likely), fgsm "
                    "(untargeted)")
    f.DEFINE_boolean("bat_random_start", d.bat_random_start, "bat: uniform random start in the eps-ball")
    f.DEFINE_string("bat_labels", d.bat_labels, "bat: adversarial (Eq. 14/18), uniform (R-MC-LS, --bat_eps_y), hard")
    f.DEFINE_float("bat_beta", d.bat_beta, "bat: beta of Eq. 16-18 (0 = 9 for <= 10 classes, 11 for more)")
    f.DEFINE_float("bat_gamma", d.bat_gamma, "bat: gamma of Eq. 14")
    f.DEFINE_float("bat_eps_y", d.bat_eps_y, "bat: fixed label budget for --bat_labels=uniform")
    f.DEFINE_integer("bat_top_k", d.bat_top_k, "bat: spread eps_y over the k wrong classes of largest loss "
                     "(LA9 of section 5.4); 0 = all")
    f.DEFINE_float("bat_step_size", d.bat_step_size, "bat: step size in pixel levels (0 = eps)")
    f.DEFINE_string("pgd_labels", d.pgd_labels, "pgd: hard, or bat (Madry-LA: BAT's adversarial labels)")
    f.DEFINE_integer("ssat_replays", d.ssat_replays, "ssat: replays m per minibatch (8 ResNet-18, 4 WRN)")
    f.DEFINE_float("ssat_gamma", d.ssat_gamma, "ssat: delta re-initialised uniformly in +-gamma*eps per minibatch")
    f.DEFINE_float("ssat_lambda0", d.ssat_lambda0, "ssat: smoothing lambda at the clean point (Eq. 7)")
    f.DEFINE_float("ssat_lambda1", d.ssat_lambda1, "ssat: smoothing lambda at ||delta|| = eps (0.3 ResNet-18, 0.4 WRN)")
    f.DEFINE_float("ssat_target_beta", d.ssat_target_beta, "ssat: target regularisation beta (Eq. 21-22; "
                   "0.2 ResNet-18, 0.1 WRN; 0 = off)")
    f.DEFINE_float("ssat_step_size", d.ssat_step_size, "ssat: delta step in pixel levels (0 = eps / m)")
    f.DEFINE_boolean("ssat_boundary_split", d.ssat_boundary_split,
                     "ssat: hard labels for misclassified perturbed points (off = smooth every point)")
    f.DEFINE_boolean("ssat_adaptive", d.ssat_adaptive, "ssat: lambda falls with ||delta|| (off = constant lambda1)")
    f.DEFINE_boolean("swa", d.swa, "stochastic weight averaging (paper 001): evaluation and export use the average")
    f.DEFINE_integer("swa_start_epoch", d.swa_start_epoch, "first epoch averaged (0: 5 after the first LR decay)")
    f.DEFINE_string("swa_mode", d.swa_mode, "swa, or iswa (training continues from the average, paper 001 A1.6)")
    f.DEFINE_string("kd_adv_teacher", d.kd_adv_teacher, "distillation: the robust self-teacher (a tfadv run dir or "
                    "a SavedModel) — paper 001")
    f.DEFINE_string("kd_std_teacher", d.kd_std_teacher, "distillation: the standard (naturally trained) teacher")
    f.DEFINE_float("kd_temperature", d.kd_temperature, "distillation temperature T")
    f.DEFINE_list("kd_weights", [str(w) for w in d.kd_weights], "weights of CE, robust teacher, standard teacher "
                  "(paper 0.25,0.5,0.25; official code 0.3,0.6,0.1)")
    f.DEFINE_string("ls_method", d.ls_method, "label smoothing of the outer minimisation: none, uniform "
                    "(y - a(y - 1/K)), sls, als, bls, sbls (paper 003); also for pgd, fgsm_rs, free, trades")
    f.DEFINE_float("ls_alpha", d.ls_alpha, "label-smoothing mass alpha in [0, 1]")
    f.DEFINE_float("bls_temperature", d.bls_temperature, "BLS temperature T (paper 003 default 0.001)")
    f.DEFINE_float("squeeze_beta", d.squeeze_beta, "logit squeezing weight beta (paper 004); 0 = off")
    f.DEFINE_string("squeeze_reduction", d.squeeze_reduction,
                    "logit squeezing: frobenius (||Z||_F of the batch, paper 004 Eq. 5) or mean_l2")
    f.DEFINE_float("noise_sigma", d.noise_sigma, "Gaussian noise on training images, std in pixel levels "
                   "(20 = 20/255 on CIFAR), clipped to [0, 1]; 0 = off")
    f.DEFINE_string("augmentation", d.augmentation, "training augmentation: auto (the dataset's: crop_flip for "
                    "CIFAR, crop for SVHN, none for digits/MNIST), none, crop (pad-4 random crop), crop_flip")
    f.DEFINE_float("val_fraction", d.val_fraction, "held-out share of the training split in [0,1) that selects the best checkpoints (0.1 = paper 001's "
                   "9:1); 0 = none: curves on test images, no checkpoint selection")
    f.DEFINE_integer("train_examples", d.train_examples, "train on the first N examples of the training split "
                     "(after the validation split; -1: all) — a small set makes robust overfitting easy to see")
    f.DEFINE_integer("val_every", d.val_every, "robust validation every N epochs (and at the last)")
    f.DEFINE_integer("val_examples", d.val_examples, "without --val_fraction: validate on this many test examples")
    f.DEFINE_integer("val_attack_steps", d.val_attack_steps, "PGD steps of the robust validation")
    f.DEFINE_integer("eval_attack_steps", d.eval_attack_steps, "PGD steps of the final test evaluation")
    f.DEFINE_integer("eval_examples", d.eval_examples, "final evaluation on the first N test examples (-1: all)")
    f.DEFINE_integer("seed", d.seed, "random seed (data order, augmentation, initialisation, attacks)")
    f.DEFINE_string("output_dir", d.output_dir, "the run's directory")
    f.DEFINE_string("data_dir", None, "tensorflow-datasets directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    f.DEFINE_boolean("download", d.download, "let tensorflow-datasets download a missing dataset (off by default: offline machines would wait "
                      "minutes for network retries)")
    f.DEFINE_boolean("overwrite", d.overwrite, "replace a finished run in --output_dir")
    f.DEFINE_string("jit_compile", d.jit_compile, f"XLA for train_step: {', '.join(JIT_MODES)}")
    f.DEFINE_string("distribute", d.distribute, f"distribution: {', '.join(DISTRIBUTE_MODES)}")
    f.DEFINE_integer("num_cpu_devices", d.num_cpu_devices, "split the CPU into N logical devices (mirrored tests)")
    f.DEFINE_string("mixed_precision", d.mixed_precision, f"compute dtype: {', '.join(PRECISIONS)}")


def train_config_from_flags() -> TrainConfig:
    """Builds the TrainConfig from parsed flags; a non-integer --lr_decay_epochs entry is a usage error."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        value = flags.FLAGS[field.name].value
        if field.name in ("lr_decay_epochs", "kd_weights"):
            kind = int if field.name == "lr_decay_epochs" else float
            try:
                value = [kind(v) for v in value]
            except ValueError:
                fail(f"--{field.name}: expected comma-separated {kind.__name__}s, got {','.join(value)}")
        values[field.name] = value
    return TrainConfig(**values)
