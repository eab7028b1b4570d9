"""The parts every attack shares, defined once: norms, projection onto the eps-ball, clipping to the pixel box,
per-example reshapes, graph loops, loss-scaled input gradients, and the wrong-class logits (the highest other
logit, the most confusing and the least likely class, the top wrong classes).

Pure functions over [0,1] pixels [B, ...] and logits [B, K]; objectives and gradients are float32.
"""

from __future__ import annotations

import tensorflow as tf

NORMS = ("linf", "l2", "l1")
TINY = 1e-12


# -- norms, projection, box --------------------------------------------------------------------------------------

def check_norm(norm):
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid: {', '.join(NORMS)}")


def flat_norm(delta, norm):
    """The per-example norm [B] of `delta` [B, ...] (no check of `norm`: l1 for anything but linf / l2)."""
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == "linf":
        value = tf.reduce_max(tf.abs(flat), axis=1)
    elif norm == "l2":
        value = tf.sqrt(tf.reduce_sum(tf.square(flat), axis=1))
    else:
        value = tf.reduce_sum(tf.abs(flat), axis=1)
    return value


def perturbation_norm(delta, norm):
    """The per-example norm of a perturbation [B, ...] -> [B]."""
    check_norm(norm)
    return flat_norm(delta, norm)


def per_example(values, like):
    """Reshapes a [B] vector to broadcast against a [B, ...] tensor.

    With a static rank the target shape is a Python list, so a static batch size (e.g. 1) survives the reshape;
    a shape computed as a tensor would give [None, 1, ...], and broadcasting that against [1, H, W, C] has an
    unknown batch, which breaks `tf.while_loop`'s shape check when the batch holds a single example.
    """
    rank = like.shape.rank
    if rank is not None:
        return tf.reshape(values, [-1] + [1] * (rank - 1))
    return tf.reshape(values, tf.concat([[-1], tf.ones([tf.rank(like) - 1], tf.int32)], axis=0))


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
    check_norm(norm)
    if norm == "linf":
        return tf.clip_by_value(delta, -eps, eps)
    if norm == "l2":
        size = flat_norm(delta, "l2")
        factor = tf.minimum(1.0, tf.reshape(eps, [-1]) / (size + TINY))  # eps scalar or [B, 1, ...]
        return delta * per_example(factor, delta)
    return _project_l1(delta, eps)


def clip_to_box(x, delta):
    """Keeps x + delta inside [0, 1] by adjusting delta."""
    return tf.clip_by_value(x + delta, 0.0, 1.0) - x


# -- graph loops -------------------------------------------------------------------------------------------------

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


def in_xla_context() -> bool:
    """True while tracing for XLA (`tf.function(jit_compile=True)`): there shapes are static, so an attack
    cannot shrink its batch to the points still robust (a gathered subset fails XLA's dynamic reshapes) and runs
    without compaction. TensorFlow has no public test for it; this is the one its own control flow uses."""
    from tensorflow.python.ops import control_flow_util  # private: no public equivalent

    return not tf.executing_eagerly() and control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def repeat(body, value, times):
    """`value = body(value)` `times` times, as a graph loop (Keras compiles train_step without AutoGraph)."""
    return while_loop(lambda i, _: i < times, lambda i, v: (i + 1, body(v)), (tf.constant(0), value))[1]


# -- gradients ---------------------------------------------------------------------------------------------------

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
    return values, scaled_input_gradient(tape, raw, x, upstream, independent), logits


def scaled_input_gradient(tape, raw_logits, x, upstream, independent: bool = True):
    """d / d x (float32) of an objective whose float32 gradient at `raw_logits` (the network's output, in its
    compute dtype, recorded by `tape` from `x`) is `upstream` [B, K]: the upstream gradient is scaled by a power of
    two per example (one for the batch if not `independent`) before the backward pass and unscaled after, so a
    float16 / bfloat16 backward pass does not underflow (exact; float32 gives the same bits). A model with no
    gradient path to its input gives zeros."""
    scale = _power_of_two_scale(upstream)
    if not independent:
        scale = tf.fill(tf.shape(scale), tf.reduce_min(scale))  # the batch's largest entry into [1, 2)
    gradient = tape.gradient(raw_logits, x, output_gradients=tf.cast(upstream * scale[:, None], raw_logits.dtype))
    if gradient is None:  # e.g. stop_gradient: a zero step
        return tf.zeros_like(x, tf.float32)
    return tf.cast(gradient, tf.float32) / per_example(scale, x)


def check_eot(eot_iter):
    if not isinstance(eot_iter, int) or isinstance(eot_iter, bool) or eot_iter < 1:
        raise ValueError(f"eot_iter must be a positive int, got {eot_iter!r}")


def expected_value_and_gradient(logits_fn, x, objective_fn, eot_iter: int = 1, independent: bool = True):
    """Expectation over Transformation as AutoAttack's APGD does it: the gradient averaged over `eot_iter`
    forward/backward passes of a possibly randomised `logits_fn`; the values and logits of the *last* pass
    (the reference keeps the last pass's loss for its step-size and best-point bookkeeping). float32;
    eot_iter=1 is one plain pass."""
    check_eot(eot_iter)
    values, gradient, logits = value_and_gradient(logits_fn, x, objective_fn, independent)
    if eot_iter == 1:
        return values, gradient, logits

    def body(i, _, gradient, __):
        values, more_gradient, logits = value_and_gradient(logits_fn, x, objective_fn, independent)
        return i + 1, values, gradient + more_gradient, logits

    _, values, gradient, logits = while_loop(lambda i, *_: i < eot_iter, body,
                                             (tf.constant(1), values, gradient, logits))
    return values, gradient / float(eot_iter), logits


# -- wrong-class logits ------------------------------------------------------------------------------------------

def masked_logits(logits, labels, fill="lowest"):
    """`logits` with each example's `labels` entry replaced by the dtype's lowest ("lowest": it never wins a
    max / top-k) or highest ("highest": it never wins a min) value, so that only the wrong classes compete."""
    mask = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    value = {"lowest": logits.dtype.min, "highest": logits.dtype.max}[fill]
    return tf.where(mask, tf.fill(tf.shape(logits), value), logits)


def top_wrong_logit(logits, labels):
    """[B] the highest logit among the classes other than `labels` (max_{j != y} z_j)."""
    return tf.reduce_max(masked_logits(logits, labels), axis=-1)


def most_confusing(logits, labels):
    """The highest-scoring wrong class (BAT's MC target, SSAT's y')."""
    return tf.argmax(masked_logits(logits, labels), axis=-1, output_type=tf.int32)


def least_likely(logits, labels):
    """The lowest-scoring *wrong* class (BAT's LL target, paper 002 Eq. 23): never the true class, even when
    the true class has the lowest logit."""
    return tf.argmin(masked_logits(logits, labels, "highest"), axis=-1, output_type=tf.int32)


def top_wrong_classes(logits, labels, count):
    """[B, count] the `count` highest-scoring wrong classes by logit (float32), highest first."""
    return tf.math.top_k(masked_logits(tf.cast(logits, tf.float32), labels), k=count).indices
