"""Attacks: pure functions over `logits_fn(x) -> logits` on [0,1] pixels, composed of shared parts: `ops` (norms,
projection, box, gradients, wrong-class logits), `rng` (per-example keys), `losses` (the objectives and the one
margin) and `parts` (the keyed random start, the projected-step loop, keeping the best over restarts)."""

from tfadv.attacks.losses import LOSS_NAMES, cross_entropy, cw_margin, dlr, margin, objective, targeted_dlr
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
from tfadv.attacks.parts import (constrain, keep_best, projected_ascent, projected_step, random_init, random_start,
                                 steepest_step)
from tfadv.attacks.pgd import fgsm, input_gradient, pgd, success
from tfadv.attacks.apgd import apgd, apgd_targeted

__all__ = [
    "apgd", "apgd_targeted", "LOSS_NAMES", "NORMS", "clip_to_box", "constrain", "cross_entropy", "cw_margin", "dlr",
    "expected_value_and_gradient", "fgsm", "input_gradient", "keep_best", "least_likely", "margin", "masked_logits",
    "most_confusing", "objective", "per_example", "perturbation_norm", "pgd", "project", "projected_ascent",
    "projected_step", "random_init", "random_start", "repeat", "steepest_step", "success", "targeted_dlr",
    "top_wrong_classes", "top_wrong_logit", "value_and_gradient",
]
