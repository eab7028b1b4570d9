"""FGSM and PGD/BIM for the l-inf, l2 and l1 threat models, composed of small parts.

Every function is pure over `logits_fn(x) -> logits`; the caller binds the BatchNorm mode, e.g.
`lambda x: net(x, training=False)`. Inputs and outputs are [0,1] pixels; every returned image lies inside
the eps-ball around `x` and inside [0,1] (clipping to the box only shrinks |delta|, so it never leaves the
ball). Objectives and perturbations are float32 whatever the network's compute dtype.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfadv.attacks import parts, rng
from tfadv.attacks.losses import objective
from tfadv.attacks.ops import check_eot, check_norm, clip_to_box, expected_value_and_gradient, value_and_gradient
from tfadv.attacks.parts import random_init, steepest_step

__all__ = ["fgsm", "input_gradient", "pgd", "random_init", "steepest_step", "success"]


def input_gradient(logits_fn, x, labels, loss="ce", targets=None):
    """(objective [B], gradient d objective / d x), the objective summed over the batch for the gradient;
    float32 whatever the model's compute dtype (see `value_and_gradient`)."""
    values, gradient, _ = value_and_gradient(logits_fn, x, lambda logits: objective(loss, logits, labels, targets))
    return values, gradient


def fgsm(logits_fn: Callable, x, labels, *, eps, loss="ce", targets=None, norm="linf"):
    """Fast gradient (sign) method: one step of size eps from the clean input."""
    check_norm(norm)
    x = tf.convert_to_tensor(x, tf.float32)
    return parts.projected_ascent(x, tf.zeros_like(x), lambda x_adv: input_gradient(logits_fn, x_adv, labels, loss,
                                                                                     targets)[1],
                                  eps=eps, step_size=eps, steps=1, norm=norm)


def _pgd_once(logits_fn, x, labels, eps, step_size, steps, norm, loss, targets, random_start, l1_sparsity,
              keys=None, eot_iter=1, independent=True):
    """One PGD run: the projected-step loop on `loss` from a random start in the ball (or from x)."""
    start = clip_to_box(x, parts.random_start(x, eps, norm, keys=keys)) if random_start else tf.zeros_like(x)

    def gradient(x_adv):
        return expected_value_and_gradient(logits_fn, x_adv, lambda logits: objective(loss, logits, labels, targets),
                                           eot_iter, independent)[1]

    return parts.projected_ascent(x, start, gradient, eps=eps, step_size=step_size, steps=steps, norm=norm,
                                  l1_sparsity=l1_sparsity)


def success(logits, labels, targets=None):
    """Per-example attack success: misclassified (untargeted) or classified as the target (targeted)."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    if targets is None:
        return tf.not_equal(predictions, labels)
    return tf.equal(predictions, targets)


def pgd(logits_fn: Callable, x, labels, *, eps, step_size, steps, norm="linf", loss="ce", targets=None,
        random_start=True, restarts=1, l1_sparsity=0.95, keys=None, eot_iter: int = 1,
        independent_examples: bool = True):
    """Projected gradient descent (BIM without random start) with restarts keeping the worst case per example.

    Each run is the projected-step loop (`parts.projected_ascent`) from a random start in the ball. Across
    restarts an example keeps a successful perturbation over an unsuccessful one, else (both successful or both
    not) the one with the higher objective (`parts.keep_best`). `keys` ([B] int64, `rng.example_keys`) makes the
    random starts per-example and independent of batching; restart r uses `rng.fold(keys, r)`. `eot_iter` > 1
    averages each step's gradient over that many passes of a randomised `logits_fn` (Expectation over
    Transformation). `independent_examples=False` for a `logits_fn` whose forward pass couples the batch
    (BatchNorm in training mode): see `value_and_gradient`.
    """
    check_norm(norm)
    check_eot(eot_iter)
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    best = None
    for restart in range(restarts):
        candidate = _pgd_once(logits_fn, x, labels, eps, step_size, steps, norm, loss, targets, random_start,
                              l1_sparsity, None if keys is None else rng.fold(keys, restart), eot_iter,
                              independent_examples)
        if restarts == 1:
            return candidate
        candidate = parts.scored(logits_fn, candidate, lambda logits: objective(loss, logits, labels, targets),
                                 lambda logits: success(logits, labels, targets))
        best = candidate if best is None else parts.keep_best(best, candidate,
                                                              parts.succeeds_or_scores_higher(best, candidate))
    return best[0]
