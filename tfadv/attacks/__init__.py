"""Attacks: pure functions over `logits_fn(x) -> logits` on [0,1] pixels."""

from tfadv.attacks.losses import LOSS_NAMES, cross_entropy, cw_margin, dlr, objective, targeted_dlr
from tfadv.attacks.pgd import (
    NORMS,
    clip_to_box,
    expected_value_and_gradient,
    fgsm,
    input_gradient,
    perturbation_norm,
    pgd,
    project,
    random_init,
    repeat,
    steepest_step,
    success,
    value_and_gradient,
)
from tfadv.attacks.targets import least_likely, most_confusing
from tfadv.attacks.apgd import apgd, apgd_targeted

__all__ = [
    "apgd", "apgd_targeted", "LOSS_NAMES", "NORMS", "clip_to_box", "cross_entropy", "cw_margin", "dlr",
    "expected_value_and_gradient", "fgsm", "input_gradient",
    "least_likely", "most_confusing", "objective", "perturbation_norm", "pgd", "project", "random_init", "repeat",
    "steepest_step", "success", "targeted_dlr", "value_and_gradient",
]
