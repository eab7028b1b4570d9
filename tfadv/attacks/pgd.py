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

NORMS = ("linf", "l2", "l1")
_TINY = 1e-12


def _check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def _flat_norm(delta, norm):
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == "linf":
        value = tf.reduce_max(tf.abs(flat), axis=1)
    elif norm == "l2":
        value = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1))
    else:
        value = tf.reduce_sum(tf.abs(flat), axis=1)
    return value


def _per_example(values, like):
    """Reshapes a [B] vector to broadcast against a [B, ...] tensor.

    With a static rank the target shape is a Python list, so a static batch size (e.g. 1) survives the reshape;
    a shape computed as a tensor would give [None, 1, ...], and broadcasting that against [1, H, W, C] has an
    unknown batch, which breaks `tf.while_loop`'s shape check when the batch holds a single example.
    """
    rank = like.shape.rank
    if rank is not None:
        return tf.reshape(values, [-1] + [1] * (rank - 1))
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], axis=0))


def _keep_shape(new, old):
    if isinstance(new, tf.Tensor) and isinstance(old, tf.Tensor) and not tf.executing_eagerly():
        new = tf.ensure_shape(new, old.shape)
    return new


def while_loop(cond, body, loop_vars):
    """`tf.while_loop` (one iteration at a time) whose loop variables keep the static shapes they enter with.

    The attacks' loop variables are per-example tensors of the batch's shape; an op in the body whose static
    shape inference loses the batch size (broadcasting [None, 1] against [1, D] gives [None, D]) would make the
    loop refuse a batch of one. The body's outputs are pinned to the entry shapes (a runtime-checked
    `tf.ensure_shape`), which is what they are at run time.
    """
    def pinned(*state):
        return tf.nest.map_structure(_keep_shape, tuple(body(*state)), tuple(state))

    return tf.while_loop(cond, pinned, loop_vars, parallel_iterations=1)


def perturbation_norm(delta, norm):
    """The per-example norm of a perturbation [B, ...] -> [B]."""
    _check_norm(norm)
    return _flat_norm(delta, norm)


def _project_l1(delta, eps):
    """Euclidean projection onto the l1 ball (Duchi et al., 2008), per example."""
    shape = tf.shape(delta)
    flat = tf.reshape(delta, [shape[0], -1])
    magnitude = tf.abs(flat)
    inside = tf.reduce_sum(magnitude, axis=1) <= eps
    ordered = tf.sort(magnitude, axis=1, direction="DESCENDING")
    cumulative = tf.cumsum(ordered, axis=1)
    index = tf.cast(tf.range(1, tf.shape(flat)[1] + 1), flat.dtype)
    condition = ordered * index > (cumulative - eps)
    rho = tf.reduce_max(tf.where(condition, tf.cast(tf.range(tf.shape(flat)[1]), tf.int32)[None, :], 0), axis=1)
    theta = (tf.gather(cumulative, rho, axis=1, batch_dims=1) - eps) / tf.cast(rho + 1, flat.dtype)
    projected = tf.sign(flat) * tf.nn.relu(magnitude - theta[:, None])
    flat = tf.where(inside[:, None], flat, projected)
    return tf.reshape(flat, shape)


def project(delta, eps, norm):
    """Projects perturbations onto the eps-ball of `norm`."""
    _check_norm(norm)
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    if norm == "l2":
        size = _flat_norm(delta, "l2")
        factor = tf.minimum(1.0, tf.reshape(eps, [-1]) / (size + _TINY))  # eps scalar or [B, 1, ...]
        return delta * _per_example(factor, delta)
    return _project_l1(delta, eps)


def clip_to_box(x, delta):
    """Keeps x + delta inside [0, 1] by adjusting delta."""
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


def random_init(x, eps, norm, seed: Optional[int] = None, keys=None):
    """A uniform random point of the eps-ball (uniform per coordinate for l-inf; uniform radius^d for l2/l1).

    With `keys` ([B] int64 per-example keys from `rng.example_keys`) every example draws its own numbers,
    independent of the batch it is in; otherwise TensorFlow's stateful generator (with op `seed`) is used.
    """
    _check_norm(norm)
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
    direction = direction / _per_example(_flat_norm(direction, norm) + _TINY, x)
    radius = tf.pow(tf.random.uniform([tf.shape(x)[0]], dtype=tf.float32), 1.0 / dims)
    return direction * _per_example(radius, x) * eps  # eps: a scalar or per example [B, 1, ...]


def _keyed_init(x, eps, norm, keys):
    shape = tf.shape(x)[1:]
    if norm == "linf":
        return rng.uniform(keys, shape, stream=0, minval=-eps, maxval=eps)
    dims = tf.cast(tf.reduce_prod(shape), tf.float32)
    if norm == "l2":
        direction = rng.normal(keys, shape, stream=1)
    else:
        direction = -tf.math.log(1.0 - rng.uniform(keys, shape, stream=2)) * rng.sign(keys, shape, stream=3)
    direction = direction / _per_example(_flat_norm(direction, norm) + _TINY, x)
    radius = tf.pow(rng.uniform(keys, [], stream=4), 1.0 / dims)
    return direction * _per_example(radius, x) * eps


def steepest_step(gradient, step_size, norm, x_adv=None, l1_sparsity: float = 0.95):
    """The steepest-ascent step of length `step_size` in `norm` for `gradient`.

    l1 uses the sparse step of Tramer & Boneh (SLIDE): the top (1 - l1_sparsity) share of coordinates by
    |gradient| (at least one), skipping coordinates already pushed against the [0,1] box.
    """
    if norm == "linf":
        return step_size * tf.sign(gradient)
    if norm == "l2":
        return step_size * gradient / _per_example(_flat_norm(gradient, "l2") + _TINY, gradient)
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


def _power_of_two_scale(gradient):
    """Per example [B] 2^-floor(log2(max |gradient|)) (1 where the gradient is zero): multiplying by it puts the
    largest entry in [1, 2) and is exact in floating point."""
    largest = tf.reduce_max(tf.abs(tf.reshape(gradient, [tf.shape(gradient)[0], -1])), axis=1)
    exponent = tf.floor(tf.math.log(tf.where(largest > 0.0, largest, 1.0)) / tf.math.log(2.0))
    return tf.pow(2.0, -tf.clip_by_value(exponent, -120.0, 120.0))


def value_and_gradient(logits_fn, x, objective_fn, independent: bool = True):
    """(values [B] float32, d sum(values) / d x float32, logits float32) for `objective_fn(logits) -> [B]`.

    The objective is computed in float32 from the logits cast to float32, and its gradient at the logits is
    taken in float32. Under mixed precision the network backpropagates in float16 / bfloat16, where a small
    loss gradient (a confidently classified example) underflows to zero; so each example's logit gradient is
    scaled by a power of two bringing its largest entry into [1, 2) before it enters the network and the
    input gradient is unscaled in float32 afterwards (exact: a float32 model gives the same bits as an
    unscaled backward pass). `x` stays float32; a model casts it to its compute dtype inside.

    Per-example scales are exact only when the examples do not interact in the forward pass. With
    `independent=False` (a forward pass that couples the batch, e.g. BatchNorm in training mode inside a
    training attack, `--attack_bn_mode=train`) one power of two for the whole batch is used instead, which is
    exact for any model (and protects the batch's largest gradients from underflow).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        raw = logits_fn(x)
    logits = tf.cast(raw, tf.float32)
    with tf.GradientTape() as inner:
        inner.watch(logits)
        values = tf.cast(objective_fn(logits), tf.float32)
        total = tf.reduce_sum(values)
    upstream = inner.gradient(total, logits)
    if upstream is None:
        return values, tf.zeros_like(x), logits
    scale = _power_of_two_scale(upstream)
    if not independent:
        scale = tf.fill(tf.shape(scale), tf.reduce_min(scale))  # the batch's largest entry into [1, 2)
    gradient = tape.gradient(raw, x, output_gradients=tf.cast(upstream * scale[:, None], raw.dtype))
    if gradient is None:  # a model with no gradient path to its input (e.g. stop_gradient): a zero step
        return values, tf.zeros_like(x), logits
    return values, tf.cast(gradient, tf.float32) / _per_example(scale, x), logits


def _check_eot(eot_iter):
    if not isinstance(eot_iter, int) or isinstance(eot_iter, bool) or eot_iter < 1:
        raise ValueError(f"eot_iter must be a positive int, got {eot_iter!r}")


def expected_value_and_gradient(logits_fn, x, objective_fn, eot_iter: int = 1, independent: bool = True):
    """Expectation over Transformation as AutoAttack's APGD does it: the gradient averaged over `eot_iter`
    forward/backward passes of a possibly randomised `logits_fn`; the values and logits of the *last* pass
    (the reference keeps the last pass's loss for its step-size and best-point bookkeeping). float32;
    eot_iter=1 is one plain pass."""
    _check_eot(eot_iter)
    values, gradient, logits = value_and_gradient(logits_fn, x, objective_fn, independent)
    if eot_iter == 1:
        return values, gradient, logits

    def body(i, _, gradient, __):
        values, more_gradient, logits = value_and_gradient(logits_fn, x, objective_fn, independent)
        return i + 1, values, gradient + more_gradient, logits

    _, values, gradient, logits = while_loop(lambda i, *_: i < eot_iter, body,
                                             (tf.constant(1), values, gradient, logits))
    return values, gradient / float(eot_iter), logits


def input_gradient(logits_fn, x, labels, loss="ce", targets=None):
    """(objective [B], gradient d objective / d x), the objective summed over the batch for the gradient;
    float32 whatever the model's compute dtype (see `value_and_gradient`)."""
    values, gradient, _ = value_and_gradient(logits_fn, x, lambda logits: objective(loss, logits, labels, targets))
    return values, gradient


def fgsm(logits_fn: Callable, x, labels, *, eps, loss="ce", targets=None, norm="linf"):
    """Fast gradient (sign) method: one step of size eps from the clean input."""
    _check_norm(norm)
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


def repeat(body, value, times):
    """`value = body(value)` `times` times, as a graph loop (Keras compiles train_step without AutoGraph)."""
    return while_loop(lambda i, _: i < times, lambda i, v: (i + 1, body(v)), (tf.constant(0), value))[1]


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
    _check_norm(norm)
    _check_eot(eot_iter)
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
        best = tf.where(_per_example(better, x), candidate, best)
        best_value = tf.where(better, value, best_value)
        best_won = best_won | won
    return best
