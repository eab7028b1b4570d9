"""DeepFool: exact distances on a linear model, success on an undefended MLP."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv.attacks.deepfool import deepfool


def _linear_two_class():
    w = np.array([[1.0, -1.0], [0.5, 0.0], [-2.0, 1.0], [0.0, 0.25]], np.float32)
    inputs = keras.Input((2, 2, 1))
    layer = keras.layers.Dense(2)
    model = keras.Model(inputs, layer(keras.layers.Flatten()(inputs)))
    layer.kernel.assign(w)
    layer.bias.assign([0.1, -0.1])
    return (lambda v: model(v, training=False)), w, np.array([0.1, -0.1], np.float32)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_exact_distance_to_a_linear_boundary(norm):
    fn, w, b = _linear_two_class()
    x = np.random.default_rng(0).uniform(0.4, 0.6, (32, 2, 2, 1)).astype(np.float32)
    y = np.argmax(fn(x).numpy(), -1)
    x_adv, norms = deepfool(fn, x, y, norm=norm, overshoot=0.02)
    direction = w[:, 1] - w[:, 0]
    margin = np.abs(x.reshape(32, -1) @ direction + (b[1] - b[0]))
    # DeepFool steps |f| + 1e-4 past the linearised boundary, then scales by 1 + overshoot
    exact = (margin + 1e-4) / (np.linalg.norm(direction) if norm == "l2" else np.abs(direction).sum())
    np.testing.assert_allclose(norms.numpy(), 1.02 * exact, rtol=1e-3, atol=1e-5)
    assert np.all(np.argmax(fn(x_adv).numpy(), -1) != y)


def test_succeeds_on_an_undefended_mlp(natural_mlp, digits):
    fn = lambda v: natural_mlp(v, training=False)  # noqa: E731
    x, y = digits.test[0][:100], digits.test[1][:100]
    correct = np.argmax(fn(x).numpy(), -1) == y
    x_adv, norms = deepfool(fn, x, y, norm="l2")
    fooled = np.argmax(fn(x_adv).numpy(), -1) != y
    assert fooled[correct].mean() > 0.9
    assert float(tf.reduce_min(x_adv)) >= 0 and float(tf.reduce_max(x_adv)) <= 1
    np.testing.assert_allclose(norms.numpy(), np.linalg.norm((x_adv.numpy() - x).reshape(100, -1), axis=1), rtol=1e-5)
    with pytest.raises(ValueError, match="supports"):
        deepfool(fn, x, y, norm="l1")


def test_deepfool_in_the_evaluation_runner_scores_at_the_budget(natural_mlp, digits):
    from tfadv import evaluation

    fn = lambda v: natural_mlp(v, training=False)  # noqa: E731
    x, y = digits.test[0][:100], digits.test[1][:100]
    tiny, large = (evaluation.parse_attack("deepfool_l2", {"l2": e}) for e in (1e-6, 5.0))
    report = evaluation.evaluate(fn, x, y, [tiny])
    assert report["attacks"]["deepfool_l2"]["robust_accuracy"] == report["clean_accuracy"]  # nothing fits in 1e-6
    report = evaluation.evaluate(fn, x, y, [large])
    assert report["attacks"]["deepfool_l2"]["robust_accuracy"] < 0.1 * report["clean_accuracy"]
