"""FAB, the Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), targeted version FAB-T as in AutoAttack.

A minimum-norm attack. For a target class t, each iteration linearises g(x) = z_y(x) - z_t(x) at the iterate
x_k and computes the smallest step (in the threat model's norm, inside the box [0,1]) onto the hyperplane
{z : g(x_k) + grad g(x_k) . (z - x_k) = 0}, both from x_k (d1) and from the original point x (d2). The next
iterate is the biased combination

    x_{k+1} = clip((1 - a) (x_k + eta d1) + a (x + eta d2), 0, 1),   a = min(|d1| / (|d1| + |d2|), alpha_max)

(eta = 1.05 overshoots; alpha_max = 0.1). Whenever x_{k+1} is misclassified and closer to x than the best
so far it is recorded, and the iterate is pulled back toward x: x_{k+1} = x + beta (x_{k+1} - x), beta = 0.9.
FAB-T runs this for the top-`num_targets` wrong classes of the clean logits (9, or K - 1 when fewer), 100
iterations each, and keeps the smallest perturbation per example.

The box-constrained projection is exact: moving coordinate i by at most r_i in the direction that increases
w . d (r_i = 1 - p_i or p_i), the largest change reachable with a step of "size" s is
g(s) = sum_i |w_i| min(s b_i, r_i) (l-inf: b_i = 1 and d_i = sign(w_i) min(s, r_i); l2: b_i = |w_i| and
d_i = sign(w_i) min(s |w_i|, r_i), the KKT form of the smallest l2 step), piecewise linear and nondecreasing
in s; the breakpoints r_i / b_i are sorted, g is evaluated at them with cumulative sums and the crossing is
solved linearly. When even the whole box cannot reach the hyperplane the full move is taken.

Readings: restarts after the first start from a random point at half the current best norm (capped at `eps`
when given) around x, as the reference code; every random number comes from per-example keys, so results do
not depend on the batch. Success is any misclassification (argmax != y), as in AutoAttack.
"""

from __future__ import annotations

from typing import Callable, Optional

import tensorflow as tf

from tfadv.attacks import parts, rng
from tfadv.attacks.ops import flat_norm, in_xla_context, per_example, top_wrong_classes, value_and_gradient, while_loop

FAB_NORMS = ("linf", "l2")
_BIG = 1e12


def box_hyperplane_projection(points, w, change, norm="linf"):
    """The smallest step d ([N, D]) in `norm` with w . d = change ([N]) and points + d inside [0, 1]
    (the full move toward the hyperplane where it cannot be reached inside the box)."""
    points = tf.convert_to_tensor(points, tf.float32)
    w = tf.convert_to_tensor(w, tf.float32)
    change = tf.convert_to_tensor(change, tf.float32)
    flip = tf.where(change < 0.0, -1.0, 1.0)[:, None]
    w = w * flip  # now we need w . d = |change| >= 0
    target = tf.abs(change)
    direction = tf.sign(w)
    room = tf.where(w > 0.0, 1.0 - points, points)  # how far each coordinate can move in its useful direction
    room = tf.where(w == 0.0, 0.0, tf.maximum(room, 0.0))
    a = tf.abs(w)
    b = tf.ones_like(a) if norm == "linf" else a
    breaks = tf.where(b > 0.0, room / tf.maximum(b, 1e-30), _BIG)
    breaks = tf.minimum(breaks, _BIG)
    order = tf.argsort(breaks, axis=1)
    s_breaks = tf.gather(breaks, order, batch_dims=1)
    s_ar = tf.gather(a * room, order, batch_dims=1)
    s_ab = tf.gather(a * b, order, batch_dims=1)
    saturated = tf.cumsum(s_ar, axis=1)                       # sum_{j<=k} a_j r_j
    slope_after = tf.cumsum(s_ab, axis=1, reverse=True, exclusive=True)  # sum_{j>k} a_j b_j
    reach = saturated + s_breaks * slope_after                # g at the k-th breakpoint
    reachable = reach >= target[:, None]
    count = tf.shape(points)[1]
    first = tf.where(tf.reduce_any(reachable, axis=1),
                     tf.argmax(tf.cast(reachable, tf.int32), axis=1, output_type=tf.int32), count)
    # on the segment before breakpoint `first`: coordinates j < first are saturated
    before = tf.concat([tf.zeros_like(saturated[:, :1]), saturated], axis=1)
    slope_from = tf.concat([tf.cumsum(s_ab, axis=1, reverse=True), tf.zeros_like(s_ab[:, :1])], axis=1)
    done = tf.gather(before, first, batch_dims=1)
    slope = tf.gather(slope_from, first, batch_dims=1)
    size = tf.where(slope > 0.0, (target - done) / tf.maximum(slope, 1e-30), _BIG)
    size = tf.where(first >= count, _BIG, tf.maximum(size, 0.0))  # unreachable: the full move
    step = tf.minimum(size[:, None] * b, room)
    return direction * step  # w_flipped . d = |change|, i.e. w . d = change


def _flat(x):
    return tf.reshape(x, [tf.shape(x)[0], -1])


def _check(norm, steps, num_targets, restarts):
    if norm not in FAB_NORMS:
        raise ValueError(f"FAB supports norm {' or '.join(FAB_NORMS)}, got {norm!r}")
    for name, value in (("steps", steps), ("num_targets", num_targets), ("restarts", restarts)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def fab_run(logits_fn: Callable, x, labels, targets, *, norm="linf", steps=100, alpha_max=0.1, eta=1.05,
            beta=0.9, start=None):
    """One FAB run toward `targets` from `start` (default: x). Returns (best point, its norm; +inf where no
    misclassified point was met)."""
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    targets = tf.cast(targets, tf.int32)
    batch = tf.shape(x)[0]
    x0 = _flat(x)

    def linearise(point):
        # g = z_y - z_t and its input gradient, in float32 whatever the model's compute dtype
        gap, gradient, _ = value_and_gradient(
            logits_fn, point,
            lambda logits: tf.gather(logits, labels, batch_dims=1) - tf.gather(logits, targets, batch_dims=1))
        return gap, _flat(gradient)

    def body(k, point, best, best_norm):
        gap, w = linearise(point)
        p1 = _flat(point)
        # hyperplane w . z = w . p1 - gap; from p1 the change of w . d needed is -gap, from x0 it is
        # w . (p1 - x0) - gap
        both = box_hyperplane_projection(tf.concat([p1, x0], 0), tf.concat([w, w], 0),
                                         tf.concat([-gap, tf.reduce_sum(w * (p1 - x0), 1) - gap], 0), norm)
        d1, d2 = both[:batch], both[batch:]
        size = (tf.reduce_max(tf.abs(both), axis=1) if norm == "linf"
                else tf.sqrt(tf.reduce_sum(tf.square(both), axis=1)))
        size = tf.maximum(size, 1e-8)
        s1, s2 = size[:batch], size[batch:]
        alpha = tf.clip_by_value(s1 / (s1 + s2), 0.0, alpha_max)[:, None]
        new = tf.clip_by_value((p1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        new_image = tf.reshape(new, tf.shape(x))
        wrong = tf.not_equal(tf.argmax(logits_fn(new_image), -1, output_type=tf.int32), labels)
        distance = flat_norm(new_image - x, norm)
        best, best_norm = parts.keep_best((best, best_norm), (new_image, distance), wrong & (distance < best_norm))
        pulled = x0 + (new - x0) * beta
        new = tf.where(wrong[:, None], pulled, new)
        return k + 1, tf.reshape(new, tf.shape(x)), best, best_norm

    point = x if start is None else tf.convert_to_tensor(start, tf.float32)
    state = (tf.constant(0), point, x, tf.fill([batch], float("inf")))
    _, _, best, best_norm = while_loop(lambda k, *_: k < steps, body, state)
    return best, best_norm


def _restart_start(x, best_norm, norm, eps, keys, stream):
    """A restart's random start: half the best norm so far (capped at `eps` when given) around x."""
    radius = best_norm if eps is None else tf.minimum(best_norm, eps)
    radius = tf.where(tf.math.is_finite(radius), radius, 0.0) * 0.5
    restart_keys = None if keys is None else rng.fold(keys, stream)
    direction = parts.random_start(x, 1.0, norm, keys=restart_keys, kind="sphere", stream=1)  # a unit vector
    return tf.clip_by_value(x + per_example(radius, x) * direction, 0.0, 1.0)


def _fab_targeted_compact(logits_fn, x, labels, candidates, best_norm, *, norm, steps, restarts, eps, keys,
                          stop_within, **fab_args):
    """FAB-T's loop over targets and restarts, each run on the examples whose best norm is still above
    `stop_within` (0 when None), as the reference's `perturb` (see `fab_targeted`)."""
    threshold = 0.0 if stop_within is None else tf.cast(stop_within, tf.float32)

    def one_target(index, best, best_norm):
        target = tf.gather(candidates, index, axis=1)
        for restart in range(restarts):
            todo = tf.where(best_norm > threshold)[:, 0]
            sub_x, sub_norm = tf.gather(x, todo), tf.gather(best_norm, todo)
            sub_keys = None if keys is None else tf.gather(keys, todo)
            start = (None if restart == 0
                     else _restart_start(sub_x, sub_norm, norm, eps, sub_keys, index * restarts + restart))
            candidate, candidate_norm = fab_run(logits_fn, sub_x, tf.gather(labels, todo), tf.gather(target, todo),
                                                norm=norm, steps=steps, start=start, **fab_args)
            sub_best, sub_norm = parts.keep_best((tf.gather(best, todo), sub_norm), (candidate, candidate_norm),
                                                 candidate_norm < sub_norm)
            best = tf.tensor_scatter_nd_update(best, todo[:, None], sub_best)
            best_norm = tf.tensor_scatter_nd_update(best_norm, todo[:, None], sub_norm)
        return index + 1, best, best_norm

    _, best, best_norm = while_loop(
        lambda index, _, norms: (index < candidates.shape[1]) & tf.reduce_any(norms > threshold), one_target,
        (tf.constant(0), x, best_norm))
    return best, best_norm


def fab_targeted(logits_fn: Callable, x, labels, *, norm="linf", steps=100, num_targets=9, restarts=1,
                 alpha_max=0.1, eta=1.05, beta=0.9, eps: Optional[float] = None, keys=None,
                 stop_within: Optional[float] = None, compact: bool = True):
    """FAB-T: returns (x_adv, norms). Per example the smallest-norm misclassified point found over the targets
    (the top-`num_targets` wrong classes by clean logit) and restarts, with its distance to x; x and +inf
    where none was found; x and 0 where x is already misclassified.

    `stop_within` (the radius the result is scored at, AutoAttack's eps): an example whose best norm is within it
    is broken and attacked no further, so its point is the first one found within the radius rather than the
    smallest over all targets, as in the reference FAB-T (fab_base.py `perturb`, targeted: `ind_to_fool =
    acc.nonzero()` before every target and restart, `acc_curr = max(acc_curr, res > eps)`). `compact`
    (default) runs each target and restart on the examples still open only (gathered, results scattered back;
    without `stop_within` those are the examples not misclassified clean: no run can beat a norm of 0), and
    stops when none is left; an example's runs are the ones it gets in the whole batch, so which examples end
    within `stop_within` does not change (with `keys`; stateful restart draws differ)."""
    _check(norm, steps, num_targets, restarts)
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    clean_logits = tf.cast(logits_fn(x), tf.float32)
    num_classes = clean_logits.shape[-1]
    if num_classes is None or num_classes < 2:
        raise ValueError("FAB-T needs a static number of classes, at least 2")
    candidates = top_wrong_classes(clean_logits, labels, min(num_targets, num_classes - 1))
    clean_wrong = tf.not_equal(tf.argmax(clean_logits, -1, output_type=tf.int32), labels)
    best_norm = tf.where(clean_wrong, 0.0, tf.fill([tf.shape(x)[0]], float("inf")))
    if compact and not in_xla_context():  # XLA: static shapes, no compaction
        return _fab_targeted_compact(logits_fn, x, labels, candidates, best_norm, norm=norm, steps=steps,
                                     restarts=restarts, eps=eps, keys=keys, stop_within=stop_within,
                                     alpha_max=alpha_max, eta=eta, beta=beta)
    # one graph loop over the targets: FAB's loop is traced once, not once per target (9x the tracing and
    # graph-optimisation time); restart streams index * restarts + restart as before, so the same restarts
    def one_target(index, best, best_norm):
        target = tf.gather(candidates, index, axis=1)
        for restart in range(restarts):
            start = None if restart == 0 else _restart_start(x, best_norm, norm, eps, keys, index * restarts + restart)
            candidate, candidate_norm = fab_run(logits_fn, x, labels, target, norm=norm, steps=steps,
                                                alpha_max=alpha_max, eta=eta, beta=beta, start=start)
            better = candidate_norm < best_norm
            if compact:  # under XLA: every example attacked, the compacted result (within the radius: kept)
                better &= best_norm > (0.0 if stop_within is None else stop_within)
            best, best_norm = parts.keep_best((best, best_norm), (candidate, candidate_norm), better)
        return index + 1, best, best_norm

    _, best, best_norm = while_loop(lambda index, *_: index < candidates.shape[1], one_target,
                                    (tf.constant(0), x, best_norm))
    return best, best_norm
