"""Attacks: pure functions over `logits_fn(x) -> logits` on [0,1] pixels; the shared parts live in `ops`."""

from tfadv.attacks.losses import LOSS_NAMES, cross_entropy, cw_margin, dlr, objective, targeted_dlr
from tfadv.attacks.ops import (
    NORMS,
    clip_to_box,
    expected_value_and_gradient,
    least_likely,
    masked_logits,
    most_confusing,
    per_example,
    perturbation_norm,
    project,
    repeat,
    top_wrong_classes,
    top_wrong_logit,
    value_and_gradient,
)
from tfadv.attacks.pgd import fgsm, input_gradient, pgd, random_init, steepest_step, success
from tfadv.attacks.apgd import apgd, apgd_targeted

__all__ = [
    "apgd", "apgd_targeted", "LOSS_NAMES", "NORMS", "clip_to_box", "cross_entropy", "cw_margin", "dlr",
    "expected_value_and_gradient", "fgsm", "input_gradient", "least_likely", "masked_logits", "most_confusing",
    "objective", "per_example", "perturbation_norm", "pgd", "project", "random_init", "repeat", "steepest_step",
    "success", "targeted_dlr", "top_wrong_classes", "top_wrong_logit", "value_and_gradient",
]
