"""Paper 004's linear robustness estimate: exact on a linear model, sane on a trained MLP."""

import keras
import numpy as np
import pytest

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
    # two classes: the gradients are always the two weight columns, whatever the label
    np.testing.assert_allclose(coherence, w[:, 0] @ w[:, 1] / (np.linalg.norm(w[:, 0]) * np.linalg.norm(w[:, 1])),
                               rtol=1e-5)



def test_eps_l_uses_the_highest_wrong_class_only():
    """Paper 004 Eq. 4: y_bar is the highest wrong logit, and the gradient gap is taken for that same class.
    Class 2 has a lower logit than class 1 but a much larger gradient gap, so the minimum over all wrong
    classes of gap_j / ||grad gap_j||_1 (the other reading) is smaller than eps_L."""
    w = np.array([[1.0, 0.8, 0.0], [1.0, 0.8, 0.0], [0.0, 0.0, -2.0], [0.0, 0.0, 2.5]], np.float32)
    inputs = keras.Input((2, 2, 1))
    model = keras.Model(inputs, keras.layers.Dense(3, use_bias=False)(keras.layers.Flatten()(inputs)))
    model.layers[-1].kernel.assign(w)
    fn = lambda v: model(v, training=False)  # noqa: E731
    x = np.random.default_rng(1).uniform(0.45, 0.55, (32, 2, 2, 1)).astype(np.float32)
    z = x.reshape(32, -1) @ w
    assert np.all(np.argsort(z, -1)[:, ::-1][:, :2] == [0, 1])  # every example ranks class 0, then 1, then 2
    y = np.zeros(32, np.int32)
    y[:4] = 1  # four misclassified examples: their highest wrong class is 0
    eps = 0.02
    result = diagnostics.linear_robustness(fn, x, y, eps)
    per = result["per_example"]

    wrong = np.where(y == 0, 1, 0)  # the highest wrong class, by hand
    rows = np.arange(32)
    gap = z[rows, y] - z[rows, wrong]
    gradient_gap = np.abs(w[:, y] - w[:, wrong]).sum(0)  # l1: the dual norm of l-inf
    np.testing.assert_allclose(per["logit_gap"], gap, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per["gradient_gap"], gradient_gap, rtol=1e-6)
    np.testing.assert_allclose(per["eps_l"], gap / gradient_gap, rtol=1e-4, atol=1e-6)
    g_true, g_wrong = w[:, y].T, w[:, wrong].T
    coherence = (g_true * g_wrong).sum(-1) / (np.linalg.norm(g_true, axis=-1) * np.linalg.norm(g_wrong, axis=-1))
    np.testing.assert_allclose(per["coherence"], coherence, rtol=1e-5)

    # the other reading differs on every correctly classified example (about 0.5 vs 0.115)
    others = [j for j in range(3)]
    min_ratio = np.min([np.where(y == j, np.inf, (z[rows, y] - z[:, j]) / np.abs(w[:, y] - w[:, [j]]).sum(0))
                        for j in others], axis=0)
    assert np.all(min_ratio[y == 0] < 0.5 * per["eps_l"][y == 0])
    # predicted accuracy: correct and eps < eps_L (Table 1's "Equation 4" column)
    assert result["predicted_robust_accuracy"] == pytest.approx(np.mean((y == 0) & (eps < gap / gradient_gap)))
    assert result["predicted_robust_accuracy"] == pytest.approx(28 / 32)

def test_on_a_trained_mlp_equals_a_jacobian_computation_and_art_fgsm(natural_mlp, digits, tmp_path):
    """Per example, eps_L and its parts equal a computation from the full input Jacobian of the logits; the
    FGSM columns equal ART's FGSM (cross-entropy) and a hand-made FGSM on the CW margin."""
    import tensorflow as tf

    fn = lambda v: natural_mlp(v, training=False)  # noqa: E731
    x, y = digits.test[0][:200], digits.test[1][:200].astype(np.int32)
    eps = 0.125
    result = diagnostics.linear_robustness(fn, x, y, eps)
    for key in ("predicted_robust_accuracy", "fgsm_ce_accuracy", "fgsm_cw_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["logit_gap"]["median"] > 0 and result["gradient_gap"]["median"] > 0

    images = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(images)
        logits = fn(images)
    jacobian = tape.batch_jacobian(logits, images).numpy().reshape(200, 10, -1)  # [B, K, D]
    z = logits.numpy()
    rows = np.arange(200)
    masked = z.copy()
    masked[rows, y] = -np.inf
    wrong = masked.argmax(-1)
    gap = z[rows, y] - z[rows, wrong]
    difference = jacobian[rows, y] - jacobian[rows, wrong]
    gradient_gap = np.abs(difference).sum(-1)
    per = result["per_example"]
    np.testing.assert_allclose(per["logit_gap"], gap, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(per["gradient_gap"], gradient_gap, rtol=1e-4)
    np.testing.assert_allclose(per["eps_l"], gap / gradient_gap, rtol=1e-3, atol=1e-6)
    correct = z.argmax(-1) == y
    np.testing.assert_array_equal(per["correct"], correct)
    assert result["predicted_robust_accuracy"] == pytest.approx(np.mean(correct & (eps < gap / gradient_gap)))
    assert result["eps_l"]["median"] == pytest.approx(np.median(gap / gradient_gap), rel=1e-3)

    # FGSM on the CW margin z_ybar - z_y, by hand from the Jacobian
    x_cw = np.clip(x + eps * np.sign(-difference).reshape(x.shape), 0, 1).astype(np.float32)
    cw_accuracy = np.mean(fn(x_cw).numpy().argmax(-1) == y)
    assert result["fgsm_cw_accuracy"] == pytest.approx(cw_accuracy, abs=1 / 200)
    # FGSM on the cross-entropy: ART
    pytest.importorskip("art")
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import TensorFlowV2Classifier

    classifier = TensorFlowV2Classifier(model=lambda v, training=False: fn(v), nb_classes=10, input_shape=(8, 8, 1),
                                        clip_values=(0.0, 1.0),
                                        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True))
    x_ce = FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=200).generate(x, np.eye(10)[y])
    ce_accuracy = np.mean(fn(x_ce.astype(np.float32)).numpy().argmax(-1) == y)
    assert result["fgsm_ce_accuracy"] == pytest.approx(ce_accuracy, abs=1 / 200)
    assert result["fgsm_cw_accuracy"] < np.mean(correct)  # the attack does something on an undefended MLP

    diagnostics.plot_linear_robustness(result, str(tmp_path / "h.png"))
    assert (tmp_path / "h.png").stat().st_size > 1000
