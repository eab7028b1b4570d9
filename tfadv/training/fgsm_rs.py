"""FGSM-RS (Wong et al., "fast is better than free"): the outer loss on one signed step of --fgsm_rs_step_size
(0 = the paper's alpha = 1.25 eps) from a uniform random start in the eps-ball."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfadv import attacks
from tfadv.training import registry
from tfadv.training.base import SALT_ATTACK_START, Trainer, not_negative
from tfadv.training.registry import option


@dataclasses.dataclass(frozen=True)
class Options:
    step_size: float = option(0.0, "fgsm_rs: step size in pixel levels (0 = 1.25 eps, Wong et al.'s alpha)")

    def __post_init__(self):
        not_negative("fgsm_rs_step_size", self.step_size)

    def validate(self, run) -> None:
        not_negative("fgsm_rs_step_size", self.step_size)


class FGSMRSTrainer(Trainer):
    """Wong et al. "fast is better than free": uniform random start, one signed step of 1.25 eps."""

    Options = Options

    def adversarial_examples(self, x, labels):
        a = self.attack
        x_adv = attacks.pgd(self.attack_logits, x, labels, eps=a.eps, step_size=a.step_size, steps=1,
                            norm=a.norm, random_start=True, keys=self.example_keys(tf.shape(x)[0], SALT_ATTACK_START),
                            independent_examples=self.attack_independent)
        return tf.stop_gradient(x_adv)

    def training_loss(self, x, labels):
        x_adv = self.adversarial_examples(x, labels)
        logits = self.network(x_adv, training=True)
        return self.outer_loss(labels, logits, x_adv), logits


registry.register(registry.Method(
    "fgsm_rs", FGSMRSTrainer, Options, flag_prefix="fgsm_rs", attack_bn_mode="train",
    supports={"label_smoothing", "logit_squeeze", "distillation"},
    step_levels=lambda options, eps, step_size: options.step_size or 1.25 * eps, step_flag="fgsm_rs_step_size",
    description="FGSM with a random start (Wong et al.)"))
