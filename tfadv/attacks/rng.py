"""Per-example counter-based random numbers, so that attack results do not depend on batching.

An attack's random choices (random starts, Square's windows and signs, FAB's restarts) are drawn from
`keys`: one int64 per example, derived from the example's index in the evaluation set and a global seed by
`example_keys`. Every random number an example sees is a hash of (its key, a stream number, a counter), so
the same example gets the same numbers whichever batch it lands in, whatever the batch size and whichever
other examples are still being attacked. The forward passes are per-example too (inference mode), so robust
accuracy is independent of the batch size (tested).

The hash is three rounds of xor-shift-multiply on 32-bit words held in int64 (multipliers below 2^31, so
products never overflow int64); this is a statistical-quality mixer for attack randomness, not for
cryptography. With `keys=None` the functions fall back to TensorFlow's stateful generators (training paths,
where per-example reproducibility does not matter).
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow as tf

# Plain tensor code without data-dependent Python control flow: autograph need not convert it (converting it on
# every call made tracing an attack with many draws, e.g. Square-L2's initial grid, take seconds).
_plain = tf.autograph.experimental.do_not_convert

_MASK = 0xFFFFFFFF
_MULTIPLIERS = (0x7FEB352D, 0x68E31DA5, 0x1B56C4E9)
_GOLDEN = 0x9E3779B9


@_plain
def _mix(x):
    """A 32-bit integer hash (values in [0, 2^32) held as int64)."""
    for multiplier in _MULTIPLIERS:
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))
        x = tf.bitwise.bitwise_and(x * multiplier, _MASK)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 15))


@_plain
def _as_word(value):
    return tf.bitwise.bitwise_and(tf.cast(value, tf.int64), _MASK)


@_plain
def fold(keys, stream):
    """New keys for a sub-stream `stream` (Python int or int tensor, e.g. a restart or iteration index)."""
    stream = _as_word(stream)
    return _mix(tf.bitwise.bitwise_xor(_as_word(keys), _mix(tf.bitwise.bitwise_and(stream + _GOLDEN, _MASK))))


@_plain
def example_keys(indices, seed: int = 0, salt: int = 0):
    """[B] int64 keys for examples at positions `indices` of the evaluation set, under `seed` and `salt`
    (e.g. one salt per attack, so that two attacks do not share random starts)."""
    base = _mix(_as_word(tf.constant(seed, tf.int64) * 0x2545F491 + salt))
    return fold(tf.fill(tf.shape(indices), base), indices)


@_plain
def _bits(keys, shape: Sequence, stream):
    """[B, *shape] 24-bit integers (int64) from per-example keys."""
    return _bits_of_folded(fold(keys, stream), shape)


@_plain
def _bits_of_folded(keys, shape: Sequence):
    """[B, *shape] 24-bit integers (int64) from keys already folded with their stream."""
    size = tf.reduce_prod(tf.cast(shape, tf.int64))
    counters = tf.range(size, dtype=tf.int64)
    words = _mix(tf.bitwise.bitwise_xor(keys[:, None], _mix(counters)[None, :]))
    words = _mix(tf.bitwise.bitwise_and(words + keys[:, None], _MASK))
    out_shape = tf.concat([tf.shape(keys, out_type=tf.int64), tf.cast(shape, tf.int64)], axis=0)
    return tf.reshape(tf.bitwise.right_shift(words, 8), out_shape)


@_plain
def uniform(keys: Optional[tf.Tensor], shape: Sequence, stream=0, minval=0.0, maxval=1.0, batch=None):
    """[B, *shape] float32 uniform in [minval, maxval). `batch` is needed only when `keys` is None."""
    if keys is None:
        return tf.random.uniform(tf.concat([[batch], tf.cast(shape, tf.int32)], 0), minval, maxval)
    unit = tf.cast(_bits(keys, shape, stream), tf.float32) * (1.0 / (1 << 24))
    return minval + (maxval - minval) * unit


@_plain
def normal(keys: Optional[tf.Tensor], shape: Sequence, stream=0, batch=None):
    """[B, *shape] float32 standard normal (Box-Muller on two uniform streams)."""
    if keys is None:
        return tf.random.normal(tf.concat([[batch], tf.cast(shape, tf.int32)], 0))
    u1 = uniform(keys, shape, _pair(stream, 1))
    u2 = uniform(keys, shape, _pair(stream, 2))
    radius = tf.sqrt(-2.0 * tf.math.log(1.0 - u1))  # 1 - u1 in (0, 1]
    return radius * tf.cos(2.0 * 3.141592653589793 * u2)


@_plain
def _pair(stream, sub):
    return _as_word(stream) * 7919 + sub


@_plain
def randint(keys: Optional[tf.Tensor], shape: Sequence, high, stream=0, batch=None):
    """[B, *shape] int32 uniform in [0, high) (`high` an int or an int tensor, at most 2^24)."""
    high_f = tf.cast(high, tf.float32)
    values = uniform(keys, shape, stream, batch=batch)
    return tf.minimum(tf.cast(tf.floor(values * high_f), tf.int32), tf.cast(high, tf.int32) - 1)


@_plain
def sign(keys: Optional[tf.Tensor], shape: Sequence, stream=0, batch=None):
    """[B, *shape] float32 in {-1, +1} with equal probability."""
    return tf.where(uniform(keys, shape, stream, batch=batch) < 0.5, -1.0, 1.0)


@_plain
def signs_per_stream(keys: Optional[tf.Tensor], shape: Sequence, streams: Sequence[int], batch=None):
    """[S, B, *shape]: `sign(keys, shape, stream)` for each of the S `streams`, drawn in one call (the same
    values as S calls; a graph with one draw per stream is S times larger to build)."""
    if keys is None:
        return tf.where(tf.random.uniform(tf.concat([[len(streams), batch], tf.cast(shape, tf.int32)], 0)) < 0.5,
                        -1.0, 1.0)
    folded = fold(keys[None, :], tf.constant(streams, tf.int64)[:, None])  # [S, B]
    bits = _bits_of_folded(tf.reshape(folded, [-1]), shape)  # [S * B, *shape]
    bits = tf.reshape(bits, tf.concat([tf.shape(folded, out_type=tf.int64), tf.cast(shape, tf.int64)], 0))
    unit = tf.cast(bits, tf.float32) * (1.0 / (1 << 24))
    return tf.where(unit < 0.5, -1.0, 1.0)
