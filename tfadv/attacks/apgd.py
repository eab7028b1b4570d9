"""Auto-PGD (Croce & Hein, 2020): APGD-CE / APGD-DLR and APGD-T on the targeted DLR loss.

"Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks", Alg. 1:

    x(1) = P(x(0) + eta grad f(x(0)))                                        first step, no momentum
    z(k+1) = P(x(k) + eta grad f(x(k)))
    x(k+1) = P(x(k) + alpha (z(k+1) - x(k)) + (1 - alpha)(x(k) - x(k-1)))    alpha = 0.75
    x_max, f_max track the highest objective; at each checkpoint w_j the step size eta (initially 2 eps) is
    halved, and the iterate restarts from x_max, if
      Condition 1: sum_{i=w_{j-1}}^{w_j-1} 1[f(x(i+1)) > f(x(i))] < rho (w_j - w_{j-1}) (the paper; the
                   reference code, which tfadv follows, tests <=), or
      Condition 2: eta(w_{j-1}) == eta(w_j) and f_max(w_{j-1}) == f_max(w_j).
    Checkpoints w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06).

Everything per example is a [B] tensor (step size, counters, flags) and the iterations run in a
`tf.while_loop`, so callers can wrap the attack in `tf.function` (or call it from a Keras train_step compiled
without AutoGraph). The checkpoint schedule depends only on the Python int `steps` and is computed in Python.

Readings (where the paper and the reference code differ or are silent):
- P is the projection onto the eps-ball followed by clipping to [0,1] (exact for l-inf; for l2 the usual
  ball-then-box approximation, as in the reference code).
- Random start as in the reference code: a uniform (l-inf) or Gaussian (l2) direction scaled onto the
  eps-sphere, clipped to [0,1].
- `steps` gradient steps (one gradient evaluation each, plus one at the start); the checkpoint test for w_j
  runs right after x(w_j) is computed and counts exactly the paper's window of w_j - w_{j-1} comparisons.
  After a restart from x_max, the "previous" objective of the next comparison is f_max (the objective of the
  point the iterate now is), and the momentum term is x_max - x(k-1) as in the reference code.
- The halving conditions as AutoAttack's reference code writes them (DESIGN reading 12: AutoAttack exactly):
  Condition 1 halves when the increases are at most rho times the window (`<=`, `check_oscillation`), and
  Condition 2 is off at the first checkpoint (the code starts `reduced_last_check` true). The paper writes a
  strict "<" and applies Condition 2 at w_1 too.
- Success is misclassification (argmax != label), also for the targeted loss, as in AutoAttack: the run
  returns, per example, the last misclassified iterate it met (the clean input if already misclassified),
  otherwise the point of highest objective.
"""

from __future__ import annotations

import collections
import math
from fractions import Fraction
from typing import Callable, Optional

import tensorflow as tf

from tfadv.attacks import parts, rng
from tfadv.attacks.losses import LOSS_NAMES, cw_margin, objective
from tfadv.attacks.ops import (check_eot, clip_to_box, expected_value_and_gradient, in_xla_context, per_example,
                               top_wrong_classes, while_loop)
from tfadv.attacks.parts import steepest_step

APGD_NORMS = ("linf", "l2")
MOMENTUM = 0.75
INITIAL_STEP = 2.0  # eta(0) = 2 eps
_FIRST_CHECKPOINT = Fraction(22, 100)
_CHECKPOINT_DECREMENT = Fraction(3, 100)
_MIN_CHECKPOINT_GAP = Fraction(6, 100)

APGDRun = collections.namedtuple("APGDRun", [
    "x_adv",            # [B, ...] last misclassified point met (or clean x if misclassified), else x_best
    "x_best",           # [B, ...] point of highest objective
    "loss_best",        # [B] f_max
    "found",            # [B] bool: a misclassified point was found
    "step_size",        # [B] final step size eta
    "step_size_trace",  # [steps, B] step size used by each step
])


def checkpoint_fractions():
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), all p_j <= 1 (exact fractions)."""
    fractions = [Fraction(0), _FIRST_CHECKPOINT]
    while True:
        gap = max(fractions[-1] - fractions[-2] - _CHECKPOINT_DECREMENT, _MIN_CHECKPOINT_GAP)
        if fractions[-1] + gap > 1:
            return fractions
        fractions.append(fractions[-1] + gap)


def checkpoints(steps: int):
    """The checkpoint iterations w_j = ceil(p_j * steps), w_0 = 0 first, duplicates (tiny `steps`) dropped."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive Python int, got {steps!r}")
    values = []
    for p in checkpoint_fractions():
        w = math.ceil(p * steps)  # exact: p is a Fraction
        if not values or w > values[-1]:
            values.append(w)
    return values


def _window_lengths(steps):
    """lengths[k] = w_j - w_{j-1} if step k is a checkpoint w_j (j >= 1), else 0; k = 0..steps."""
    lengths = [0] * (steps + 1)
    marks = checkpoints(steps)
    for previous, current in zip(marks[:-1], marks[1:]):
        lengths[current] = current - previous
    return lengths


def should_halve(increases, window, rho, halved_last, loss_best, loss_best_last):
    """Per example [B] bool: Condition 1 or Condition 2 at a checkpoint closing a window of `window` steps.

    increases: [B] count of f(x(i+1)) > f(x(i)) in the window; halved_last: eta was halved at the previous
    checkpoint (true before the first checkpoint, which switches Condition 2 off there); loss_best /
    loss_best_last: f_max now and at the previous checkpoint.
    """
    window = tf.cast(window, tf.float32)
    condition_1 = tf.cast(increases, tf.float32) <= rho * window
    condition_2 = tf.logical_not(halved_last) & (loss_best <= loss_best_last)
    return condition_1 | condition_2


def _random_start(x, eps, norm, seed, keys=None):
    """x + eps * t / ||t|| (t uniform in [-1,1]^d for l-inf, Gaussian for l2), clipped to [0,1]: the sphere
    start (`parts.random_start`), per example with `keys`, else from the stateless `seed` (or stateful)."""
    return x + clip_to_box(x, parts.random_start(x, eps, norm, seed, keys, kind="sphere"))


def _check(norm, loss, steps, restarts, rho):
    if norm not in APGD_NORMS:
        raise ValueError(f"APGD supports norm {' or '.join(APGD_NORMS)}, got {norm!r}")
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown attack loss {loss!r}; valid: {', '.join(LOSS_NAMES)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive Python int, got {steps!r}")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts!r}")
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")


def _evaluate(logits_fn, x, labels, loss, targets, eot_iter=1):
    """(objective [B] float32, d objective / d x, misclassified [B]); with `eot_iter` > 1 the gradient is the
    mean over that many passes of a (randomised) `logits_fn`, the objective and misclassification are the last
    pass's (as the reference APGD)."""
    values, gradient, logits = expected_value_and_gradient(
        logits_fn, x, lambda logits: objective(loss, logits, labels, targets), eot_iter)
    wrong = tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels)
    return values, gradient, wrong


def apgd_run(logits_fn: Callable, x, labels, *, eps, norm="linf", loss="ce", steps=100, rho=0.75, targets=None,
             seed=None, clean_wrong=None, keys=None, eot_iter: int = 1, start=None) -> APGDRun:
    """One APGD run from a random start (Algorithm 1), with its diagnostics; see `apgd` for the attack.

    `seed` is None (stateful random start) or a shape-[2] int seed for a stateless one. `clean_wrong` ([B]
    bool) marks examples the clean input already misclassifies: they keep `x` unless another misclassified
    point is met. `keys` ([B] int64 per-example keys) overrides `seed` with a batch-independent start.
    `eot_iter`: gradient averaged over that many passes, the objective the last pass's (see `apgd`). `start`
    ([B, ...]): the random start, drawn by the caller (`seed` and `keys` are then unused).
    """
    _check(norm, loss, steps, 1, rho)
    check_eot(eot_iter)
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    targets = None if targets is None else tf.cast(targets, tf.int32)
    batch = tf.shape(x)[0]
    eps = tf.cast(eps, tf.float32)

    def feasible(point):
        return x + parts.constrain(x, point - x, eps, norm)

    x_start = _random_start(x, eps, norm, seed, keys) if start is None else tf.convert_to_tensor(start, tf.float32)
    loss_start, grad_start, wrong_start = _evaluate(logits_fn, x_start, labels, loss, targets, eot_iter)
    if clean_wrong is None:
        found, x_found = wrong_start, x_start
    else:
        clean_wrong = tf.cast(clean_wrong, tf.bool)
        found = clean_wrong | wrong_start
        x_found = tf.where(per_example(wrong_start, x), x_start, x)
    eta = tf.fill([batch], INITIAL_STEP) * eps
    window_table = tf.constant(_window_lengths(steps), tf.int32)

    def body(k, state):
        (x_cur, x_prev, grad, loss_cur, eta, x_best, loss_best, grad_best, increases, halved_last,
         loss_best_last, x_found, found, trace) = state
        trace = trace.write(k - 1, eta)
        z = feasible(x_cur + steepest_step(grad, per_example(eta, x), norm))
        alpha = tf.where(k == 1, 1.0, MOMENTUM)  # the first step has no momentum
        x_new = feasible(x_cur + alpha * (z - x_cur) + (1.0 - alpha) * (x_cur - x_prev))
        loss_new, grad_new, wrong = _evaluate(logits_fn, x_new, labels, loss, targets, eot_iter)

        increases = increases + tf.cast(loss_new > loss_cur, tf.int32)
        x_best, grad_best, loss_best = parts.keep_best((x_best, grad_best, loss_best), (x_new, grad_new, loss_new),
                                                       loss_new > loss_best)
        x_found = tf.where(per_example(wrong, x), x_new, x_found)
        found = found | wrong

        window = tf.gather(window_table, k)
        at_checkpoint = tf.fill([batch], window > 0)
        halve = at_checkpoint & should_halve(increases, window, rho, halved_last, loss_best, loss_best_last)
        eta = tf.where(halve, eta / 2.0, eta)
        restart = per_example(halve, x)
        x_next = tf.where(restart, x_best, x_new)
        grad_next = tf.where(restart, grad_best, grad_new)
        loss_next = tf.where(halve, loss_best, loss_new)
        halved_last = tf.where(at_checkpoint, halve, halved_last)
        loss_best_last = tf.where(at_checkpoint, loss_best, loss_best_last)
        increases = tf.where(at_checkpoint, tf.zeros_like(increases), increases)
        return k + 1, (x_next, x_cur, grad_next, loss_next, eta, x_best, loss_best, grad_best, increases,
                       halved_last, loss_best_last, x_found, found, trace)

    state = (x_start, x_start, grad_start, loss_start, eta, x_start, loss_start, grad_start,
             tf.zeros([batch], tf.int32), tf.ones([batch], tf.bool), loss_start, x_found, found,
             tf.TensorArray(tf.float32, size=steps, element_shape=tf.TensorShape([None])))
    _, state = while_loop(lambda k, _: k <= steps, body, (tf.constant(1), state))
    (_, _, _, _, eta, x_best, loss_best, _, _, _, _, x_found, found, trace) = state
    x_adv = tf.where(per_example(found, x), x_found, x_best)
    return APGDRun(x_adv, x_best, loss_best, found, eta, trace.stack())


def _stateless_seed(seed, salt):
    """[seed, salt] as a stateless seed (salt a Python int or an int tensor, e.g. a loop index)."""
    return None if seed is None else tf.stack([tf.constant(seed, tf.int64), tf.cast(salt, tf.int64)])


def _fold(keys, stream):
    return None if keys is None else rng.fold(keys, stream)


def _keep_worst(logits_fn, labels, candidate, value_fn, best, first=None):
    """Merges `candidate` into `best` = (x, value, won) (`parts.keep_best`): first success (misclassification)
    wins, else the highest value. `best` None, or `first` a true bool tensor (the first pass of a graph loop,
    whose `best` is a placeholder): `candidate` is taken as it is."""
    scored = parts.scored(logits_fn, candidate, lambda logits: value_fn(tf.cast(logits, tf.float32)),
                          lambda logits: tf.not_equal(tf.argmax(logits, axis=-1, output_type=tf.int32), labels))
    if best is None:
        return scored
    better = parts.succeeds_or_scores_higher(best, scored)
    return parts.keep_best(best, scored, better if first is None else better | first)


def _misclassified(logits_fn, x, labels):
    return tf.not_equal(tf.argmax(logits_fn(x), axis=-1, output_type=tf.int32), labels)


def _first_success(best, merged, after_first=True):
    """`merged` where `best` = (x, value, won) has not yet won: the compacted result (a point's first success is
    kept) when every example is attacked anyway (under XLA)."""
    return parts.keep_best(merged, best, tf.logical_and(best[2], after_first))


def _gather(values, index):
    return None if values is None else tf.gather(values, index)


def _scatter(full, index, part):
    """`full` [B, ...] with its rows `index` ([n] int64) replaced by `part` [n, ...]."""
    return tf.tensor_scatter_nd_update(full, index[:, None], part)


def _run_on_still_robust(logits_fn, x, labels, best, stream, *, value_fn, targets, clean_wrong, seed, keys, first,
                         **run_args):
    """One APGD run (random-start stream `stream`) on the examples of `best` = (x, value, won) that no earlier run
    has fooled, merged into `best` as `_keep_worst` merges (first success, else the highest `value_fn(logits,
    labels, targets)`); the fooled ones cost nothing, as in the reference (`autopgd_base.py`, `perturb` of
    APGDAttack and APGDAttack_targeted: `ind_to_fool = acc.nonzero()` before every run, `adv[ind_to_fool[ind_curr]]
    = adv_curr[ind_curr]`). An example's run is the one it gets in the whole batch: its start, its step sizes
    and its trajectory are its own (per-example keys, [B] step sizes, per-example forward passes)."""
    todo = tf.where(tf.logical_not(best[2]))[:, 0]
    start = None
    if keys is None and seed is not None:
        # a stateless start is drawn for the shape of the batch: drawn for the whole batch, as without compaction
        start = tf.gather(_random_start(x, run_args["eps"], run_args["norm"], _stateless_seed(seed, stream), None),
                          todo)
    sub_labels, sub_targets = tf.gather(labels, todo), _gather(targets, todo)
    run = apgd_run(logits_fn, tf.gather(x, todo), sub_labels, targets=sub_targets,
                   seed=_stateless_seed(seed, stream), clean_wrong=tf.gather(clean_wrong, todo),
                   keys=_fold(_gather(keys, todo), stream), start=start, **run_args)
    merged = _keep_worst(logits_fn, sub_labels, run.x_adv,
                         lambda logits: value_fn(logits, sub_labels, sub_targets),
                         tuple(tf.gather(part, todo) for part in best), first=first)
    return tuple(_scatter(full, todo, part) for full, part in zip(best, merged))


def apgd(logits_fn: Callable, x, labels, *, eps, norm="linf", loss="ce", steps=100, restarts=1, rho=0.75,
         targets=None, seed: Optional[int] = None, keys=None, eot_iter: int = 1, compact: bool = False):
    """APGD on `loss` ("ce": APGD-CE, "dlr": APGD-DLR, "cw"); with `targets`, the targeted version (with
    loss="dlr" the targeted DLR loss of APGD-T, which needs at least 4 classes; untargeted DLR needs 3).

    Returns adversarial inputs inside the eps-ball (`norm` "linf" or "l2") and [0,1]. Over `restarts` random
    starts an example keeps the first misclassified point, else the one with the highest objective. `seed`
    (an int) makes the random starts reproducible; `keys` ([B] int64, `rng.example_keys`) makes them
    per-example and independent of batching.

    `eot_iter` (AutoAttack's `rand` version, for randomised defences: 20): every step's gradient is the mean of
    `eot_iter` forward/backward passes of `logits_fn`; the objective that drives the step-size checkpoints and
    the best-point bookkeeping, and whether a point misclassifies, are the last pass's, as in the reference
    (Croce & Hein's `autopgd_base.py`).

    `compact` (opt-in; the reference's `perturb`), with `restarts` > 1: a restart attacks only the examples no
    earlier run has misclassified, and examples the clean input misclassifies are not attacked (they keep x); an
    example's adversarial point is the first run's that misclassified it (a single run attacks every example).
    Every example's run is the one it gets in the whole batch, so the set of misclassified outputs is the same as
    with `compact=False`, which attacks every example with every restart and keeps, among its successful runs,
    the one of highest objective (with `keys`, or with `seed`, whose starts are drawn for the whole batch either
    way; stateful draws differ). Under XLA (static shapes) every example is attacked, with the compacted result.
    Opt-in: on a loaded 2-core CPU it has not yet been measured faster; the default keeps tfadv's results.
    """
    _check(norm, loss, steps, restarts, rho)
    check_eot(eot_iter)
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    clean_wrong = _misclassified(logits_fn, x, labels)
    if compact and restarts > 1 and not in_xla_context():  # XLA: static shapes, no compaction
        batch = tf.shape(x)[0]
        best = (x, tf.fill([batch], float("-inf")), clean_wrong)
        for restart in range(restarts):
            best = _run_on_still_robust(
                logits_fn, x, labels, best, restart, value_fn=lambda logits, y, t: objective(loss, logits, y, t),
                targets=targets, clean_wrong=clean_wrong, seed=seed, keys=keys, first=tf.constant(restart == 0),
                eps=eps, norm=norm, loss=loss, steps=steps, rho=rho, eot_iter=eot_iter)
        return best[0]
    best = None
    for restart in range(restarts):
        run = apgd_run(logits_fn, x, labels, eps=eps, norm=norm, loss=loss, steps=steps, rho=rho,
                       targets=targets, seed=_stateless_seed(seed, restart), clean_wrong=clean_wrong,
                       keys=_fold(keys, restart), eot_iter=eot_iter)
        if restarts == 1:
            return run.x_adv
        merged = _keep_worst(logits_fn, labels, run.x_adv,
                             lambda logits: objective(loss, logits, labels, targets), best)
        best = merged if not compact or best is None else _first_success(best, merged)
    return tf.where(per_example(clean_wrong, x), x, best[0]) if compact else best[0]


def apgd_targeted(logits_fn: Callable, x, labels, *, eps, norm="linf", steps=100, num_targets=9, restarts=1,
                  rho=0.75, seed: Optional[int] = None, keys=None, eot_iter: int = 1, compact: bool = False):
    """APGD-T: APGD on the targeted DLR loss, once for each of the top-`num_targets` wrong classes by clean
    logit (K - 1 when there are fewer), each run starting from the clean input.

    Per example the first target (in that order) whose run misclassifies wins; unsuccessful examples keep
    the point with the highest untargeted CW margin over the targets. Needs at least 4 classes. `eot_iter` as
    in `apgd`.

    `compact` (opt-in) is the reference's APGDAttack_targeted.perturb: each target's run attacks only the
    examples no earlier target (or restart) has misclassified, examples misclassified clean are not attacked
    (they keep x), and the loop stops when every example is misclassified. An example's adversarial point is
    then its first successful run's; with `compact=False` every example is attacked by every target and keeps,
    among its successful runs, the one of highest CW margin. The set of misclassified outputs is the same
    either way (see `apgd`). Compiled by XLA (static shapes) it runs without compaction.
    """
    _check(norm, "dlr", steps, restarts, rho)
    check_eot(eot_iter)
    if not isinstance(num_targets, int) or num_targets < 1:
        raise ValueError(f"num_targets must be a positive int, got {num_targets!r}")
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    clean_logits = logits_fn(x)
    num_classes = clean_logits.shape[-1]
    if num_classes is None:
        raise ValueError("APGD-T needs a static number of classes (the last dimension of the logits)")
    if num_classes < 4:
        raise ValueError(f"APGD-T uses the targeted DLR loss, which needs at least 4 classes, got {num_classes}")
    clean_wrong = tf.not_equal(tf.argmax(clean_logits, axis=-1, output_type=tf.int32), labels)
    candidates = top_wrong_classes(clean_logits, labels, min(num_targets, num_classes - 1))
    batch = tf.shape(x)[0]

    if compact and not in_xla_context():  # XLA: static shapes, no compaction
        # one graph loop over the targets (traced once); each (target, restart) run gathers the examples still
        # robust and scatters its results back, and the loop ends early once no example is left
        def still_robust_target(index, best_x, best_value, best_won):
            best = (best_x, best_value, best_won)
            for restart in range(restarts):
                stream = index * restarts + restart
                best = _run_on_still_robust(
                    logits_fn, x, labels, best, stream, value_fn=lambda logits, y, _: cw_margin(logits, y),
                    targets=tf.gather(candidates, index, axis=1), clean_wrong=clean_wrong, seed=seed, keys=keys,
                    first=tf.equal(stream, 0), eps=eps, norm=norm, loss="dlr", steps=steps, rho=rho,
                    eot_iter=eot_iter)
            return (index + 1,) + best

        start = (tf.constant(0), x, tf.fill([batch], float("-inf")), clean_wrong)
        _, best_x, _, _ = while_loop(
            lambda index, _x, _value, won: (index < candidates.shape[1]) & tf.reduce_any(tf.logical_not(won)),
            still_robust_target, start)
        return best_x

    # one graph loop over the targets: the APGD loop is traced once, not once per target (9x the tracing and
    # graph-optimisation time); stream = index * restarts + restart as before, so the same random starts
    def one_target(index, best_x, best_value, best_won):
        best = (best_x, best_value, best_won)
        for restart in range(restarts):
            stream = index * restarts + restart
            run = apgd_run(logits_fn, x, labels, eps=eps, norm=norm, loss="dlr", steps=steps, rho=rho,
                           targets=tf.gather(candidates, index, axis=1), seed=_stateless_seed(seed, stream),
                           clean_wrong=clean_wrong, keys=_fold(keys, stream), eot_iter=eot_iter)
            merged = _keep_worst(logits_fn, labels, run.x_adv, lambda logits: cw_margin(logits, labels), best,
                                 first=tf.equal(stream, 0))
            best = _first_success(best, merged, tf.not_equal(stream, 0)) if compact else merged
        return (index + 1,) + best

    start = (tf.constant(0), x, tf.fill([batch], float("-inf")), tf.zeros([batch], tf.bool))
    _, best_x, _, _ = while_loop(lambda index, *_: index < candidates.shape[1], one_target, start)
    return tf.where(per_example(clean_wrong, x), x, best_x) if compact else best_x
