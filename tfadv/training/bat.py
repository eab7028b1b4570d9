"""Bilateral Adversarial Training (Wang & Zhang, ICCV 2019, paper 002), read as its official code does.

Per minibatch: clean logits with BatchNorm in inference mode give the target (the most confusing class =
the highest wrong logit, or the least likely wrong class, Eq. 23) and the clean probabilities for the
adversarial labels; a uniform random start in the eps-ball; one step of `step_size` *down* the cross-entropy
toward the target (or up the true label's for the untargeted variant); projection and clipping; the weight update
uses only the adversarial images, against adversarial labels (Eq. 14 / 18), uniform labels (R-MC-LS) or hard ones:
those labels are the targets of the composed outer loss (`Trainer.outer_loss`), so --squeeze_beta and the
distillation teachers (on the adversarial images and logits) apply on top; --ls_method does not (BAT's labels
replace it).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfadv import attacks
from tfadv.training import registry
from tfadv.training.base import BAT_LABELS, SALT_ATTACK_START, LabelAdversary, Trainer, not_negative, one_of
from tfadv.training.pgd import LS_REPLACED
from tfadv.training.registry import option

BAT_ATTACKS = ("mc", "ll", "fgsm")

__all__ = ["BAT_ATTACKS", "BAT_LABELS", "BATTrainer", "LabelAdversary", "Options"]


@dataclasses.dataclass(frozen=True)
class Options:
    attack: str = option("mc", "bat: mc (targeted most confusing), ll (least likely), fgsm (untargeted)")
    random_start: bool = option(True, "bat: uniform random start in the eps-ball")
    labels: str = option("adversarial", "bat: adversarial (Eq. 14/18), uniform (R-MC-LS, --bat_eps_y), hard")
    step_size: float = option(0.0, "bat: step size in pixel levels (0 = eps)")

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        one_of("bat_attack", self.attack, BAT_ATTACKS)
        one_of("bat_labels", self.labels, BAT_LABELS)
        not_negative("bat_step_size", self.step_size)

    def validate(self, run) -> None:
        self.check()
        if run.defense == "bat" and run.smoothing.ls_method != "none":
            raise registry.OptionError("ls_method", LS_REPLACED)


class BATTrainer(Trainer):
    """R-MC-LA by default; `Options.attack` in {mc, ll, fgsm} gives R-MC / R-LL / R-FGSM, `Options.labels`
    the label kind (of the run's `label_adversary`). The attack's step size and random start are the
    AttackConfig's (the run config takes them from --bat_step_size / --bat_random_start)."""

    Options = Options

    def __init__(self, network, attack, options=None, **common):
        super().__init__(network, attack, options, **common)
        self.target = self.options.attack
        self.labels = self.label_adversary_of_kind(self.options.labels)

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
        return self.outer_loss(labels, logits, x_adv, targets=soft), logits


registry.register(registry.Method(
    "bat", BATTrainer, Options, flag_prefix="bat",
    supports={"logit_squeeze", "distillation", "adversarial_labels"},
    step_levels=lambda options, eps, step_size: options.step_size or eps, step_flag="bat_step_size",
    random_start=lambda options: options.random_start,
    description="bilateral adversarial training (paper 002): one targeted step, adversarial labels"))
