"""FGSM-RS (Wong et al., "fast is better than free"): the outer loss on one signed step of --step_size
(1.25 eps in the paper) from a uniform random start in the eps-ball."""

from __future__ import annotations

import tensorflow as tf

from tfadv import attacks
from tfadv.training import registry
from tfadv.training.base import SALT_ATTACK_START, Trainer


class FGSMRSTrainer(Trainer):
    """Wong et al. "fast is better than free": uniform random start, one signed step of 1.25 eps."""

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
    "fgsm_rs", FGSMRSTrainer, supports={"label_smoothing", "logit_squeeze", "distillation"},
    description="FGSM with a random start (Wong et al.)"))
