"""PGD adversarial training (Madry et al.): minimise the outer loss on k-step PGD examples (l-inf or l2).

With --pgd_labels=bat this is paper 002's Madry-LA: the PGD examples are trained on BAT's adversarial labels
(`LabelAdversary`, Eq. 14 / 18), computed from the clean probabilities with BatchNorm in inference mode; those
labels are the outer loss's targets, and logit squeezing and distillation apply on top as for hard labels.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfadv import attacks
from tfadv.training import registry
from tfadv.training.base import SALT_ATTACK_START, Trainer, one_of
from tfadv.training.registry import option

PGD_LABELS = ("hard", "bat")
LS_REPLACED = "BAT's labels replace label smoothing; use --bat_labels=uniform for R-MC-LS"


@dataclasses.dataclass(frozen=True)
class Options:
    labels: str = option("hard", "pgd: hard, or bat (Madry-LA: BAT's adversarial labels)")

    def __post_init__(self):
        one_of("pgd_labels", self.labels, PGD_LABELS)

    def validate(self, run) -> None:
        one_of("pgd_labels", self.labels, PGD_LABELS)
        if self.labels == "bat" and run.defense != "pgd":
            raise registry.OptionError("pgd_labels", "bat labels (Madry-LA) apply to --defense=pgd")
        if self.labels == "bat" and run.smoothing.ls_method != "none":
            raise registry.OptionError("ls_method", LS_REPLACED)


class PGDTrainer(Trainer):
    """Madry et al.: minimise the outer loss on k-step PGD examples; Madry-LA with `Options(labels="bat")`
    (BAT's adversarial labels from the run's `label_adversary`)."""

    Options = Options

    def __init__(self, network, attack, options=None, **common):
        super().__init__(network, attack, options, **common)
        self.label_adversary = self.label_adversary_of_kind("adversarial") if self.options.labels == "bat" else None

    def adversarial_examples(self, x, labels):
        a = self.attack
        x_adv = attacks.pgd(self.attack_logits, x, labels, eps=a.eps, step_size=a.step_size, steps=a.steps,
                            norm=a.norm, random_start=a.random_start,
                            keys=self.example_keys(tf.shape(x)[0], SALT_ATTACK_START),
                            independent_examples=self.attack_independent)
        return tf.stop_gradient(x_adv)

    def training_loss(self, x, labels):
        soft = None
        if self.label_adversary is not None:  # Madry-LA: labels from the clean input, BatchNorm in inference mode
            soft = self.label_adversary.targets(labels, tf.stop_gradient(self.eval_logits(x)), self.num_classes)
        x_adv = self.adversarial_examples(x, labels)
        logits = self.network(x_adv, training=True)
        return self.outer_loss(labels, logits, x_adv, targets=soft), logits


registry.register(registry.Method(
    "pgd", PGDTrainer, Options, flag_prefix="pgd", norms=("linf", "l2"), attack_bn_mode="train",
    supports={"label_smoothing", "logit_squeeze", "distillation", "adversarial_labels"},
    description="PGD adversarial training (Madry et al.); --pgd_labels=bat: Madry-LA (paper 002)"))
