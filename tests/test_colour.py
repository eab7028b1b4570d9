"""Colour images (32x32x3, as CIFAR-10 / CIFAR-100 / SVHN) where every other test file uses 8x8x1 digits: the
places where channels or 32x32 shapes could behave differently, each checked against an independent
computation (numpy or a hand formula)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import data, export, models
from tfadv.attacks import ops, pgd as pgd_module

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
