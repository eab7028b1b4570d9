import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import accuracy

from tfadv import attacks

pgd_module = importlib.import_module("tfadv.attacks.pgd")  # the module, not the function it exports


def _logits_fn(network):
    return lambda x: network(x, training=False)  # evaluation: BatchNorm in inference mode


@pytest.fixture(scope="module")
def batch(digits):
    x, y = digits.test
    return x[:200], y[:200]


@pytest.mark.parametrize("norm,eps", [("linf", 0.125), ("l2", 0.5), ("l1", 2.0)])
def test_pgd_stays_in_the_ball_and_the_box_and_hurts(natural_mlp, batch, norm, eps):
    x, y = batch
    x_adv = attacks.pgd(_logits_fn(natural_mlp), x, y, eps=eps, step_size=eps / 4, steps=10, norm=norm)
    norms = attacks.perturbation_norm(x_adv - x, norm).numpy()
    assert norms.max() <= eps * (1 + 1e-5) + 1e-6
    assert float(tf.reduce_min(x_adv)) >= 0.0 and float(tf.reduce_max(x_adv)) <= 1.0
    assert accuracy(natural_mlp, x_adv, y) < accuracy(natural_mlp, x, y) - 0.2


@pytest.mark.parametrize("norm,eps", [("linf", 0.125), ("l2", 0.5), ("l1", 2.0)])
def test_fgsm_stays_in_the_ball_and_the_box(natural_mlp, batch, norm, eps):
    x, y = batch
    x_adv = attacks.fgsm(_logits_fn(natural_mlp), x, y, eps=eps, norm=norm)
    assert attacks.perturbation_norm(x_adv - x, norm).numpy().max() <= eps * (1 + 1e-5) + 1e-6
    assert float(tf.reduce_min(x_adv)) >= 0.0 and float(tf.reduce_max(x_adv)) <= 1.0


def test_random_init_fills_the_ball(batch):
    x, _ = batch
    x = tf.constant(x)
    for norm, eps in (("linf", 0.1), ("l2", 0.5), ("l1", 2.0)):
        delta = attacks.random_init(x, eps, norm)
        sizes = attacks.perturbation_norm(delta, norm).numpy()
        assert sizes.max() <= eps * (1 + 1e-5)
        assert sizes.mean() > 0.5 * eps  # not collapsed at the centre


def test_l1_projection_matches_a_reference_and_is_idempotent():
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(5, 4, 4, 1)).astype(np.float32)
    projected = attacks.project(tf.constant(delta), 2.0, "l1").numpy()
    for d, p in zip(delta.reshape(5, -1), projected.reshape(5, -1)):
        # reference: bisection on the soft threshold theta with sum(max(|d| - theta, 0)) = eps
        lo, hi = 0.0, np.abs(d).max()
        for _ in range(100):
            theta = (lo + hi) / 2
            lo, hi = (theta, hi) if np.maximum(np.abs(d) - theta, 0).sum() > 2.0 else (lo, theta)
        np.testing.assert_allclose(p, np.sign(d) * np.maximum(np.abs(d) - theta, 0), atol=1e-5)
    again = attacks.project(tf.constant(projected), 2.0, "l1").numpy()
    np.testing.assert_allclose(again, projected, atol=1e-6)
    inside = delta * 0.01
    np.testing.assert_allclose(attacks.project(tf.constant(inside), 2.0, "l1").numpy(), inside, atol=1e-7)


def test_pgd_loss_exceeds_fgsm_loss_on_average(natural_mlp, batch):
    x, y = batch
    fn = _logits_fn(natural_mlp)
    x_fgsm = attacks.fgsm(fn, x, y, eps=0.06)
    x_pgd = attacks.pgd(fn, x, y, eps=0.06, step_size=0.015, steps=20)
    loss_fgsm = attacks.cross_entropy(fn(x_fgsm), y).numpy().mean()
    loss_pgd = attacks.cross_entropy(fn(x_pgd), y).numpy().mean()
    assert loss_pgd > loss_fgsm


def test_targeted_attack_reaches_its_target_on_an_undefended_model(natural_mlp, batch):
    x, y = batch
    fn = _logits_fn(natural_mlp)
    targets = (y + 1) % 10
    for loss in ("ce", "cw"):
        x_adv = attacks.pgd(fn, x, y, eps=0.5, step_size=0.05, steps=40, loss=loss, targets=targets)
        hit = np.mean(np.argmax(fn(x_adv), -1) == targets)
        assert hit > 0.9, (loss, hit)


def test_restarts_keep_the_worst_case_per_example(monkeypatch):
    # Two examples, three restarts with scripted candidates; the logits are the images themselves.
    x = tf.zeros([2, 1, 1, 3])
    labels = tf.constant([0, 0])
    candidates = iter([
        tf.constant([[[[3.0, 1.0, 0.0]]], [[[3.0, 2.9, 0.0]]]]),   # both correct; ex 2 close to flipping
        tf.constant([[[[3.0, 2.0, 0.0]]], [[[3.0, 1.0, 0.0]]]]),   # ex 1 loss rises, ex 2 falls
        tf.constant([[[[1.0, 2.0, 0.0]]], [[[3.0, 0.0, 0.0]]]]),   # ex 1 misclassified
    ])
    monkeypatch.setattr(pgd_module, "_pgd_once", lambda *args, **kwargs: next(candidates))
    logits_fn = lambda images: tf.reshape(images, [-1, 3])  # noqa: E731
    best = pgd_module.pgd(logits_fn, x, labels, eps=1.0, step_size=0.1, steps=1, restarts=3, loss="cw")
    best = tf.reshape(best, [2, 3]).numpy()
    np.testing.assert_allclose(best[0], [1.0, 2.0, 0.0])  # the successful one
    np.testing.assert_allclose(best[1], [3.0, 2.9, 0.0])  # the highest margin among unsuccessful ones


def test_target_helpers():
    logits = tf.constant([[5.0, 4.0, 1.0, 3.0], [0.0, 1.0, 2.0, 9.0]])
    labels = tf.constant([0, 3])
    assert attacks.most_confusing(logits, labels).numpy().tolist() == [1, 2]
    assert attacks.least_likely(logits, labels).numpy().tolist() == [2, 0]


def test_loss_values_on_hand_written_logits():
    logits = tf.constant([[4.0, 1.0, 3.0, 0.0]])
    label = tf.constant([0])
    np.testing.assert_allclose(attacks.cw_margin(logits, label).numpy(), [-1.0])
    np.testing.assert_allclose(attacks.dlr(logits, label).numpy(), [-(4 - 3) / (4 - 1)], rtol=1e-6)
    np.testing.assert_allclose(attacks.targeted_dlr(logits, label, tf.constant([2])).numpy(),
                               [-(4 - 3) / (4 - 0.5 * (1 + 0))], rtol=1e-6)
    with pytest.raises(ValueError, match="at least 3 classes"):
        attacks.dlr(tf.constant([[1.0, 2.0]]), tf.constant([0]))
    with pytest.raises(ValueError, match="at least 4 classes"):
        attacks.targeted_dlr(tf.constant([[1.0, 2.0, 3.0]]), tf.constant([0]), tf.constant([1]))


def test_inference_mode_attack_leaves_batchnorm_statistics_alone(batch):
    x, y = batch
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.BatchNormalization()(keras.layers.Dense(32)(h))
    network = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h)))
    bn = network.layers[3]
    network(x, training=True)  # touch the layer once
    before = [v.numpy().copy() for v in bn.non_trainable_weights]
    attacks.pgd(_logits_fn(network), x, y, eps=0.1, step_size=0.03, steps=5)
    after = [v.numpy() for v in bn.non_trainable_weights]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
    # and the train-mode attack (Madry / Free-AT reading) does move them: the test can tell the difference
    attacks.pgd(lambda images: network(images, training=True), x, y, eps=0.1, step_size=0.03, steps=2)
    assert not np.array_equal(before[0], bn.non_trainable_weights[0].numpy())


def test_bad_arguments_are_refused(batch):
    x, y = batch
    with pytest.raises(ValueError, match="unknown norm"):
        attacks.pgd(lambda v: v, x, y, eps=0.1, step_size=0.1, steps=1, norm="l3")
    with pytest.raises(ValueError, match="unknown attack loss"):
        attacks.objective("hinge", tf.zeros([1, 3]), tf.constant([0]))
