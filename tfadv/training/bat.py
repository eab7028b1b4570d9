"""Bilateral Adversarial Training (Wang & Zhang, ICCV 2019, paper 002), read as its official code does.

Per minibatch: clean logits with BatchNorm in inference mode give the target (the most confusing class =
the highest wrong logit, or the least likely wrong class, Eq. 23) and the clean probabilities for the
adversarial labels; a uniform random start in the eps-ball; one step of `step_size` *down* the cross-entropy
toward the target (or up the true label's for the untargeted variant); projection and clipping; the weight update uses only
the adversarial images, against adversarial labels (Eq. 14 / 18), uniform labels (R-MC-LS) or hard ones.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from tfadv import attacks, losses, targets
from tfadv.training.base import SALT_ATTACK_START, Trainer

BAT_ATTACKS = ("mc", "ll", "fgsm")
BAT_LABELS = ("adversarial", "uniform", "hard")


@dataclasses.dataclass(frozen=True)
class LabelAdversary:
    """Which labels the weight update uses. `adversarial`: Eq. 14 with eps_y from Eq. 18 (`beta`, `gamma`,
    optional `top_k`); `uniform`: a fixed budget `eps_y` spread evenly over the wrong classes (Eq. 15);
    `hard`: one-hot."""

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


class BATTrainer(Trainer):
    """R-MC-LA by default; `target` in {mc, ll, fgsm} gives R-MC / R-LL / R-FGSM, `labels` the label kind."""

    def __init__(self, network, attack, target: str = "mc", labels: LabelAdversary = LabelAdversary(),
                 **kwargs):
        super().__init__(network, attack, **kwargs)
        if target not in BAT_ATTACKS:
            raise ValueError(f"bat_attack must be one of {BAT_ATTACKS}, got {target!r}")
        self.target = target
        self.labels = labels

    def adversarial_examples(self, x, labels, clean_logits):
        a = self.attack
        if self.target == "mc":
            target = attacks.most_confusing(clean_logits, labels)
        elif self.target == "ll":
            target = attacks.least_likely(clean_logits, labels)
        else:
            target = None  # untargeted: one step up the true label's cross-entropy
        x_adv = attacks.pgd(self.attack_logits, x, labels, eps=a.eps, step_size=a.step_size, steps=1,
                            norm=a.norm, loss="ce", targets=target, random_start=a.random_start,
                            keys=self.example_keys(tf.shape(x)[0], SALT_ATTACK_START),
                            independent_examples=self.attack_independent)
        return tf.stop_gradient(x_adv)

    def training_loss(self, x, labels):
        # Target and label probabilities from the clean input, BatchNorm in inference mode (official code).
        clean_logits = tf.stop_gradient(self.eval_logits(x))
        x_adv = self.adversarial_examples(x, labels, clean_logits)
        soft = self.labels.targets(labels, clean_logits, self.num_classes)
        logits = self.network(x_adv, training=True)
        loss = tf.reduce_mean(losses.soft_cross_entropy(soft, logits))
        if self.smoothing.squeeze_beta:
            loss += losses.logit_squeeze(logits, self.smoothing.squeeze_beta, self.smoothing.squeeze_reduction)
        return loss, logits
