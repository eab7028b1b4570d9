"""SSAT (paper 000): adaptive labels, the target term, replays, and training on digits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import data, models, training
from tfadv.training import ssat


def test_lambda_falls_linearly_from_lambda0_to_lambda1():
    config = ssat.SSATConfig(lambda0=1.0, lambda1=0.3)
    delta = tf.constant([[0.0, 0.0], [0.05, -0.02], [0.1, 0.0], [0.3, 0.0]])
    lam = ssat.smoothing_degree(delta, 0.1, "linf", config).numpy()
    np.testing.assert_allclose(lam, [1.0, 1.0 - 0.7 * 0.5, 0.3, 0.3], rtol=1e-6)
    constant = ssat.smoothing_degree(delta, 0.1, "linf", ssat.SSATConfig(adaptive=False)).numpy()
    np.testing.assert_allclose(constant, 0.3)


def test_adaptive_labels_hard_for_misclassified_smooth_inside():
    config = ssat.SSATConfig(lambda0=1.0, lambda1=0.3)
    labels = tf.constant([0, 1])
    logits = tf.constant([[2.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])  # row 2 is misclassified
    delta = tf.constant([[0.05, 0.0], [0.05, 0.0]])
    q = ssat.adaptive_labels(labels, logits, delta, 0.1, "linf", config, 4).numpy()
    lam = 0.65
    np.testing.assert_allclose(q[0], [1 - lam + lam / 4, lam / 4, lam / 4, lam / 4], rtol=1e-6)
    np.testing.assert_allclose(q[1], [0, 1, 0, 0])
    everyone = ssat.adaptive_labels(labels, logits, delta, 0.1, "linf", ssat.SSATConfig(boundary_split=False), 4)
    np.testing.assert_allclose(everyone.numpy()[1], [lam / 4, 1 - lam + lam / 4, lam / 4, lam / 4], rtol=1e-6)


def test_target_term_pushes_down_the_most_likely_wrong_class():
    logits = tf.Variable([[2.0, 1.5, 0.0, -1.0]])
    target = tf.one_hot([0], 4)
    wrong = tf.constant([1])
    with tf.GradientTape(persistent=True) as tape:
        plain = tf.reduce_sum(ssat.regularised_loss(target, logits, wrong, 0.0))
        regular = tf.reduce_sum(ssat.regularised_loss(target, logits, wrong, 0.2))
    g_plain, g_regular = tape.gradient(plain, logits).numpy()[0], tape.gradient(regular, logits).numpy()[0]
    assert g_regular[1] > g_plain[1] > 0  # descent lowers z_y' more with the target term
    expected = 1.2 * -tf.nn.log_softmax(logits)[0, 0] - 0.2 * -tf.nn.log_softmax(logits)[0, 1]
    np.testing.assert_allclose(float(regular), float(expected), rtol=1e-6)


def _trainer(digits, **options):
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    config = ssat.SSATConfig(**options)
    attack = training.AttackConfig(eps=0.125, step_size=0.125 / config.replays, steps=1)
    trainer = training.SSATTrainer(network, attack, ssat=config)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    return trainer


def test_delta_is_reinitialised_within_gamma_eps_and_m_updates_per_minibatch(digits, monkeypatch):
    trainer = _trainer(digits, replays=3, gamma=0.3)
    starts = []
    original = trainer.initial_delta

    def record(x):
        delta = original(x)
        starts.append(delta)
        return delta

    monkeypatch.setattr(trainer, "initial_delta", record)
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=1)
    trainer.fit(ds, epochs=1, steps_per_epoch=4, verbose=0, shuffle=False)
    assert int(trainer.optimizer.iterations.numpy()) == 3 * 4
    assert len(starts) >= 1  # traced once, run for every minibatch
    x = tf.constant(digits.train[0][:256])
    delta = trainer.initial_delta(x).numpy()
    assert np.abs(delta).max() <= 0.3 * 0.125 + 1e-7
    assert np.abs(delta).max() > 0.9 * 0.3 * 0.125 * 0.5
    other = trainer.initial_delta(x).numpy()
    assert not np.allclose(delta, other)  # fresh every minibatch


@pytest.mark.parametrize("options", [
    {},
    {"boundary_split": False, "adaptive": False, "target_beta": 0.0},  # Free-AT with re-initialised delta
])
def test_ssat_trains_on_digits(digits, options):
    trainer = _trainer(digits, replays=2, **options)
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=1)
    history = trainer.fit(ds, epochs=1, steps_per_epoch=10, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][-1])


def test_bad_lambdas_are_refused():
    with pytest.raises(ValueError, match="lambda1 <= lambda0"):
        ssat.SSATConfig(lambda0=0.0, lambda1=0.3)
