"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based random search, l-inf and l2.

Untargeted, on the margin z_y - max_{j != y} z_j (success when <= 0), as in AutoAttack-standard (p_init 0.8,
5000 queries, one run). Only the model's logits are used, never a gradient.

Queries: `queries` is the reference's `n_queries`: one query of the initial point, then up to `queries`
proposals (iterations 0 .. queries - 1, one query each), i.e. at most 1 + queries model queries per example
(AutoAttack-standard: 1 + 5000), as in AutoAttack's port for both norms and in the Square authors'
`square_attack_l2` (their `square_attack_linf` stops one proposal earlier, at n_iters queries in all; IBM ART
also makes max_iter proposals after its initial query). `SquareRun.queries` counts the initial query: 1 + the
proposals made while the example was still correctly classified (1 for an example misclassified from the
start), at most 1 + queries.

l-inf: start from vertical stripes x + eps * (+-1 per column and channel); each iteration picks a square
window of side s (from the share p of the image) and sets it to x + eps * (+-1 per channel), keeping the
proposal if it lowers the margin.
l2: start from a grid of "pseudo-Gaussian" squares (Chebyshev-ring profile, two halves of opposite sign),
each cell transposed with probability 1/2 and given a random sign per channel, normalised to ||delta|| =
eps; the grid has cells of side s = H // 5 from pixel (H - 5 s) // 2 on (8x8: 1 and 1, 7 x 7 cells; 32x32: 6
and 1, 5 x 5 cells). Each iteration empties one window and a second random window and refills the first with
its old content plus a fresh pseudo-Gaussian square (random orientation, a sign per channel), rescaled per
channel so that the total stays at eps (`l2_proposal`); kept if it lowers the margin.

Schedule (the reference `p_selection`, the same for l-inf and l2): p = p_init / 2^k with k the number of
thresholds 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 that the iteration index i exceeds (p_init on
iterations 0..10, p_init / 2 on 11..50, ..., p_init / 512 beyond 8000). AutoAttack-standard builds the
reference SquareAttack with `resc_schedule=False`, so by default the thresholds are NOT rescaled to the query
budget (with 5000 queries p never falls below p_init / 128). `rescale_schedule=True` gives the reference's
other variant (also ART's only one): i is first mapped to a 10000-query budget, i' = floor(i * 10000 /
queries). s = round(sqrt(p * H * W)) clamped to [1, H - 1] (l-inf; 29 on 32x32 at p 0.8) or at least 3 and
odd (l2); window corners uniform in [0, H - s) x [0, W - s).

Readings: the reference draws one window position per iteration for the whole batch; here every example
draws its own (from its key), so an example's result does not depend on the batch it is in (likewise the
grid's per-cell transpositions, drawn once per cell for the whole batch in the reference). Examples that
are already misclassified stop (their queries are not counted). The l-inf resampling "until the window
changes" is one redraw: where the drawn signs would leave the window unchanged, the opposite signs are used.
The l2 window budget is per channel, as in the Square authors' code (max-andr/square-attack,
`square_attack_l2`: `curr_norms_window` and `norms_windows` with numpy axis=(2, 3) on NCHW): channel c of
the refilled window gets norm sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta_c on both windows||^2), so the
new perturbation has norm exactly eps before the final renormalisation (when ||delta|| <= eps, always the
case: the current point was clipped from the ball). AutoAttack's port (fra31/auto-attack autoattack/square.py)
and IBM ART take the second term over all channels (`self.lp_norm(delta_curr * mask_image)`), which gives
every channel the whole windows' mass (sqrt(C) times too much when the channels carry equal mass) and is
undone only by the final renormalisation, which then shrinks the rest of the image; the two readings agree
on 1-channel images.
"""

from __future__ import annotations

import collections
from typing import Callable

import tensorflow as tf

from tfadv.attacks import losses, parts, rng
from tfadv.attacks.ops import in_xla_context, while_loop

SquareRun = collections.namedtuple("SquareRun", ["x_adv", "margin", "queries"])
SQUARE_NORMS = ("linf", "l2")
_THRESHOLDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
COMPACT_EVERY = 50  # proposals between two gatherings of the still-robust examples (`square_run(compact=True)`)


def p_selection(p_init, iteration, queries, rescale=False):
    """The share of the image a window covers at `iteration` (an int or int tensor, from 0) of a `queries`
    budget: p_init halved once for every threshold the iteration exceeds. With `rescale` the iteration is
    first mapped to a 10000-query budget (floor(iteration * 10000 / queries)); AutoAttack-standard does not."""
    scaled = tf.cast(iteration, tf.int64)
    if rescale:
        scaled = tf.math.floordiv(scaled * 10000, queries)
    halvings = tf.add_n([tf.cast(scaled > t, tf.float32) for t in _THRESHOLDS])
    return p_init / tf.pow(2.0, halvings)


def _window(corner_h, corner_w, size, height, width):
    """[B, H, W, 1] float mask of the s x s windows with per-example top-left corners."""
    rows = tf.range(height)[None, :]
    cols = tf.range(width)[None, :]
    in_rows = (rows >= corner_h[:, None]) & (rows < corner_h[:, None] + size)
    in_cols = (cols >= corner_w[:, None]) & (cols < corner_w[:, None] + size)
    return tf.cast(in_rows[:, :, None] & in_cols[:, None, :], tf.float32)[..., None]


def _ring_profile(local_h, local_w, rows, cols):
    """The reference's `eta_rectangles(rows, cols)` at local coordinates (before normalisation): the sum of
    1/(c+1)^2 over the centred rings c that contain the point (Chebyshev distance <= c), c < max(rows, cols)//2+1.
    Shapes broadcast; rows / cols are per-example [B, 1, 1] tensors."""
    distance = tf.maximum(tf.abs(local_h - rows // 2), tf.abs(local_w - cols // 2))
    count = tf.maximum(rows // 2 + 1, cols // 2 + 1)
    # sum_{c=d}^{count-1} 1/(c+1)^2 = H(count) - H(d), H(n) = sum_{c<n} 1/(c+1)^2
    terms = 1.0 / tf.square(tf.range(1, 257, dtype=tf.float32))
    partial = tf.concat([[0.0], tf.cumsum(terms)], axis=0)
    value = tf.gather(partial, tf.minimum(count, 256)) - tf.gather(partial, tf.minimum(distance, 256))
    return tf.nn.relu(value)


def _pseudo_gaussian(corner_h, corner_w, size, transpose, height, width):
    """[B, H, W, 1]: the reference's `eta(s)` square placed at each example's window (zero elsewhere): the top
    s//2 rows a ring profile, the bottom rows minus one, each half of unit norm, the whole of unit norm;
    transposed where `transpose` ([B] bool)."""
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    local_h = rows - corner_h[:, None, None]
    local_w = cols - corner_w[:, None, None]
    local_h, local_w = (tf.where(transpose[:, None, None], local_w, local_h),
                        tf.where(transpose[:, None, None], local_h, local_w))
    inside = (local_h >= 0) & (local_h < size) & (local_w >= 0) & (local_w < size)
    half = size // 2
    top = inside & (local_h < half)
    bottom = inside & (local_h >= half)
    top_value = _ring_profile(local_h, local_w, half, size)
    bottom_value = _ring_profile(local_h - half, local_w, size - half, size)

    def unit(mask, value):
        value = tf.where(mask, value, 0.0)
        norm = tf.sqrt(tf.reduce_sum(tf.square(value), axis=[1, 2], keepdims=True))
        return value / (norm + 1e-12)

    eta = unit(top, top_value) - unit(bottom, bottom_value)
    eta = eta / (tf.sqrt(tf.reduce_sum(tf.square(eta), axis=[1, 2], keepdims=True)) + 1e-12)
    return eta[..., None]


def _l2_norm(delta):
    return tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2, 3], keepdims=True))


def _channel_norm(delta):
    """[B, 1, 1, C]: the l2 norm of each example's each channel."""
    return tf.sqrt(tf.reduce_sum(tf.square(delta), axis=[1, 2], keepdims=True))


def l2_proposal(delta, eps, size, corner_h, corner_w, corner_h2, corner_w2, transpose, signs):
    """One Square-L2 proposal: the new perturbation [B, H, W, C] from the current one `delta`, before the
    final renormalisation to eps and the clipping to [0, 1] (pure: the draws are given).

    Windows of side `size` at the per-example corners (corner_h, corner_w) and (corner_h2, corner_w2) ([B]
    int); `transpose` [B] bool orients the fresh pseudo-Gaussian square, `signs` [B, 1, 1, C] give its sign per
    channel. Both windows are emptied and the first is refilled, per example and channel c, with
        (eta * sign_c + delta_c[window 1] / ||delta_c[window 1]||) rescaled to
        sqrt(max(eps^2 - ||delta||^2, 0) / C + ||delta_c[window 1 or 2]||^2),
    norms per channel as in the Square authors' `square_attack_l2` (numpy axis=(2, 3) on NCHW): the
    channels' window masses sum to what the windows held plus the unused budget, so ||result|| = eps exactly
    whenever ||delta|| <= eps."""
    height, width = delta.shape[1], delta.shape[2]
    channels = delta.shape[3]
    mask = _window(corner_h, corner_w, size, height, width)
    mask2 = _window(corner_h2, corner_w2, size, height, width)
    both = tf.maximum(mask, mask2)
    budget = tf.sqrt(tf.nn.relu(tf.square(eps) - tf.square(_l2_norm(delta))) / channels
                     + tf.square(_channel_norm(delta * both)))  # [B, 1, 1, C]
    fresh = _pseudo_gaussian(corner_h, corner_w, size, transpose, height, width) * signs
    fresh = fresh + delta * mask / (_channel_norm(delta * mask) + 1e-12)
    fresh = fresh / (_channel_norm(fresh) + 1e-12) * budget
    return delta * (1.0 - both) + fresh * mask


def _check(x, norm, queries, p_init):
    if norm not in SQUARE_NORMS:
        raise ValueError(f"Square supports norm {' or '.join(SQUARE_NORMS)}, got {norm!r}")
    if not isinstance(queries, int) or queries < 1:
        raise ValueError(f"queries must be a positive int, got {queries!r}")
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    if x.shape.rank != 4:
        raise ValueError(f"Square attacks images [B, H, W, C]; got shape {x.shape}")
    if x.shape[1] is None or x.shape[2] is None or x.shape[3] is None:
        raise ValueError("Square needs static image height, width and channels")
    if norm == "l2" and min(x.shape[1], x.shape[2]) < 4:
        raise ValueError("the l2 Square attack needs images of at least 4 x 4 pixels")
    if min(x.shape[1], x.shape[2]) < 2:
        raise ValueError("Square needs images of at least 2 x 2 pixels")


def square_run(logits_fn: Callable, x, labels, *, eps, norm="linf", queries=5000, p_init=0.8,
               keys=None, rescale_schedule=False, compact: bool = False,
               compact_every: int = COMPACT_EVERY) -> SquareRun:
    """Square with diagnostics: SquareRun(x_adv, margin [B], queries [B] model queries per example, the
    initial one included: at most 1 + `queries`, which is the number of proposals after the initial query).
    `rescale_schedule`: map the p-schedule to the query budget (see `p_selection`); off in AutoAttack.

    `compact` (opt-in; the same result, not yet measured faster here): every `compact_every` proposals the
    examples still correctly classified are gathered
    and only they are proposed for and queried until the next gathering (the reference queries only
    `idx_to_fool`, the examples with a positive margin, at every iteration); a misclassified example keeps its
    point, margin and query count. Every example draws from its key and the global iteration index as without
    compaction, and its proposals depend on nothing else, so the result is the same (with `keys`; stateful
    draws differ). `compact=False` queries the whole batch at every iteration, the misclassified examples'
    proposals discarded."""
    x = tf.convert_to_tensor(x, tf.float32)
    _check(x, norm, queries, p_init)
    if not isinstance(compact_every, int) or compact_every < 1:
        raise ValueError(f"compact_every must be a positive int, got {compact_every!r}")
    labels = tf.cast(labels, tf.int32)
    batch = tf.shape(x)[0]
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    eps = tf.cast(eps, tf.float32)

    init_keys = None if keys is None else rng.fold(keys, 0x5151)
    if norm == "linf":
        x_best = tf.clip_by_value(x + eps * rng.sign(init_keys, [1, width, channels], stream=1, batch=batch), 0.0, 1.0)
    else:
        size = height // 5 if height >= 5 else 1
        start = (height - size * 5) // 2
        corners = [(h, w) for h in range(start, height - size + 1, size) for w in range(start, width - size + 1, size)]
        # the grid's squares in both orientations (one [H, W] pattern per cell and orientation, computed in one
        # call: building one per cell made the graph ~50x larger on 8x8 images); every example draws, per cell, a
        # transposition (the reference's `eta(s)` flips a coin on each call) and a sign per channel. The windows
        # do not overlap and each cell takes one orientation, so the contraction over (orientation, cell) adds
        # exact zeros to one product per pixel: the same values as adding cell by cell, with no [cells, B, H, W,
        # C] intermediate
        cells = len(corners)
        corner_h = tf.constant([h for h, _ in corners] * 2)
        corner_w = tf.constant([w for _, w in corners] * 2)
        patterns = _pseudo_gaussian(corner_h, corner_w, size, tf.constant([False] * cells + [True] * cells),
                                    height, width)[..., 0]  # [2 * cells, H, W]
        transposed = tf.transpose(rng.uniform(init_keys, [cells], stream=2, batch=batch) > 0.5)  # [cells, B]
        signs = rng.signs_per_stream(init_keys, [channels], [100 + cell for cell in range(cells)],
                                     batch=batch)  # [cells, B, C]
        weights = tf.concat([tf.where(transposed[..., None], 0.0, signs),
                             tf.where(transposed[..., None], signs, 0.0)], axis=0)  # [2 * cells, B, C]
        delta = tf.einsum("khw,kbc->bhwc", patterns, weights)  # [B, H, W, C]
        x_best = tf.clip_by_value(x + delta / (_l2_norm(delta) + 1e-12) * eps, 0.0, 1.0)
    margin_best = losses.margin(logits_fn(x_best), labels)
    used = tf.ones([batch], tf.int32)

    def proposals(x, labels, keys):
        """The loop body over the examples given (the whole batch or the gathered still-robust ones)."""
        batch = tf.shape(x)[0]

        def draw_int(stream_keys, stream, high):
            return rng.randint(stream_keys, [], high, stream=stream, batch=batch)

        def draw_sign(stream_keys, shape, stream):
            return rng.sign(stream_keys, shape, stream=stream, batch=batch)

        def body(i, x_best, margin_best, used):
            active = margin_best > 0.0
            step_keys = None if keys is None else rng.fold(keys, i + 1)
            p = p_selection(p_init, i, queries, rescale=rescale_schedule)
            if norm == "linf":
                size = tf.cast(tf.round(tf.sqrt(p * height * width)), tf.int32)
                size = tf.clip_by_value(size, 1, min(height, width) - 1)
                corner_h = draw_int(step_keys, 1, height - size)
                corner_w = draw_int(step_keys, 2, width - size)
                mask = _window(corner_h, corner_w, size, height, width)
                signs = draw_sign(step_keys, [1, 1, channels], 3)
                proposal = tf.clip_by_value(x + eps * signs, 0.0, 1.0)
                unchanged = tf.reduce_all(tf.abs(proposal - x_best) * mask < 1e-7, axis=[1, 2, 3])
                signs = tf.where(unchanged[:, None, None, None], -signs, signs)
                proposal = tf.clip_by_value(x + eps * signs, 0.0, 1.0)
                x_new = mask * proposal + (1.0 - mask) * x_best
            else:
                size = tf.cast(tf.round(tf.sqrt(p * height * width)), tf.int32)
                size = tf.maximum(size, 3)
                size = size + 1 - tf.math.floormod(size, 2)  # odd
                size = tf.minimum(size, min(height, width) - 1)
                delta = l2_proposal(x_best - x, eps, size,
                                    draw_int(step_keys, 1, height - size), draw_int(step_keys, 2, width - size),
                                    draw_int(step_keys, 3, height - size), draw_int(step_keys, 4, width - size),
                                    rng.uniform(step_keys, [], stream=5, batch=batch) > 0.5,
                                    draw_sign(step_keys, [1, 1, channels], 6))
                x_new = tf.clip_by_value(x + delta / (_l2_norm(delta) + 1e-12) * eps, 0.0, 1.0)
            margin_new = losses.margin(logits_fn(x_new), labels)
            x_best, margin_best = parts.keep_best((x_best, margin_best), (x_new, margin_new),
                                                  active & (margin_new < margin_best))
            used = used + tf.cast(active, tf.int32)
            return i + 1, x_best, margin_best, used

        return body

    def running(i, _x, margin, _u):
        return (i < queries) & tf.reduce_any(margin > 0.0)

    if not compact or in_xla_context():  # XLA: static shapes, no compaction
        _, x_best, margin_best, used = while_loop(running, proposals(x, labels, keys),
                                                  (tf.constant(0), x_best, margin_best, used))
        return SquareRun(x_best, margin_best, used)

    def chunk(i, x_best, margin_best, used):
        # the reference's idx_to_fool, gathered every `compact_every` iterations; the chunk's loop runs on them
        # with the global iteration index (the schedule and each example's draws), results scattered back
        todo = tf.where(margin_best > 0.0)[:, 0]
        sub_keys = None if keys is None else tf.gather(keys, todo)
        stop = tf.minimum(i + compact_every, queries)
        i, sub_best, sub_margin, sub_used = while_loop(
            lambda j, _x, margin, _u: (j < stop) & tf.reduce_any(margin > 0.0),
            proposals(tf.gather(x, todo), tf.gather(labels, todo), sub_keys),
            (i, tf.gather(x_best, todo), tf.gather(margin_best, todo), tf.gather(used, todo)))
        index = todo[:, None]
        return (i, tf.tensor_scatter_nd_update(x_best, index, sub_best),
                tf.tensor_scatter_nd_update(margin_best, index, sub_margin),
                tf.tensor_scatter_nd_update(used, index, sub_used))

    _, x_best, margin_best, used = while_loop(running, chunk, (tf.constant(0), x_best, margin_best, used))
    # the clean input where the initialisation did not help and nothing was found is not needed: x_best is
    # always a point of the ball; examples misclassified from the start keep their (also misclassified) x_best
    return SquareRun(x_best, margin_best, used)


def square(logits_fn: Callable, x, labels, *, eps, norm="linf", queries=5000, p_init=0.8, keys=None,
           rescale_schedule=False, compact: bool = False):
    """Square Attack (untargeted, margin loss): adversarial images in the eps-ball of `norm` and [0,1], after
    an initial query and up to `queries` proposals (1 + queries model queries per example, as the reference).
    `keys` ([B] int64, `rng.example_keys`) make every random choice per example and batch-independent.
    `rescale_schedule=False` (AutoAttack-standard) keeps the p-schedule's thresholds at fixed iterations.
    `compact` (opt-in): only the examples still correctly classified are queried (see `square_run`)."""
    return square_run(logits_fn, x, labels, eps=eps, norm=norm, queries=queries, p_init=p_init, keys=keys,
                      rescale_schedule=rescale_schedule, compact=compact).x_adv
