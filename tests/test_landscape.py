"""Geometry diagnostics: values on a linear model where they are known, sanity on a trained MLP."""

import keras
import numpy as np
import tensorflow as tf

from tfadv.evaluation import landscape


def _linear():
    inputs = keras.Input((2, 2, 1))
    outputs = keras.layers.Dense(3)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].kernel.assign(np.array([[1, -1, 0], [2, 0, -1], [0, 1, 1], [-1, 0, 2]], np.float32))
    return lambda images: model(images, training=False)


def test_linear_model_is_perfectly_linear_and_gradient_stats_split():
    fn = _linear()
    x = np.random.default_rng(0).uniform(0.3, 0.7, (16, 2, 2, 1)).astype(np.float32)
    y = np.argmax(fn(x).numpy(), -1)
    y[:4] = (y[:4] + 1) % 3  # a few wrong labels
    linearity = landscape.local_linearity(lambda v: fn(v), x, y, eps=0.05)
    # the logits are linear but the cross-entropy is not: alignment high, gap small but positive
    assert linearity["gradient_alignment"] > 0.9 and linearity["linearity_gap"] >= 0
    stats = landscape.gradient_magnitudes(fn, x, y)
    # exact: d CE / dx = W (p - onehot(y)) for a linear model
    w = np.array([[1, -1, 0], [2, 0, -1], [0, 1, 1], [-1, 0, 2]], np.float32)
    p = tf.nn.softmax(fn(x)).numpy()
    gradient = (p - np.eye(3)[y]) @ w.T
    correct = np.argmax(fn(x).numpy(), -1) == y
    assert correct.sum() == 12
    # paper 002 Table 2: ||grad_x L||_2^2 per example; min / mean / max over all, correct and wrong examples
    squared = (gradient ** 2).sum(-1)
    assert stats["statistic"] == "squared_l2_norm"
    for name, keep in (("all", np.ones(16, bool)), ("correct", correct), ("wrong", ~correct)):
        entry = stats["squared_l2_norm"][name]
        assert entry["count"] == keep.sum()
        np.testing.assert_allclose([entry["min"], entry["mean"], entry["max"]],
                                   [squared[keep].min(), squared[keep].mean(), squared[keep].max()], rtol=1e-4)
    # the l1 norm (the dual of l-inf, paper 002 Eq. 7) separately named
    exact = np.abs(gradient).sum(-1)
    l1 = stats["l1_norm"]
    assert l1["all"]["count"] == 16 and l1["wrong"]["count"] >= 4
    np.testing.assert_allclose(l1["all"]["mean"], exact.mean(), rtol=1e-4)
    np.testing.assert_allclose(l1["all"]["max"], exact.max(), rtol=1e-4)
    np.testing.assert_allclose(l1["wrong"]["mean"], exact[~correct].mean(), rtol=1e-4)


def test_lipschitz_bounds_are_ordered(natural_mlp, digits):
    fn = lambda v: natural_mlp(v, training=False)  # noqa: E731
    result = landscape.local_lipschitz(fn, digits.test[0][:64], eps=0.1, steps=5)
    assert 0 <= result["lower"] <= result["upper"]
    assert result["upper"] <= 2.0 / 0.1 * 1.001 * 64  # ||p - q||_1 <= 2, ||delta|| >= ~eps/...: finite


def test_confidence_profile_and_landscape_and_sweep(natural_mlp, digits, tmp_path):
    fn = lambda v: natural_mlp(v, training=False)  # noqa: E731
    x, y = digits.test[0][:64], digits.test[1][:64]
    profile = landscape.confidence_profile(fn, x, y, eps=0.125, steps=5)
    for key in ("clean", "pgd", "cw"):
        assert len(profile[key]) == 10 and abs(sum(profile[key]) - 1) < 1e-4
        assert all(a >= b - 1e-7 for a, b in zip(profile[key], profile[key][1:]))
    surface = landscape.loss_landscape(fn, x, y, eps=0.125, points=5)
    values = np.asarray(surface["surfaces"][0])
    assert values.shape == (5, 5)
    # along the adversarial direction the loss grows from the centre outward (a = +eps vs a = 0)
    assert values[4, 2] > values[2, 2]
    landscape.plot_landscape(surface, str(tmp_path / "l.png"))
    sweep = landscape.accuracy_sweep(fn, x, y, [0.0, 0.06, 0.125], [1, 5])
    assert sweep["accuracy_vs_eps"][0] >= sweep["accuracy_vs_eps"][-1]
    landscape.plot_sweep(sweep, str(tmp_path / "s.png"))
    assert (tmp_path / "l.png").stat().st_size > 1000 and (tmp_path / "s.png").stat().st_size > 1000
