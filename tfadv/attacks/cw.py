"""Carlini & Wagner's L2 attack ("Towards evaluating the robustness of neural networks", S&P 2017).

A minimum-norm attack: per example, minimise ||x' - x||_2^2 + c * max(z_y - max_{j != y} z_j + kappa, 0)
(untargeted; targeted: max(max_{j != t} z_j - z_t + kappa, 0)) over x' = (tanh(w) + 1) / 2, which keeps x' in
[0,1] without clipping, with Adam on w; a binary search over c per example (c grows 10x until the first
success, then bisects). Returned: the smallest-l2 adversarial point found per example and its norm.

Readings: the search state, Adam's moments and the early stop are all per example (the original stops the
whole batch early), so an example's result does not depend on the batch it is in. Early stop: an example
stops its current search step when its objective has not fallen below 99.99 % of the value it had
`steps // 10` iterations earlier (the original's rule), and it restarts from w(x) at each search step.
"""

from __future__ import annotations

import collections
from typing import Callable

import tensorflow as tf

from tfadv.attacks import losses, parts
from tfadv.attacks.ops import per_example, value_and_gradient, while_loop

CWResult = collections.namedtuple("CWResult", ["x_adv", "norms", "found"])
_BOX = 0.999999  # tanh-space margin so that pixels at exactly 0 or 1 have finite w
_UPPER = 1e10


def _margin(logits, labels, targets, confidence):
    """The loss's margin term before max(., 0): z_y - max_{j != y} z_j + kappa (untargeted), max_{j != t} z_j - z_t
    + kappa (targeted); success when <= 0."""
    if targets is None:
        return losses.margin(logits, labels) + confidence
    return -losses.margin(logits, targets) + confidence


def carlini_wagner_l2(logits_fn: Callable, x, labels, *, targets=None, confidence: float = 0.0,
                      initial_const: float = 1e-2, binary_search_steps: int = 9, steps: int = 1000,
                      learning_rate: float = 0.01, abort_early: bool = True) -> CWResult:
    """C&W-L2. Returns CWResult(x_adv, norms, found): the best adversarial point (x where none was found),
    its l2 distance (+inf where none was found; 0 where x is already misclassified) and a success flag."""
    for name, value in (("binary_search_steps", binary_search_steps), ("steps", steps)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if learning_rate <= 0 or initial_const <= 0:
        raise ValueError("learning_rate and initial_const must be positive")
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    targets = None if targets is None else tf.cast(targets, tf.int32)
    batch = tf.shape(x)[0]
    w_clean = tf.atanh((2.0 * x - 1.0) * _BOX)
    check_every = max(steps // 10, 1)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-8

    def success(logits):
        # with confidence 0 this is misclassification (targeted: the target class)
        return _margin(logits, labels, targets, confidence) <= 0.0

    clean_logits = logits_fn(x)
    already = (tf.not_equal(tf.argmax(clean_logits, -1, output_type=tf.int32), labels) if targets is None
               else tf.equal(tf.argmax(clean_logits, -1, output_type=tf.int32), targets))
    best_norm = tf.where(already, 0.0, tf.fill([batch], float("inf")))
    best_x = x

    def objective(w, const):
        """(x', ||x' - x||^2, logits, loss, d loss / d w): the margin term's gradient is taken in float32 with
        the network's backward pass loss-scaled (`value_and_gradient`), the rest analytically."""
        tanh = tf.tanh(w)
        x_new = (tanh + 1.0) / 2.0
        distance = tf.reduce_sum(tf.reshape(tf.square(x_new - x), [batch, -1]), axis=1)
        penalty, penalty_gradient, logits = value_and_gradient(
            logits_fn, x_new, lambda logits: const * tf.nn.relu(_margin(logits, labels, targets, confidence)))
        gradient_x = 2.0 * (x_new - x) + penalty_gradient
        return x_new, distance, logits, distance + penalty, gradient_x * (1.0 - tf.square(tanh)) / 2.0

    def search_step(const, best_norm, best_x):
        def body(i, w, m, v, active, previous, best_norm, best_x, found_now):
            x_new, distance, logits, loss, gradient = objective(w, const)
            ok = success(logits)
            norm = tf.sqrt(distance)
            best_norm, best_x = parts.keep_best((best_norm, best_x), (norm, x_new), ok & (norm < best_norm) & active)
            found_now = found_now | (ok & active)
            t = tf.cast(i + 1, tf.float32)
            m = beta1 * m + (1.0 - beta1) * gradient
            v = beta2 * v + (1.0 - beta2) * tf.square(gradient)
            update = learning_rate * (m / (1.0 - beta1 ** t)) / (tf.sqrt(v / (1.0 - beta2 ** t)) + adam_eps)
            w = tf.where(per_example(active, x), w - update, w)
            if abort_early:
                check = tf.equal(tf.math.floormod(i + 1, check_every), 0)
                stalled = check & (loss > 0.9999 * previous)
                active = active & ~stalled
                previous = tf.where(check, loss, previous)
            return i + 1, w, m, v, active, previous, best_norm, best_x, found_now

        state = (tf.constant(0), w_clean, tf.zeros_like(x), tf.zeros_like(x), tf.ones([batch], tf.bool),
                 tf.fill([batch], float("inf")), best_norm, best_x, tf.zeros([batch], tf.bool))
        state = while_loop(lambda i, *rest: (i < steps) & tf.reduce_any(rest[3]), body, state)
        return state[6], state[7], state[8]

    const = tf.fill([batch], float(initial_const))
    lower = tf.zeros([batch])
    upper = tf.fill([batch], _UPPER)
    for _ in range(binary_search_steps):
        best_norm, best_x, found_now = search_step(const, best_norm, best_x)
        upper = tf.where(found_now, tf.minimum(upper, const), upper)
        lower = tf.where(found_now, lower, tf.maximum(lower, const))
        bisect = upper < _UPPER / 10
        const = tf.where(bisect, (lower + upper) / 2.0, const * 10.0)
    found = tf.math.is_finite(best_norm)
    return CWResult(tf.where(per_example(found, x), best_x, x), best_norm, found)

