"""FGSM and PGD/BIM for the l-inf, l2 and l1 threat models, composed of small parts.

Every function is pure over `logits_fn(x) -> logits`; the caller binds the BatchNorm mode, e.g.
`lambda x: net(x, training=False)`. Inputs and outputs are [0,1] pixels; every returned image lies inside
the eps-ball around `x` and inside [0,1] (clipping to the box only shrinks |delta|, so it never leaves the
ball). Objectives and perturbations are float32 whatever the network's compute dtype.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from tfadv.attacks import rng
from tfadv.attacks.losses import objective
from tfadv.attacks.ops import (TINY, check_eot, check_norm, clip_to_box, expected_value_and_gradient, flat_norm,
                               per_example, project, repeat, value_and_gradient)

def random_init(x, eps, norm, seed: Optional[int] = None, keys=None):
    """A uniform random point of the eps-ball (uniform per coordinate for l-inf; uniform radius^d for l2/l1).

    With `keys` ([B] int64 per-example keys from `rng.example_keys`) every example draws its own numbers,
    independent of the batch it is in; otherwise TensorFlow's stateful generator (with op `seed`) is used.
    """
    check_norm(norm)
    if keys is not None:
        return _keyed_init(x, eps, norm, keys)
    if norm == "linf":
        return tf.random.uniform(tf.shape(x), -eps, eps, dtype=tf.float32, seed=seed)
    dims = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    if norm == "l2":
        direction = tf.random.normal(tf.shape(x), dtype=tf.float32, seed=seed)
    else:  # Laplace direction, uniform on the l1 sphere after normalisation
        direction = tf.random.uniform(tf.shape(x), 1e-7, 1.0, seed=seed)
        direction = -tf.math.log(direction) * tf.sign(tf.random.uniform(tf.shape(x), -1.0, 1.0))
    direction = direction / per_example(flat_norm(direction, norm) + TINY, x)
    radius = tf.pow(tf.random.uniform([tf.shape(x)[0]], dtype=tf.float32), 1.0 / dims)
    return direction * per_example(radius, x) * eps  # eps: a scalar or per example [B, 1, ...]


def _keyed_init(x, eps, norm, keys):
    shape = tf.shape(x)[1:]
    if norm == "linf":
        return rng.uniform(keys, shape, stream=0, minval=-eps, maxval=eps)
    dims = tf.cast(tf.reduce_prod(shape), tf.float32)
    if norm == "l2":
        direction = rng.normal(keys, shape, stream=1)
    else:
        direction = -tf.math.log(1.0 - rng.uniform(keys, shape, stream=2)) * rng.sign(keys, shape, stream=3)
    direction = direction / per_example(flat_norm(direction, norm) + TINY, x)
    radius = tf.pow(rng.uniform(keys, [], stream=4), 1.0 / dims)
    return direction * per_example(radius, x) * eps


def steepest_step(gradient, step_size, norm, x_adv=None, l1_sparsity: float = 0.95):
    """The steepest-ascent step of length `step_size` in `norm` for `gradient`.

    l1 uses the sparse step of Tramer & Boneh (SLIDE): the top (1 - l1_sparsity) share of coordinates by
    |gradient| (at least one), skipping coordinates already pushed against the [0,1] box.
    """
    if norm == "linf":
        return step_size * tf.sign(gradient)
    if norm == "l2":
        return step_size * gradient / per_example(flat_norm(gradient, "l2") + TINY, gradient)
    if x_adv is not None:
        blocked = ((x_adv <= 0.0) & (gradient < 0.0)) | ((x_adv >= 1.0) & (gradient > 0.0))
        gradient = tf.where(blocked, tf.zeros_like(gradient), gradient)
    shape = tf.shape(gradient)
    flat = tf.reshape(gradient, [shape[0], -1])
    dims = tf.shape(flat)[1]
    keep = tf.maximum(1, tf.cast(tf.math.ceil((1.0 - l1_sparsity) * tf.cast(dims, tf.float32)), tf.int32))
    threshold = tf.math.top_k(tf.abs(flat), k=keep).values[:, -1:]
    mask = tf.cast((tf.abs(flat) >= threshold) & (tf.abs(flat) > 0), flat.dtype)
    count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)
    step = tf.sign(flat) * mask * step_size / count
    return tf.reshape(step, shape)


def input_gradient(logits_fn, x, labels, loss="ce", targets=None):
    """(objective [B], gradient d objective / d x), the objective summed over the batch for the gradient;
    float32 whatever the model's compute dtype (see `value_and_gradient`)."""
    values, gradient, _ = value_and_gradient(logits_fn, x, lambda logits: objective(loss, logits, labels, targets))
    return values, gradient


def fgsm(logits_fn: Callable, x, labels, *, eps, loss="ce", targets=None, norm="linf"):
    """Fast gradient (sign) method: one step of size eps from the clean input."""
    check_norm(norm)
    x = tf.convert_to_tensor(x, tf.float32)
    _, gradient = input_gradient(logits_fn, x, labels, loss, targets)
    delta = project(steepest_step(gradient, eps, norm, x), eps, norm)
    return x + clip_to_box(x, delta)


def _pgd_once(logits_fn, x, labels, eps, step_size, steps, norm, loss, targets, random_start, l1_sparsity,
              keys=None, eot_iter=1, independent=True):
    if random_start:
        delta = clip_to_box(x, random_init(x, eps, norm, keys=keys))
    else:
        delta = tf.zeros_like(x)

    def ascend(delta):
        _, gradient, _ = expected_value_and_gradient(
            logits_fn, x + delta, lambda logits: objective(loss, logits, labels, targets), eot_iter, independent)
        delta = delta + steepest_step(gradient, step_size, norm, x + delta, l1_sparsity)
        return clip_to_box(x, project(delta, eps, norm))

    return x + repeat(ascend, delta, steps)


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

    Across restarts an example keeps the first successful perturbation; among unsuccessful ones, the one with
    the highest objective. `keys` ([B] int64, `rng.example_keys`) makes the random starts per-example and
    independent of batching; restart r uses `rng.fold(keys, r)`. `eot_iter` > 1 averages each step's gradient
    over that many passes of a randomised `logits_fn` (Expectation over Transformation).
    `independent_examples=False` for a `logits_fn` whose forward pass couples the batch (BatchNorm in training
    mode): see `value_and_gradient`.
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
        logits = logits_fn(candidate)
        value = objective(loss, logits, labels, targets)
        won = success(logits, labels, targets)
        if best is None:
            best, best_value, best_won = candidate, value, won
            continue
        better = (won & ~best_won) | ((won == best_won) & (value > best_value))
        best = tf.where(per_example(better, x), candidate, best)
        best_value = tf.where(better, value, best_value)
        best_won = best_won | won
    return best
