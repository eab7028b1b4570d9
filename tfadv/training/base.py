"""The shared base of every training method: a Keras Model that wraps a network and owns its train_step.

A method subclass implements `training_loss(x, labels)`, which returns the mean loss over the local batch and
the logits whose accuracy is logged; the base applies PyTorch-style (coupled) L2 weight decay, loss scaling
for float16, the 1/replicas scaling under `tf.distribute`, and metric bookkeeping.

Every random draw of a train_step is keyed (`Trainer.example_keys`): a hash of the run seed, the optimizer's
iteration counter (which a checkpoint restores), the replica and the example's position in the batch, never a
stateful TensorFlow generator, so a run that is killed and resumed continues bit-identically.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfadv import attacks, losses, targets
from tfadv.attacks import rng

BN_MODES = ("eval", "train")
WEIGHT_DECAY_SCOPES = ("all", "kernels")

# Salts of the keyed training draws, one per kind of draw (a trainer never shares a stream between two).
SALT_ATTACK_START = 1  # the training attack's random start (PGD, FGSM-RS, BAT)
SALT_TRADES_START = 2  # TRADES' 0.001 * N(0, 1) start
SALT_SSAT_START = 3    # SSAT's per-minibatch delta


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

    def __init__(self, network: keras.Model, attack: AttackConfig, weight_decay: float = 5e-4,
                 smoothing: SmoothingConfig = SmoothingConfig(), distillation: "Distillation" = None,
                 seed: int = 0, weight_decay_scope: str = "all", eps_warmup_updates: int = 0, **kwargs):
        """`seed` keys every random draw of the training attacks (with the optimizer's iteration, the replica
        and the example's position). `weight_decay_scope` "all" decays every trainable variable, as
        torch.optim.SGD(weight_decay=...) does in most papers' code; "kernels" only conv/dense kernels (not
        biases, not BatchNorm gamma/beta), as BAT's official code does. `eps_warmup_updates` > 0 grows the
        training attack's eps and step size linearly over that many optimizer updates (see `attack`)."""
        if weight_decay_scope not in WEIGHT_DECAY_SCOPES:
            raise ValueError(f"weight_decay_scope must be one of {WEIGHT_DECAY_SCOPES}, got {weight_decay_scope!r}")
        if eps_warmup_updates < 0:
            raise ValueError(f"eps_warmup_updates must not be negative, got {eps_warmup_updates}")
        super().__init__(name=kwargs.pop("name", type(self).__name__.lower()), **kwargs)
        self.network = network
        self.eps_warmup_updates = int(eps_warmup_updates)
        self.attack = attack
        self.smoothing = smoothing
        self.distillation = distillation
        self.weight_decay = float(weight_decay)
        self.weight_decay_scope = weight_decay_scope
        self.seed = int(seed)
        self.num_classes = int(network.output_shape[-1])
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

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

    def outer_loss(self, labels, logits, inputs=None):
        """Mean cross-entropy against `soft_targets`, plus logit squeezing when enabled, plus the distillation
        terms on `inputs` (the images the logits came from) when teachers are set."""
        if self.smoothing.method == "none":
            loss = tf.reduce_mean(losses.hard_cross_entropy(labels, logits))
        else:
            loss = tf.reduce_mean(losses.soft_cross_entropy(self.soft_targets(labels, logits), logits))
        if self.distillation is not None:
            loss = self.distillation.ce_weight * loss + self.distillation.loss(inputs, logits)
        if self.smoothing.squeeze_beta:
            loss += losses.logit_squeeze(logits, self.smoothing.squeeze_beta, self.smoothing.squeeze_reduction)
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
