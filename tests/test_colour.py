"""Colour images (32x32x3, as CIFAR-10 / CIFAR-100 / SVHN) where every other test file uses 8x8x1 digits: the
places where channels or 32x32 shapes could behave differently, each checked against an independent
computation (numpy or a hand formula)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, data, export, models
from tfadv.attacks import ops

SHAPE = (32, 32, 3)


def _status_line(error):
    """The first line of the op's status message (what TF Serving returns), without the lines TF's Python call
    puts before it."""
    lines = error.message.splitlines()
    while lines and (lines[0] in ("Graph execution error:", "", "<stack traces unavailable>")
                     or lines[0].startswith(("Detected at node", " "))):
        lines.pop(0)
    return lines[0]


def test_a_wrong_channel_count_or_layout_is_named_in_full(tmp_path):
    """A colour model given grayscale images ([N, 32, 32, 1]) or NCHW images ([N, 3, 32, 32]): the refusal
    shows the whole shape it got. TF's Assert prints 3 entries of a tensor by default, which cut the received
    shape to `[2 32 32...]`, hiding exactly the channel count that was wrong."""
    keras.utils.set_random_seed(0)
    network = models.build("linear", SHAPE, 10, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))
    path = export.export(network, str(tmp_path / "saved_model" / "1"))
    serve = tf.saved_model.load(path).signatures["serving_default"]
    expected = "serving_default expects images of shape [batch, 32, 32, 3], float32 in [0, 1]; got shape"
    images = np.random.default_rng(0).random((2,) + SHAPE).astype(np.float32)
    for wrong in (images[..., :1], np.transpose(images, (0, 3, 1, 2)), images[:, :, :16]):
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            serve(images=tf.constant(wrong))
        shown = " ".join(str(n) for n in wrong.shape)
        assert _status_line(caught.value) == f"assertion failed: [{expected}] [{shown}]", caught.value.message
    np.testing.assert_allclose(serve(images=tf.constant(images))["logits"], network(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,pad_mode", [("crop_flip", "constant"), ("crop", "reflect")])
def test_crop_and_flip_move_whole_colour_images(kind, pad_mode):
    """Each augmented colour image is one pad-4 crop of the whole image (the same offset for every channel:
    zero padding for CIFAR, reflection for SVHN) flipped along the width or not (never along the channels),
    found by searching every offset and flip in numpy."""
    image = np.random.default_rng(0).uniform(0.05, 0.95, SHAPE).astype(np.float32)
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)], mode=pad_mode)
    candidates = {(dy, dx, flip): (padded[dy:dy + 32, dx:dx + 32, :][:, ::-1] if flip
                                   else padded[dy:dy + 32, dx:dx + 32, :])
                  for dy in range(9) for dx in range(9) for flip in (False, True)}
    found = []
    for index in range(24):
        out = data.augment(tf.constant(image), tf.constant([index, 7], tf.int64), kind).numpy()
        matches = [key for key, candidate in candidates.items() if np.array_equal(out, candidate)]
        assert len(matches) == 1, (index, matches)
        found.append(matches[0])
    flips = [flip for _, _, flip in found]
    assert (0 < sum(flips) < len(flips)) if kind == "crop_flip" else not any(flips)
    assert len({(dy, dx) for dy, dx, _ in found}) > 10


def test_gaussian_noise_is_independent_per_pixel_and_channel():
    sigma = 20 / 255
    noise = np.stack([data.add_gaussian_noise(tf.fill(SHAPE, 0.5), sigma, tf.constant([k, 3], tf.int64)).numpy()
                      for k in range(8)]) - 0.5
    assert abs(noise.std() / sigma - 1) < 0.03
    correlation = np.corrcoef(noise.reshape(-1, 3).T)
    assert np.all(np.abs(correlation[np.triu_indices(3, 1)]) < 0.03), correlation


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_per_channel_normalisation_stays_float32_under_mixed_bfloat16(name):
    spec = data.get_spec(name)
    assert spec.image_shape == SHAPE and len(spec.mean) == len(spec.std) == 3
    images = np.random.default_rng(1).random((2,) + SHAPE).astype(np.float32)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        network = models.build("linear", SHAPE, spec.num_classes, spec.mean, spec.std)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    normalize = network.get_layer("normalize")
    assert normalize.compute_dtype == "float32" and network.get_layer("classifier").compute_dtype == "bfloat16"
    out = normalize(images).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, (images - np.array(spec.mean)) / np.array(spec.std), rtol=1e-5, atol=1e-5)
    assert network(images).dtype == tf.float32


def _duchi_l1_projection(v, radius):
    """Projection of a flat vector onto the l1 ball (Duchi et al. 2008, Fig. 1), in float64."""
    if np.abs(v).sum() <= radius:
        return v
    u = np.sort(np.abs(v))[::-1]
    cumulative = np.cumsum(u)
    rho = np.nonzero(u * np.arange(1, len(v) + 1) > cumulative - radius)[0][-1]
    return np.sign(v) * np.maximum(np.abs(v) - (cumulative[rho] - radius) / (rho + 1), 0.0)


def test_norms_and_projections_reduce_over_height_width_and_channels():
    """On [B, 32, 32, 3] every per-example norm and projection is over all 3072 features."""
    rng = np.random.default_rng(2)
    delta = (rng.normal(size=(3,) + SHAPE) * 0.05).astype(np.float32)
    flat = delta.reshape(3, -1).astype(np.float64)
    references = {"linf": np.abs(flat).max(1), "l2": np.linalg.norm(flat, axis=1), "l1": np.abs(flat).sum(1)}
    for norm, reference in references.items():
        np.testing.assert_allclose(ops.perturbation_norm(tf.constant(delta), norm), reference, rtol=1e-5)
    l2 = ops.project(tf.constant(delta), 0.5, "l2").numpy().reshape(3, -1)
    np.testing.assert_allclose(l2, flat * np.minimum(1.0, 0.5 / references["l2"])[:, None], atol=1e-7)
    l1 = ops.project(tf.constant(delta), 12.0, "l1").numpy().reshape(3, -1)
    np.testing.assert_allclose(l1, np.stack([_duchi_l1_projection(f, 12.0) for f in flat]), atol=1e-6)
    # the sparse l1 step (SLIDE) moves the top 5 % of all 3072 features: ceil(0.05 * 3072) = 154, l1 length 1
    step = attacks.steepest_step(tf.constant(delta), 1.0, "l1").numpy().reshape(3, -1)
    assert np.all((step != 0).sum(1) == 154)
    np.testing.assert_allclose(np.abs(step).sum(1), 1.0, rtol=1e-5)


def _bisect(function, low, high):
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (low, middle) if function(middle) else (middle, high)
    return (low + high) / 2


def test_fab_projection_on_colour_images_is_the_smallest_step():
    """FAB's box-constrained hyperplane projection on 3072 features against its KKT form solved by bisection in
    numpy: l2 d_i = clip(lambda w_i, -p_i, 1 - p_i); l-inf d_i = sign(w_i) min(t, room_i), t smallest."""
    from tfadv.attacks import fab

    rng = np.random.default_rng(3)
    points = rng.random((3, 3072)).astype(np.float32)
    w = rng.normal(size=(3, 3072)).astype(np.float32)
    change = np.array([0.5, -1.0, 2.0], np.float32)
    for norm in ("l2", "linf"):
        step = fab.box_hyperplane_projection(points, w, change, norm).numpy()
        for p, wi, c, d in zip(points.astype(np.float64), w.astype(np.float64), change.astype(np.float64), step):
            if norm == "l2":
                move = lambda lam: np.clip(lam * wi, -p, 1 - p)  # noqa: E731
                lam = _bisect(lambda lam: (wi * move(lam)).sum() >= c, 0.0, 1e4) if c > 0 else \
                    -_bisect(lambda lam: (wi * move(-lam)).sum() <= c, 0.0, 1e4)
                reference = move(lam)
            else:
                direction = np.sign(wi) * np.sign(c)
                room = np.where(direction > 0, 1 - p, p)
                t = _bisect(lambda t: np.abs(wi * np.minimum(t, room)).sum() >= abs(c), 0.0, 1.0)
                reference = direction * np.minimum(t, room)
            np.testing.assert_allclose(d, reference, atol=2e-6)
            np.testing.assert_allclose((wi * d).sum(), c, rtol=1e-4)
