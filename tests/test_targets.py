"""Soft-label builders against the papers' equations, on hand-written logits."""

import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, losses, targets

LABELS = tf.constant([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
LOGITS = tf.constant([[3.0, 1.0, -2.0, 0.5], [0.0, 0.0, 2.0, 1.0]])  # row 2 has a tie for the minimum


def _check_distribution(q, alpha, labels=LABELS):
    q = q.numpy()
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    assert (q >= 0).all()
    np.testing.assert_allclose((q * labels.numpy()).sum(-1), 1.0 - alpha, rtol=1e-6)


def test_uniform_is_y_minus_alpha_y_minus_one_over_k():
    q = targets.uniform(LABELS, 0.4)
    np.testing.assert_allclose(q.numpy()[0], [0.7, 0.1, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(q.numpy().sum(-1), 1.0, rtol=1e-6)


def test_sls_spreads_alpha_over_the_wrong_classes():
    q = targets.sls(LABELS, 0.3)
    _check_distribution(q, 0.3)
    np.testing.assert_allclose(q.numpy()[0], [0.7, 0.1, 0.1, 0.1], rtol=1e-6)


def test_als_puts_alpha_on_the_arg_min_and_splits_ties():
    q = targets.als(LABELS, LOGITS, 0.2)
    _check_distribution(q, 0.2)
    np.testing.assert_allclose(q.numpy()[0], [0.8, 0.0, 0.2, 0.0], atol=1e-7)
    np.testing.assert_allclose(q.numpy()[1], [0.1, 0.1, 0.8, 0.0], atol=1e-7)


def test_sbls_puts_alpha_on_the_highest_wrong_logit():
    q = targets.sbls(LABELS, LOGITS, 0.2)
    _check_distribution(q, 0.2)
    np.testing.assert_allclose(q.numpy()[0], [0.8, 0.2, 0.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(q.numpy()[1], [0.0, 0.0, 0.8, 0.2], atol=1e-7)


def test_bls_interpolates_between_als_and_sls():
    alpha = 0.3
    cold = targets.bls(LABELS, LOGITS, alpha, temperature=1e-4)
    hot = targets.bls(LABELS, LOGITS, alpha, temperature=1e6)
    _check_distribution(cold, alpha)
    np.testing.assert_allclose(cold.numpy()[0], targets.als(LABELS, LOGITS, alpha).numpy()[0], atol=1e-6)
    np.testing.assert_allclose(hot.numpy(), targets.sls(LABELS, alpha).numpy(), atol=1e-6)
    middle = targets.bls(LABELS, LOGITS, alpha, temperature=1.0).numpy()[0]
    wrong = np.exp(-np.array([1.0, -2.0, 0.5]))
    np.testing.assert_allclose(middle[1:], alpha * wrong / wrong.sum(), rtol=1e-5)


@pytest.mark.parametrize("method", ["sls", "als", "bls", "sbls"])  # uniform: see the next test
def test_theorem_1_smooth_ce_minus_ce_is_alpha_y_minus_q_prime_dot_z(method):
    # paper 003 Theorem 1: SmoothCE - CE = alpha (y - q')^T z, with q = (1 - alpha) y + alpha q'
    rng = np.random.default_rng(0)
    logits = tf.constant(rng.normal(size=(16, 5)).astype(np.float32) * 3)
    labels = tf.one_hot(rng.integers(0, 5, 16), 5)
    alpha = 0.35
    q = targets.smooth(method, labels, logits, alpha, temperature=0.5)
    q_prime = (q - (1 - alpha) * labels) / alpha
    smooth_ce = losses.soft_cross_entropy(q, logits)
    ce = losses.hard_cross_entropy(tf.argmax(labels, -1), logits)
    expected = alpha * tf.reduce_sum((labels - q_prime) * logits, -1)
    np.testing.assert_allclose((smooth_ce - ce).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_theorem_1_for_uniform_smoothing():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(8, 4)).astype(np.float32))
    labels = tf.one_hot(rng.integers(0, 4, 8), 4)
    alpha = 0.5
    q = targets.uniform(labels, alpha)
    diff = losses.soft_cross_entropy(q, logits) - losses.hard_cross_entropy(tf.argmax(labels, -1), logits)
    expected = alpha * tf.reduce_sum((labels - 0.25) * logits, -1)
    np.testing.assert_allclose(diff.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_targets_carry_no_gradient_to_the_logits():
    logits = tf.Variable(LOGITS)
    with tf.GradientTape() as tape:
        q = targets.als(LABELS, logits, 0.3)
        total = tf.reduce_sum(q * tf.stop_gradient(logits))
    assert tape.gradient(total, logits) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="alpha"):
        targets.sls(LABELS, 1.5)
    with pytest.raises(ValueError, match="temperature"):
        targets.bls(LABELS, LOGITS, 0.1, 0.0)
    with pytest.raises(ValueError, match="valid"):
        targets.smooth("magic", LABELS, LOGITS, 0.1)


def test_logit_squeeze_on_a_known_matrix():
    z = tf.constant([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]])
    # beta ||Z||_F added to the batch's summed loss = beta ||Z||_F / B next to the mean loss
    np.testing.assert_allclose(float(losses.logit_squeeze(z, 0.5)), 0.5 * np.sqrt(9 + 16 + 36 + 64) / 3, rtol=1e-6)
    np.testing.assert_allclose(float(losses.logit_squeeze(z, 2.0, "mean_l2")), 2.0 * (5 + 0 + 10) / 3, rtol=1e-5)
    with pytest.raises(ValueError, match="valid"):
        losses.logit_squeeze(z, 1.0, "max")


def test_least_likely_target_is_never_the_true_class():
    # R-LL (paper 002 Eq. 23): the least likely *wrong* class, even when the true class has the lowest logit.
    logits = tf.constant([[5.0, 4.0, 1.0, 3.0], [0.0, 1.0, 2.0, 9.0], [-3.0, 1.0, 0.5, 2.0], [1.0, 1.0, 1.0, -9.0]])
    labels = tf.constant([0, 3, 0, 3])
    assert attacks.least_likely(logits, labels).numpy().tolist() == [2, 0, 2, 0]
    rng = np.random.default_rng(0)
    z = rng.normal(size=(200, 10)).astype(np.float32)
    labels = z.argmin(-1).astype(np.int32)  # the true class is always the arg-min over all classes
    target = attacks.least_likely(tf.constant(z), tf.constant(labels)).numpy()
    assert not np.any(target == labels)
    np.testing.assert_array_equal(target, np.where(np.eye(10)[labels] > 0, np.inf, z).argmin(-1))
