"""The baselines the papers compare against: natural, PGD-AT, FGSM-RS, Free-AT and TRADES."""

from __future__ import annotations

import tensorflow as tf

from tfadv import attacks, losses
from tfadv.attacks import rng
from tfadv.training.base import SALT_ATTACK_START, SALT_TRADES_START, Trainer, unpack


class NaturalTrainer(Trainer):
    """Training on clean (or Gaussian-noised) images; with a SmoothingConfig this is paper 003's label
    smoothing (SLS/ALS/BLS/SBLS), paper 004's label smoothing or logit squeezing."""

    def training_loss(self, x, labels):
        logits = self.network(x, training=True)
        return self.outer_loss(labels, logits, x), logits


class PGDTrainer(Trainer):
    """Madry et al.: minimise the cross-entropy on k-step PGD examples (l-inf or l2).

    With `label_adversary` (a `bat.LabelAdversary`) this is paper 002's Madry-LA: the PGD examples are trained
    on BAT's adversarial labels, computed from the clean probabilities (BatchNorm in inference mode).
    """

    def __init__(self, network, attack, label_adversary=None, **kwargs):
        super().__init__(network, attack, **kwargs)
        self.label_adversary = label_adversary

    def adversarial_examples(self, x, labels):
        a = self.attack
        x_adv = attacks.pgd(self.attack_logits, x, labels, eps=a.eps, step_size=a.step_size, steps=a.steps,
                            norm=a.norm, random_start=a.random_start,
                            keys=self.example_keys(tf.shape(x)[0], SALT_ATTACK_START),
                            independent_examples=self.attack_independent)
        return tf.stop_gradient(x_adv)

    def training_loss(self, x, labels):
        if self.label_adversary is None:
            x_adv = self.adversarial_examples(x, labels)
            logits = self.network(x_adv, training=True)
            return self.outer_loss(labels, logits, x_adv), logits
        soft = self.label_adversary.targets(labels, tf.stop_gradient(self.eval_logits(x)), self.num_classes)
        logits = self.network(self.adversarial_examples(x, labels), training=True)
        return tf.reduce_mean(losses.soft_cross_entropy(soft, logits)), logits


class FGSMRSTrainer(PGDTrainer):
    """Wong et al. "fast is better than free": uniform random start, one signed step of 1.25 eps."""

    def adversarial_examples(self, x, labels):
        a = self.attack
        x_adv = attacks.pgd(self.attack_logits, x, labels, eps=a.eps, step_size=a.step_size, steps=1,
                            norm=a.norm, random_start=True, keys=self.example_keys(tf.shape(x)[0], SALT_ATTACK_START),
                            independent_examples=self.attack_independent)
        return tf.stop_gradient(x_adv)


class FreeTrainer(Trainer):
    """Shafahi et al. "adversarial training for free": each minibatch is replayed m times; one backward pass
    per replay gives both the weight gradient and the input gradient; delta is carried across minibatches.
    Every replay trains on clip(x + delta, 0, 1), as the reference code clamps the input (the delta carried
    over from the previous minibatch may push the new one out of the box); the input gradient is taken with
    respect to delta through that clamp, as there.
    """

    def __init__(self, network, attack, replays: int = 8, batch_size: int = 128, **kwargs):
        super().__init__(network, attack, **kwargs)
        if replays < 1:
            raise ValueError(f"free_replays must be at least 1, got {replays}")
        self.replays = int(replays)
        # One perturbation per example of the per-replica batch (batches are full: drop_remainder=True).
        per_replica = batch_size // tf.distribute.get_strategy().num_replicas_in_sync
        shape = (per_replica,) + tuple(network.input_shape[1:])
        self.delta = tf.Variable(tf.zeros(shape, tf.float32), trainable=False, name="free_delta",
                                 synchronization=tf.VariableSynchronization.ON_READ,
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def train_step(self, data):
        x, labels = unpack(data)
        a = self.attack
        delta = tf.identity(self.delta)
        for _ in range(self.replays):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)
                logits = self.network(x_adv, training=True)
                loss = self.outer_loss(labels, logits, x_adv)
            (input_gradient,) = self.apply_update(loss, tape, extra_sources=[delta])
            step = attacks.steepest_step(tf.cast(input_gradient, tf.float32), a.step_size, a.norm, x_adv)
            delta = attacks.clip_to_box(x, attacks.project(delta + step, a.eps, a.norm))
            metrics = self._update_metrics(loss, labels, logits)
        self.delta.assign(delta)
        return metrics

    def extra_state(self):
        return {"free_delta": self.delta}


class TRADESTrainer(Trainer):
    """Zhang et al.: CE(clean) + beta * KL(p(clean) || p(adv)), adv from k steps ascending that KL."""

    def __init__(self, network, attack, beta: float = 6.0, **kwargs):
        super().__init__(network, attack, **kwargs)
        self.beta = float(beta)

    def adversarial_examples(self, x):
        a = self.attack
        clean_logits = tf.stop_gradient(self.attack_logits(x))
        # TRADES starts 0.001 * N(0, 1) away from the clean point.
        start = rng.normal(self.example_keys(tf.shape(x)[0], SALT_TRADES_START), tf.shape(x)[1:])
        delta = attacks.clip_to_box(x, attacks.project(0.001 * start, a.eps, a.norm))

        def ascend(delta):
            # the KL and its input gradient in float32 (loss-scaled under float16: near the clean point the KL's
            # gradient is tiny and would underflow in a float16 backward pass)
            x_adv = x + delta
            _, gradient, _ = attacks.value_and_gradient(
                self.attack_logits, x_adv, lambda logits: losses.kl_divergence(clean_logits, logits),
                independent=self.attack_independent)
            delta = delta + attacks.steepest_step(gradient, a.step_size, a.norm, x_adv)
            return attacks.clip_to_box(x, attacks.project(delta, a.eps, a.norm))

        return tf.stop_gradient(x + attacks.repeat(ascend, delta, a.steps))

    def training_loss(self, x, labels):
        x_adv = self.adversarial_examples(x)
        # Two forward passes, as the reference code does: each has its own BatchNorm batch statistics.
        clean_logits = self.network(x, training=True)
        adv_logits = self.network(x_adv, training=True)
        robust = tf.reduce_mean(losses.kl_divergence(clean_logits, adv_logits))
        loss = self.outer_loss(labels, clean_logits) if self.distillation is None else (
            self.distillation.ce_weight * tf.reduce_mean(losses.hard_cross_entropy(labels, clean_logits))
            + self.distillation.loss(x_adv, adv_logits))  # teachers see the adversarial example
        return loss + self.beta * robust, clean_logits
