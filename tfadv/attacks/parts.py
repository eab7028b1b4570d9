"""The parts the attacks are composed of, each defined once (the shape of DeepMind's adversarial_robustness
attacks: an initialiser, a projected optimiser loop, restarts keeping the best; the margin is in `losses`):

- `random_start`: one keyed random start (uniform in the ball, on the sphere, or a small Gaussian), drawn from
  per-example keys (`rng`), a stateless seed or TensorFlow's stateful generator;
- `steepest_step`, `constrain`, `projected_step`, `projected_ascent`: the projected-step loop (a steepest-ascent
  step, projection onto the eps-ball, clipping to [0, 1]) that FGSM, PGD and TRADES' KL ascent run, and whose
  step and constraint APGD's momentum iteration is built from;
- `keep_best` (+ the rule `succeeds_or_scores_higher`): per example, the better of two results, which is how
  restarts and targets are merged (PGD, APGD, APGD-T, FAB-T) and how runs keep their best iterate.

Pure functions over [0, 1] pixels [B, ...]; perturbations and gradients are float32.
"""

from __future__ import annotations

import tensorflow as tf

from tfadv.attacks import rng
from tfadv.attacks.ops import TINY, check_norm, clip_to_box, flat_norm, per_example, project, repeat

START_KINDS = ("ball", "sphere", "normal")
_DIRECTION_STREAM = {"linf": 0, "l2": 1, "l1": 2}  # + `stream`; the l1 signs on the next stream
_RADIUS_STREAM = 4


# -- the random start --------------------------------------------------------------------------------------------

def _draw(x, kind, keys, seed, stream, shape=None, minval=0.0, maxval=1.0):
    """[B, *shape] float32 draws (`shape` default: an example's shape): `kind` "uniform" in [minval, maxval) or
    "normal". From `keys` ([B] int64) on `stream`; else from a stateless `seed` (a shape-[2] tensor: used as it
    is for stream `first`, folded with the stream otherwise); else TensorFlow's stateful generator (`seed` None or
    an int op seed)."""
    per = tf.shape(x)[1:] if shape is None else shape
    if keys is not None:
        return (rng.uniform(keys, per, stream=stream, minval=minval, maxval=maxval) if kind == "uniform"
                else rng.normal(keys, per, stream=stream))
    full = tf.shape(x) if shape is None else tf.concat([tf.shape(x)[:1], tf.cast(shape, tf.int32)], 0)
    if seed is None or isinstance(seed, int):
        return (tf.random.uniform(full, minval, maxval, dtype=tf.float32, seed=seed) if kind == "uniform"
                else tf.random.normal(full, dtype=tf.float32, seed=seed))
    return (tf.random.stateless_uniform(full, seed, minval, maxval) if kind == "uniform"
            else tf.random.stateless_normal(full, seed))


def _fold_seed(seed, stream):
    """The seed of an auxiliary draw (a radius, l1 signs): a stateless `seed` folded with `stream`; an op seed is
    for the direction only (two stateful ops with one op seed draw the same numbers in a graph)."""
    if seed is None or isinstance(seed, int):
        return None
    return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), stream)


def random_start(x, radius, norm, seed=None, keys=None, *, kind: str = "ball", stream: int = 0):
    """A random perturbation [B, ...] of `x` (not clipped to the box), per `kind`:

    - "ball" (PGD, FGSM-RS, BAT, SSAT): uniform in the `radius`-ball of `norm`: uniform per coordinate for
      l-inf; for l2 / l1 a uniform direction (Gaussian / Laplace, normalised) times radius * u^(1/d);
    - "sphere" (APGD's start, FAB's restarts): on the sphere, radius * t / ||t|| with t uniform in [-1, 1]^d
      (l-inf) or Gaussian (l2), as AutoAttack's reference code;
    - "normal" (TRADES): radius * N(0, 1) per coordinate (`norm` unused).

    `radius`: a scalar or, per example, [B, 1, ...]. `keys` ([B] int64, `rng.example_keys`) make every example
    draw its own numbers whatever batch it is in; streams: the direction on 0 (l-inf), 1 (l2 / normal: 0) or 2
    and 3 (l1), the ball's radius on 4, all shifted by `stream`. Without keys: `seed` a shape-[2] stateless
    seed, or None / an int op seed for TensorFlow's stateful generator.
    """
    if kind not in START_KINDS:
        raise ValueError(f"unknown random start {kind!r}; valid: {', '.join(START_KINDS)}")
    if kind == "normal":
        return radius * _draw(x, "normal", keys, seed, stream)
    check_norm(norm)
    if kind == "sphere" and norm == "l1":
        raise ValueError("the sphere start is drawn for l-inf and l2")
    direction_stream = _DIRECTION_STREAM[norm] + stream
    if norm == "linf":
        if kind == "ball":
            return _draw(x, "uniform", keys, seed, direction_stream, minval=-radius, maxval=radius)
        t = _draw(x, "uniform", keys, seed, direction_stream, minval=-1.0, maxval=1.0)
    elif norm == "l2":
        t = _draw(x, "normal", keys, seed, direction_stream)
    else:  # a Laplace direction: uniform on the l1 sphere after normalisation
        magnitude = -tf.math.log(1.0 - _draw(x, "uniform", keys, seed, direction_stream))
        signs = _draw(x, "uniform", keys, _fold_seed(seed, direction_stream + 1), direction_stream + 1)
        t = magnitude * tf.where(signs < 0.5, -1.0, 1.0)
    if kind == "sphere":
        return radius * t / per_example(flat_norm(t, norm) + TINY, x)
    dims = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    direction = t / per_example(flat_norm(t, norm) + TINY, x)
    size = tf.pow(_draw(x, "uniform", keys, _fold_seed(seed, _RADIUS_STREAM + stream), _RADIUS_STREAM + stream,
                        shape=[]), 1.0 / dims)
    return direction * per_example(size, x) * radius


def random_init(x, eps, norm, seed=None, keys=None):
    """A uniform random point of the eps-ball: `random_start` with kind "ball" (PGD's start)."""
    return random_start(x, eps, norm, seed, keys)


# -- the projected-step loop -------------------------------------------------------------------------------------

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


def constrain(x, delta, eps, norm):
    """`delta` projected onto the eps-ball of `norm`, then shrunk so that x + delta lies in [0, 1] (shrinking
    coordinates toward 0 never leaves the ball): the threat model every iterate is brought back into."""
    return clip_to_box(x, project(delta, eps, norm))


def projected_step(x, delta, gradient, *, eps, step_size, norm, l1_sparsity: float = 0.95):
    """One step of the loop: delta + the steepest step for `gradient` (taken at x + delta), constrained."""
    step = steepest_step(gradient, step_size, norm, x + delta, l1_sparsity)
    return constrain(x, delta + step, eps, norm)


def projected_ascent(x, start, gradient_fn, *, eps, step_size, steps, norm, l1_sparsity: float = 0.95):
    """x + delta after `steps` projected steps from the perturbation `start`, as a graph loop:
    delta <- constrain(delta + steepest_step(gradient_fn(x + delta))). `gradient_fn(x_adv)` returns the float32
    gradient [B, ...] of the objective ascended (PGD's loss, TRADES' KL)."""
    def ascend(delta):
        return projected_step(x, delta, gradient_fn(x + delta), eps=eps, step_size=step_size, norm=norm,
                              l1_sparsity=l1_sparsity)

    return x + repeat(ascend, start, steps)


# -- keeping the best --------------------------------------------------------------------------------------------

def keep_best(best, candidate, better):
    """Per example, the entries of `candidate` where `better` ([B] bool), else those of `best`: tuples of
    [B, ...] tensors in the same order (e.g. (x, objective, success) or (x, norm))."""
    return tuple(tf.where(per_example(better, new), new, old) for old, new in zip(best, candidate))


def succeeds_or_scores_higher(best, candidate):
    """[B] bool: `candidate` (x, value, success) beats `best` (x, value, success): it succeeds where `best` did
    not, or both succeed or both fail and its value is higher (a success is never replaced by a failure)."""
    _, value, won = candidate
    _, best_value, best_won = best
    return (won & ~best_won) | ((won == best_won) & (value > best_value))


def scored(logits_fn, candidate, value_fn, success_fn):
    """(candidate, value_fn(logits) [B], success_fn(logits) [B]) from one forward pass at `candidate`: what
    `succeeds_or_scores_higher` compares."""
    logits = logits_fn(candidate)
    return candidate, value_fn(logits), success_fn(logits)
