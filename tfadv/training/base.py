"""The shared base of every training method: a Keras Model that wraps a network and owns its train_step.

A method subclass implements `training_loss(x, labels)`, which returns the mean loss over the local batch and
the logits whose accuracy is logged; the base applies PyTorch-style (coupled) L2 weight decay, loss scaling
for float16, the 1/replicas scaling under `tf.distribute`, and metric bookkeeping.

The outer minimisation is composed once, here (`Trainer.outer_loss`): targets -> cross-entropy -> distillation
-> logit squeezing, from the pure functions of `tfadv.losses` / `tfadv.targets`. A method only says which
logits (and inputs) it trains on and, if it has them, its own targets or its own per-example cross-entropy;
every feature of the run (--ls_method, --squeeze_beta, the distillation teachers) is then applied by the same
code for every method, so none can be dropped.

Every trainer takes the same constructor: `Trainer(network, attack, options=None, *, weight_decay=5e-4,
weight_decay_scope="all", smoothing=SmoothingConfig(), distillation=None, label_adversary=None, seed=0,
eps_warmup_updates=0, batch_size=None)`; `options` is the method's own `Options` (its module's dataclass,
registered with the method in `tfadv.training.registry`).

Every random draw of a train_step is keyed (`Trainer.example_keys`): a hash of the run seed, the optimizer's
iteration counter (which a checkpoint restores), the replica and the example's position in the batch, never a
stateful TensorFlow generator, so a run that is killed and resumed continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Optional

import keras
import tensorflow as tf

from tfadv import attacks, losses, targets
from tfadv.attacks import rng
from tfadv.training import registry

BN_MODES = ("eval", "train")
WEIGHT_DECAY_SCOPES = ("all", "kernels")

# The salts of the keyed training draws, one per kind of draw (a trainer never shares a stream between two): a
# method names its kind of draw (`salt("<method>_start")`) and needs no constant of its own here. The three
# below keep the numbers they had before salts were derived from names, so those methods' draws are unchanged.
_SALTS_BEFORE_NAMES = {"attack_start": 1, "trades_start": 2, "ssat_start": 3}


def salt(name: str) -> int:
    """The salt of the kind of training draw `name`: a stable 32-bit hash of the name (CRC-32, the same in every
    process and version), or its number from before salts were named."""
    if name in _SALTS_BEFORE_NAMES:
        return _SALTS_BEFORE_NAMES[name]
    value = zlib.crc32(name.encode("utf-8"))
    if value in _SALTS_BEFORE_NAMES.values():
        raise ValueError(f"the salt of {name!r} collides with a numbered one; name the draw otherwise")
    return value


SALT_ATTACK_START = salt("attack_start")  # the training attack's random start (PGD, FGSM-RS, BAT)
SALT_TRADES_START = salt("trades_start")  # TRADES' 0.001 * N(0, 1) start
SALT_SSAT_START = salt("ssat_start")      # SSAT's per-minibatch delta


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The training attack. eps and step_size are fractions of the [0,1] pixel range."""

    eps: float
    step_size: float
    steps: int
    norm: str = "linf"
    random_start: bool = True
    # "eval": BatchNorm in inference mode during the attack (BAT / label-smoothing / ART default);
    # "train": batch statistics, and moving statistics updated, as Madry / Free-AT code does.
    bn_mode: str = "eval"

    def __post_init__(self):
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"attack_bn_mode must be one of {BN_MODES}, got {self.bn_mode!r}")
        if self.norm not in attacks.NORMS:
            raise ValueError(f"norm must be one of {attacks.NORMS}, got {self.norm!r}")


def unpack(data):
    """(images float32, labels int32) from a batch; sample weights are not used by any method."""
    x, labels, _ = keras.utils.unpack_x_y_sample_weight(data)
    return tf.cast(x, tf.float32), tf.cast(labels, tf.int32)


@dataclasses.dataclass(frozen=True)
class SmoothingConfig:
    """The outer minimisation's targets and logit penalty (papers 003, 004), shared by every method.

    `method` "none" trains on hard labels; otherwise one of `targets.LS_METHODS` with mass `alpha` (ALS, BLS
    and SBLS read the logits of the very forward pass being trained on, under stop_gradient).
    `squeeze_beta` > 0 adds logit squeezing.
    """

    method: str = "none"
    alpha: float = 0.0
    temperature: float = 0.001
    squeeze_beta: float = 0.0
    squeeze_reduction: str = "frobenius"

    def __post_init__(self):
        if self.method != "none" and self.method not in targets.LS_METHODS:
            raise ValueError(f"ls_method must be none or one of {targets.LS_METHODS}, got {self.method!r}")
        if self.squeeze_reduction not in losses.SQUEEZE_REDUCTIONS:
            raise ValueError(f"squeeze_reduction must be one of {losses.SQUEEZE_REDUCTIONS}")


BAT_LABELS = ("adversarial", "uniform", "hard")


@dataclasses.dataclass(frozen=True)
class LabelAdversary:
    """BAT's label choice for the weight update (paper 002), shared by BAT and PGD's Madry-LA
    (--pgd_labels=bat). `adversarial`: Eq. 14 with eps_y from Eq. 18 (`beta`, `gamma`, optional `top_k`),
    from the clean probabilities; `uniform`: a fixed budget `eps_y` spread evenly over the wrong classes
    (Eq. 15); `hard`: one-hot. The run config builds it (kind "adversarial", beta resolved for the class count)
    from --bat_beta/--bat_gamma/--bat_eps_y/--bat_top_k; BAT sets `kind` from its --bat_labels."""

    kind: str = "adversarial"
    beta: float = 9.0
    gamma: float = 0.01
    eps_y: float = 0.5
    top_k: Optional[int] = None

    def __post_init__(self):
        if self.kind not in BAT_LABELS:
            raise ValueError(f"labels must be one of {BAT_LABELS}, got {self.kind!r}")

    def targets(self, labels, clean_logits, num_classes):
        one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
        if self.kind == "hard":
            return one_hot
        if self.kind == "uniform":
            return targets.sls(one_hot, self.eps_y)
        probabilities = tf.nn.softmax(tf.cast(clean_logits, tf.float32), axis=-1)
        return targets.bat(one_hot, probabilities, self.beta, self.gamma, self.top_k)


def one_of(flag: str, value, allowed) -> None:
    """Raises `registry.OptionError` unless `value` is in `allowed` (the run config's wording)."""
    if value not in allowed:
        raise registry.OptionError(flag, f"unknown value {value!r}; valid: {', '.join(allowed)}")


def not_negative(flag: str, value) -> None:
    if value < 0:
        raise registry.OptionError(flag, f"must not be negative, got {value}")


def positive_integer(flag: str, value) -> None:
    if value < 1:
        raise registry.OptionError(flag, f"must be a positive integer, got {value}")


class Distillation:
    """Self-teacher distillation (paper 001): frozen teachers, called in inference mode on the very inputs the
    student trains on (its adversarial examples). `teachers` maps name -> (logits_fn, weight); `ce_weight`
    scales the student's own cross-entropy. Paper weights: CE 0.25, robust 0.5, standard 0.25, T = 2."""

    def __init__(self, teachers: dict, ce_weight: float, temperature: float = 2.0):
        if temperature <= 0:
            raise ValueError(f"kd_temperature must be positive, got {temperature}")
        self.teachers = teachers
        self.ce_weight = float(ce_weight)
        self.temperature = float(temperature)

    def loss(self, inputs, student_logits):
        total = 0.0
        for logits_fn, weight in self.teachers.values():
            if weight:
                teacher_logits = tf.stop_gradient(logits_fn(inputs))
                total += weight * tf.reduce_mean(losses.distillation(teacher_logits, student_logits, self.temperature))
        return total


class Trainer(keras.Model):
    """Base class: `network` is the Keras model that is trained and exported (logits out)."""

    # the method's own hyperparameters (a subclass sets its module's `Options`)
    Options = registry.NoOptions

    def __init__(self, network: keras.Model, attack: AttackConfig, options=None, *, weight_decay: float = 5e-4,
                 weight_decay_scope: str = "all", smoothing: SmoothingConfig = SmoothingConfig(),
                 distillation: "Distillation" = None, label_adversary: Optional[LabelAdversary] = None,
                 seed: int = 0, eps_warmup_updates: int = 0, batch_size: Optional[int] = None, **kwargs):
        """The same keywords for every method (the run config passes all of them; a method ignores what it
        does not use: `label_adversary` is read by BAT and by PGD with --pgd_labels=bat, `batch_size` by Free-AT).

        `options` is the method's `Options` (None: its defaults). `seed` keys every random draw of the
        training attacks (with the optimizer's iteration, the replica and the example's position).
        `weight_decay_scope` "all" decays every trainable variable, as torch.optim.SGD(weight_decay=...) does
        in most papers' code; "kernels" only conv/dense kernels (not biases, not BatchNorm gamma/beta), as BAT's
        official code does. `eps_warmup_updates` > 0 grows the training attack's eps and step size linearly
        over that many optimizer updates (see `attack`). `smoothing` and `distillation` enter the outer loss
        (`outer_loss`); `label_adversary` is BAT's label section (None: its defaults, beta for the class count).
        """
        if options is None:
            options = self.Options()
        if not isinstance(options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__module__}.{self.Options.__qualname__}, "
                            f"got {type(options).__name__}")
        if weight_decay_scope not in WEIGHT_DECAY_SCOPES:
            raise ValueError(f"weight_decay_scope must be one of {WEIGHT_DECAY_SCOPES}, got {weight_decay_scope!r}")
        if eps_warmup_updates < 0:
            raise ValueError(f"eps_warmup_updates must not be negative, got {eps_warmup_updates}")
        super().__init__(name=kwargs.pop("name", type(self).__name__.lower()), **kwargs)
        self.network = network
        self.options = options
        self.eps_warmup_updates = int(eps_warmup_updates)
        self.attack = attack
        self.smoothing = smoothing
        self.distillation = distillation
        self.weight_decay = float(weight_decay)
        self.weight_decay_scope = weight_decay_scope
        self.seed = int(seed)
        self.batch_size = batch_size
        self.num_classes = int(network.output_shape[-1])
        self._label_adversary = label_adversary
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def label_adversary_of_kind(self, kind: str) -> LabelAdversary:
        """The run's `label_adversary` (default: beta for this network's class count) with label `kind`."""
        base = self._label_adversary
        if base is None:
            base = LabelAdversary(beta=targets.bat_beta_default(self.num_classes))
        return dataclasses.replace(base, kind=kind)

    @property
    def attack(self) -> AttackConfig:
        """The training attack of the current step. With `eps_warmup_updates` = W, eps and step size are
        scaled by min(1, (t + 1) / W) at optimizer iteration t (never 0, so eps-relative quantities such as
        SSAT's lambda(delta) stay defined); keyed on the iteration counter, so a resumed run continues the ramp
        exactly."""
        if not self.eps_warmup_updates:
            return self._attack_config
        scale = tf.minimum(1.0, tf.cast(self._iteration() + 1, tf.float32) / float(self.eps_warmup_updates))
        config = self._attack_config
        return dataclasses.replace(config, eps=config.eps * scale, step_size=config.step_size * scale)

    @attack.setter
    def attack(self, config: AttackConfig):
        self._attack_config = config

    # -- pieces for subclasses ---------------------------------------------------------------------------

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def attack_logits(self, x):
        """Logits as the training attack sees them; BatchNorm mode set by `--attack_bn_mode`."""
        return self.network(x, training=self.attack.bn_mode == "train")

    @property
    def attack_independent(self) -> bool:
        """Whether the training attack's forward pass treats examples independently (inference-mode BatchNorm);
        in training mode the batch statistics couple them, which the attacks' gradient scaling must know."""
        return self.attack.bn_mode != "train"

    def eval_logits(self, x):
        """Logits with BatchNorm in inference mode (targets, labels and evaluation)."""
        return self.network(x, training=False)

    def example_keys(self, batch_size, salt: int = 0):
        """[batch_size] int64 keys for the training draws of this step (`tfadv.attacks.rng`): a hash of the
        run seed, `salt` (one per kind of draw), the optimizer's iteration counter at the time of the call and
        the example's position in the global batch (replica id * local batch + local position). Nothing
        depends on a stateful generator, so a resumed run (iterations restored) draws the same numbers."""
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        batch = tf.cast(batch_size, tf.int64)
        positions = tf.cast(replica, tf.int64) * batch + tf.range(batch, dtype=tf.int64)
        return rng.fold(rng.example_keys(positions, self.seed, salt), self._iteration())

    def _iteration(self):
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None:
            return tf.constant(0, tf.int64)
        return tf.cast(optimizer.iterations, tf.int64)

    def training_loss(self, x, labels):
        """Returns (mean loss over the local batch, logits for the accuracy metric)."""
        raise NotImplementedError

    def soft_targets(self, labels, logits):
        """The targets of the outer minimisation [B, K] (one-hot unless label smoothing is on)."""
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        s = self.smoothing
        if s.method == "none":
            return one_hot
        return targets.smooth(s.method, one_hot, logits, s.alpha, s.temperature)

    def outer_loss(self, labels, logits, inputs=None, targets=None, per_example_ce=None, distill_on=None,
                   robust_term=None):
        """THE outer minimisation of every method, composed here once (mean over the local batch):

        1. targets: `targets` [B, K] when the method supplies its own (BAT's / Madry-LA's adversarial labels,
           SSAT's adaptive labels; these methods do not take --ls_method, and a smoothing is refused here
           rather than dropped), else `soft_targets(labels, logits)` (one-hot, or --ls_method's targets from
           `logits` under stop_gradient);
        2. cross-entropy per example: `per_example_ce(targets, logits)` -> [B] when the method has its own
           (SSAT's Eq. 21: (1 + beta) CE(z, y) - beta CE(z, y')), else the soft-target cross-entropy (on hard
           labels without any targets: the integer-label CE); its batch mean `ce`, plus `robust_term` when the
           method has a term of its own (TRADES' beta * KL): together the method's loss L of paper 001 Eq. 1;
        3. distillation, when teachers are set: `ce_weight * L + sum_t weight_t * mean KD(teacher_t(x), z)`
           (Eq. 1: ce_weight = 1 - the teachers' weights)
           on `distill_on` = (inputs, logits) (default: `inputs` and `logits`; TRADES passes its adversarial
           pair while its CE is on the clean logits); `inputs` are the images the student logits came from;
        4. logit squeezing of `logits` (--squeeze_beta), added last.
        """
        s = self.smoothing
        if targets is not None and s.method != "none":
            raise ValueError(f"{type(self).__name__} trains on its own targets; --ls_method={s.method} does not "
                             "apply to it")
        if targets is None and per_example_ce is None and s.method == "none":
            loss = tf.reduce_mean(losses.hard_cross_entropy(labels, logits))
        else:
            if targets is None:
                targets = self.soft_targets(labels, logits)
            ce = losses.soft_cross_entropy if per_example_ce is None else per_example_ce
            loss = tf.reduce_mean(ce(targets, logits))
        if robust_term is not None:
            loss += robust_term
        if self.distillation is not None:
            student_inputs, student_logits = (inputs, logits) if distill_on is None else distill_on
            if student_inputs is None:
                raise ValueError("distillation needs the inputs the student's logits came from")
            loss = self.distillation.ce_weight * loss + self.distillation.loss(student_inputs, student_logits)
        if s.squeeze_beta:
            loss += losses.logit_squeeze(logits, s.squeeze_beta, s.squeeze_reduction)
        return loss

    # -- Keras plumbing ----------------------------------------------------------------------------------

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def apply_update(self, loss, tape, extra_sources=()):
        """Gradient step on the network's weights; also returns d loss / d extra_sources (unscaled).

        Loss scaling (float16) and the 1/replicas factor enter as the tape's output gradient, so nothing has
        to be recorded after the forward pass.
        """
        variables = self.network.trainable_variables
        scale = self._gradient_scale()
        gradients = tape.gradient(loss, list(variables) + list(extra_sources), output_gradients=scale)
        weight_gradients = gradients[: len(variables)]
        if self.weight_decay:
            # Coupled L2 as in torch.optim.SGD(weight_decay=...), which the papers' code uses; it carries the
            # same scale, since the optimizer divides by the loss scale and sums over replicas.
            weight_gradients = [
                g + tf.cast(self.weight_decay * scale, g.dtype) * tf.cast(v, g.dtype) if self._decays(v) else g
                for g, v in zip(weight_gradients, variables)
            ]
        self.optimizer.apply(weight_gradients, variables)
        return [g / scale for g in gradients[len(variables):]]

    def _decays(self, variable) -> bool:
        """Whether weight decay applies to `variable` under `weight_decay_scope` ("kernels": the variables
        named like conv/dense kernels, e.g. `stage1_block1_conv1/kernel`, `classifier/kernel`)."""
        if self.weight_decay_scope == "all":
            return True
        return getattr(variable, "path", variable.name).split("/")[-1].split(":")[0].endswith("kernel")

    def _gradient_scale(self):
        factor = tf.constant(1.0 / tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        dynamic = getattr(self.optimizer, "dynamic_scale", None)
        return factor if dynamic is None else tf.cast(dynamic, tf.float32) * factor

    def train_step(self, data):
        x, labels = unpack(data)
        with tf.GradientTape() as tape:
            loss, logits = self.training_loss(x, labels)
        self.apply_update(loss, tape)
        return self._update_metrics(loss, labels, logits)

    def _update_metrics(self, loss, labels, logits):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(labels, tf.cast(logits, tf.float32))
        return {m.name: m.result() for m in self.metrics}

    def test_step(self, data):
        x, labels = unpack(data)
        logits = self.eval_logits(x)
        loss = tf.reduce_mean(attacks.cross_entropy(tf.cast(logits, tf.float32), labels))
        return self._update_metrics(loss, labels, logits)

    def extra_state(self) -> dict:
        """Variables besides the network and optimizer that a checkpoint must keep (e.g. Free-AT's delta)."""
        return {}
