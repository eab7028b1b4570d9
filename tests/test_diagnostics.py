"""Paper 004's linear robustness estimate: exact on a linear model, sane on a trained MLP."""

import keras
import numpy as np

from tfadv.evaluation import diagnostics


def test_eps_l_is_exact_on_a_linear_two_class_model():
    w = np.array([[1.0, -1.0], [0.5, 0.0], [-2.0, 1.0], [0.0, 0.25]], np.float32)
    inputs = keras.Input((2, 2, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(keras.layers.Flatten()(inputs)))
    model.layers[-1].kernel.assign(w)
    fn = lambda v: model(v, training=False)  # noqa: E731
    x = np.random.default_rng(0).uniform(0.4, 0.6, (64, 2, 2, 1)).astype(np.float32)
    y = np.argmax(fn(x).numpy(), -1)
    eps = 0.05
    result = diagnostics.linear_robustness(fn, x, y, eps)
    flat = x.reshape(64, -1)
    direction = np.where(y[:, None] == 0, w[:, 0] - w[:, 1], w[:, 1] - w[:, 0])
    exact = (flat * direction).sum(-1) / np.abs(w[:, 0] - w[:, 1]).sum()
    np.testing.assert_allclose(result["per_example"]["eps_l"], exact, rtol=1e-4)
    # for a linear model whose flip is reachable inside [0, 1] (inputs in [0.4, 0.6], eps 0.05), FGSM on the
    # margin is the exact worst case: prediction and measurement agree
    assert abs(result["predicted_robust_accuracy"] - result["fgsm_cw_accuracy"]) < 1e-9
    coherence = result["per_example"]["coherence"]
    assert np.all((coherence >= -1 - 1e-6) & (coherence <= 1 + 1e-6))


def test_runs_on_a_trained_mlp(natural_mlp, digits, tmp_path):
    fn = lambda v: natural_mlp(v, training=False)  # noqa: E731
    result = diagnostics.linear_robustness(fn, digits.test[0][:200], digits.test[1][:200], 0.125)
    for key in ("predicted_robust_accuracy", "fgsm_ce_accuracy", "fgsm_cw_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["logit_gap"]["median"] > 0 and result["gradient_gap"]["median"] > 0
    diagnostics.plot_linear_robustness(result, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").stat().st_size > 1000
