"""SSAT — surface-smoothing adversarial training (paper 000, Alg. 1, App. C and J), read as DESIGN item 1 says.

Per minibatch, delta is re-initialised uniformly in the gamma*eps-ball of the threat norm (l-inf: +-gamma*eps
per coordinate). In each of m replays, one forward pass at
x + delta (BatchNorm in training mode, as Free-AT) feeds two backward passes:
  * theta descends the adaptive-label loss (Eq. 6-7, with the target regularisation of Eq. 21):
      perturbed points already misclassified (B_O) keep hard labels; the others get y - lambda(delta)(y - 1/K)
      with lambda(delta) = lambda0 + (lambda1 - lambda0) * min(||delta||/eps, 1);
      loss = (1 + beta) CE(z, y_smooth) - beta CE(z, y') with y' the most likely wrong class;
  * delta ascends the same objective with *hard* labels (Eq. 5 and 22: the attacker does not know the
    smoothing), one signed step of eps/m, then projection and clipping.
Ablations (paper Fig. 6): `boundary_split=False` smooths every point, `adaptive=False` uses a constant
lambda = lambda1, `target_beta=0` drops the target term; with all three off and lambda1 = 0 this is Free-AT
with delta re-initialised per minibatch (with lambda1 > 0 every point keeps uniform smoothing lambda1).
The theta loss is the composed outer loss (`Trainer.outer_loss`) with SSAT's adaptive labels as its targets and
Eq. 21 as its per-example cross-entropy, so --squeeze_beta (on the logits at x + delta) and the distillation
teachers (on x + delta) apply on top; --ls_method does not (the adaptive labels replace it). The attack's
objective stays Eq. 22 with hard labels.
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import tensorflow as tf

from tfadv import attacks, losses
from tfadv.attacks.ops import scaled_input_gradient
from tfadv.training import registry
from tfadv.training.base import SALT_SSAT_START, Trainer, not_negative, positive_integer, unpack
from tfadv.training.registry import option


@dataclasses.dataclass(frozen=True)
class Options:
    replays: int = option(8, "ssat: replays m per minibatch (8 ResNet-18, 4 WRN)")
    gamma: float = option(0.3, "ssat: delta re-initialised uniformly in +-gamma*eps per minibatch")
    lambda0: float = option(1.0, "ssat: smoothing lambda at the clean point (Eq. 7)")
    lambda1: float = option(0.3, "ssat: smoothing lambda at ||delta|| = eps (0.3 ResNet-18, 0.4 WRN)")
    target_beta: float = option(0.2, "ssat: target regularisation beta (Eq. 21-22; 0.2 ResNet-18, 0.1 WRN; "
                                     "0 = off)")
    step_size: float = option(0.0, "ssat: delta step in pixel levels (0 = eps / m)")
    boundary_split: bool = option(True, "ssat: hard labels for misclassified perturbed points (off = smooth "
                                        "every point)")
    adaptive: bool = option(True, "ssat: lambda falls with ||delta|| (off = constant lambda1)")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        positive_integer("ssat_replays", self.replays)
        if not 0.0 <= self.lambda1 <= self.lambda0 <= 1.0:
            raise registry.OptionError("ssat_lambda1", f"SSAT needs 0 <= lambda1 <= lambda0 <= 1 (Eq. 7), got "
                                                       f"lambda0={self.lambda0}, lambda1={self.lambda1}")
        for name in ("gamma", "target_beta", "step_size"):
            not_negative(f"ssat_{name}", getattr(self, name))
        if self.gamma > 1:
            raise registry.OptionError("ssat_gamma", f"must be in [0, 1], got {self.gamma}")

    def validate(self, run) -> None:
        self.check()
        if run.defense == "ssat" and run.smoothing.ls_method != "none":
            raise registry.OptionError("ls_method", "SSAT builds its own adaptive labels; --ls_method does not apply")


def smoothing_degree(delta, eps, norm, config: Options):
    """lambda(delta) per example (Eq. 7): lambda0 at the clean point, falling linearly to lambda1 at ||delta|| = eps."""
    if not config.adaptive:
        return tf.fill([tf.shape(delta)[0]], tf.constant(config.lambda1, tf.float32))
    ratio = tf.minimum(attacks.perturbation_norm(delta, norm) / eps, 1.0)
    return config.lambda0 + (config.lambda1 - config.lambda0) * ratio


def adaptive_labels(labels, logits, delta, eps, norm, config: Options, num_classes):
    """Eq. 6: hard labels on misclassified perturbed points (B_O), adaptive uniform smoothing inside (B_I)."""
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    lam = smoothing_degree(delta, eps, norm, config)[:, None]
    smooth = one_hot - lam * (one_hot - 1.0 / num_classes)
    if not config.boundary_split:
        return tf.stop_gradient(smooth)
    outside = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)[:, None]
    return tf.stop_gradient(tf.where(outside, one_hot, smooth))


def regularised_loss(soft_targets, logits, wrong_target, beta):
    """Eq. 21 per example: (1 + beta) CE(z, y) - beta CE(z, y')."""
    loss = losses.soft_cross_entropy(soft_targets, logits)
    if beta:
        loss = (1.0 + beta) * loss - beta * losses.hard_cross_entropy(wrong_target, logits)
    return loss


class SSATTrainer(Trainer):
    """Alg. 1: m replays per minibatch from a fresh delta; theta descends the outer loss on SSAT's adaptive
    labels with Eq. 21's per-example CE, delta ascends Eq. 22 with hard labels."""

    Options = Options

    def initial_delta(self, x):
        """A fresh start for every minibatch, then clipped to the box (App. J rule 1): a uniform draw in the
        ball of radius gamma * eps of the attack's norm (`attacks.random_init`): for l-inf uniform in
        +-gamma*eps per coordinate as in the paper; for l2 / l1 uniform in the l2 / l1 ball (a uniform direction
        on the sphere, radius gamma * eps * u^(1/d)), so the start never leaves the ball, which a per-coordinate
        box draw would. Keyed (`example_keys`): the same (seed, iteration, position) gives the same start."""
        keys = self.example_keys(tf.shape(x)[0], SALT_SSAT_START)
        start = attacks.random_init(x, self.options.gamma * self.attack.eps, self.attack.norm, keys=keys)
        return attacks.clip_to_box(x, start)

    def attack_gradient(self, tape, attack_loss, attack_logits, logits, x_adv):
        """d attack_loss / d x_adv in float32, its gradient at the logits scaled by a power of two before it
        enters the network (attacks.ops.scaled_input_gradient; exact, float32 models get the same bits): under
        float16 a confidently classified example's CE gradient (with --ssat_target_beta=0) is below float16's
        range and would give a zero step. One scale per example when examples are independent; one for the batch
        when a BatchNormalization layer in training mode couples them."""
        upstream = tape.gradient(attack_loss, attack_logits)
        return scaled_input_gradient(tape, logits, x_adv, upstream, independent=not self._batch_norm)

    @functools.cached_property
    def _batch_norm(self) -> bool:
        """Whether the network has a BatchNormalization layer (looked up once, at the first trace)."""
        return any(isinstance(layer, keras.layers.BatchNormalization) for layer in self.network._flatten_layers())

    def train_step(self, data):
        x, labels = unpack(data)
        a, s = self.attack, self.options
        delta = self.initial_delta(x)
        one_hot = tf.one_hot(labels, self.num_classes, dtype=tf.float32)
        metrics = None
        for _ in range(s.replays):
            with tf.GradientTape(persistent=True) as tape:
                x_adv = x + delta
                tape.watch(x_adv)
                logits = self.network(x_adv, training=True)
                wrong = tf.stop_gradient(attacks.most_confusing(tf.cast(logits, tf.float32), labels))
                soft = adaptive_labels(labels, tf.cast(logits, tf.float32), delta, a.eps, a.norm, s,
                                       self.num_classes)
                eq_21 = functools.partial(regularised_loss, wrong_target=wrong, beta=s.target_beta)
                weight_loss = self.outer_loss(labels, logits, x_adv, targets=soft, per_example_ce=eq_21)
                attack_logits = tf.cast(logits, tf.float32)
                attack_loss = tf.reduce_sum(regularised_loss(one_hot, attack_logits, wrong, s.target_beta))
            self.apply_update(weight_loss, tape)
            gradient = self.attack_gradient(tape, attack_loss, attack_logits, logits, x_adv)
            del tape
            step = attacks.steepest_step(gradient, a.step_size, a.norm, x_adv)
            delta = attacks.constrain(x, delta + step, a.eps, a.norm)  # the loop's constraint (attacks/parts.py)
            metrics = self._update_metrics(weight_loss, labels, logits)
        return metrics


registry.register(registry.Method(
    "ssat", SSATTrainer, Options, flag_prefix="ssat", supports={"logit_squeeze", "distillation"},
    updates_per_batch=lambda options: options.replays, attack_bn_mode="train", attack_bn_applies=False,
    step_levels=lambda options, eps, step_size: options.step_size or eps / options.replays,
    step_flag="ssat_step_size",
    unused_options=lambda options: {} if options.adaptive else {
        "ssat_lambda0": "applies with --ssat_adaptive (--nossat_adaptive smooths with a constant --ssat_lambda1)"},
    description="surface-smoothing adversarial training (paper 000): adaptive labels, m replays"))
