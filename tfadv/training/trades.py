"""TRADES (Zhang et al.): outer loss on the clean logits + beta * KL(p(clean) || p(adv)), the adversarial
example from k steps ascending that KL from a 0.001 * N(0, 1) start."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfadv import attacks, losses
from tfadv.attacks import parts
from tfadv.training import registry
from tfadv.training.base import Trainer, not_negative, salt
from tfadv.training.registry import option


@dataclasses.dataclass(frozen=True)
class Options:
    beta: float = option(6.0, "trades: weight of the KL term")

    def __post_init__(self):
        not_negative("trades_beta", self.beta)

    def validate(self, run) -> None:
        not_negative("trades_beta", self.beta)


# the keyed 0.001 * N(0, 1) start (its own stream: `salt` of the draw's name)
START_SALT = salt("trades_start")


class TRADESTrainer(Trainer):
    """Zhang et al.: CE(clean) + beta * KL(p(clean) || p(adv)), adv from k steps ascending that KL.

    The outer loss (`Trainer.outer_loss`) is on the *clean* logits: its cross-entropy against --ls_method's
    targets built from the clean logits, and logit squeezing of the clean logits (the logits the CE is on);
    the distillation teachers see the *adversarial* example and are compared with the adversarial logits (as
    paper 001's code does). The beta * KL term is part of TRADES' own loss L = CE + beta * KL, so with teachers
    it is weighted with the CE by 1 - lambda1 - lambda2 (paper 001 Eq. 1).
    """

    Options = Options

    @property
    def beta(self) -> float:
        return float(self.options.beta)

    def adversarial_examples(self, x):
        a = self.attack
        clean_logits = tf.stop_gradient(self.attack_logits(x))
        # TRADES starts 0.001 * N(0, 1) away from the clean point (the keyed start, its own stream), then runs the
        # attacks' projected-step loop on the KL
        start = parts.random_start(x, 0.001, a.norm, keys=self.example_keys(tf.shape(x)[0], START_SALT),
                                   kind="normal")

        def gradient(x_adv):
            # the KL's input gradient in float32 (loss-scaled under float16: near the clean point the KL's gradient
            # is tiny and would underflow in a float16 backward pass)
            return attacks.value_and_gradient(self.attack_logits, x_adv,
                                              lambda logits: losses.kl_divergence(clean_logits, logits),
                                              independent=self.attack_independent)[1]

        return tf.stop_gradient(parts.projected_ascent(x, parts.constrain(x, start, a.eps, a.norm), gradient,
                                                       eps=a.eps, step_size=a.step_size, steps=a.steps, norm=a.norm))

    def training_loss(self, x, labels):
        x_adv = self.adversarial_examples(x)
        # Two forward passes, as the reference code does: each has its own BatchNorm batch statistics.
        clean_logits = self.network(x, training=True)
        adv_logits = self.network(x_adv, training=True)
        robust = tf.reduce_mean(losses.kl_divergence(clean_logits, adv_logits))
        loss = self.outer_loss(labels, clean_logits, x, distill_on=(x_adv, adv_logits), robust_term=self.beta * robust)
        return loss, clean_logits


def reference(ops, options, targets, logits, distill_logits):
    """L in float64 numpy for the tests parametrized over the registry (`registry.Method.reference`): the mean
    cross-entropy of the clean logits plus beta times the mean KL(p(clean) || p(adversarial))."""
    return ops.ce(targets, logits).mean() + options.beta * ops.kl(logits, distill_logits).mean()


registry.register(registry.Method(
    "trades", TRADESTrainer, Options, flag_prefix="trades",
    supports={"label_smoothing", "logit_squeeze", "distillation"},
    description="TRADES (Zhang et al.): clean CE + beta * KL(clean || adversarial)", reference=reference))
