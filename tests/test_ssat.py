"""SSAT (paper 000): adaptive labels, the target term, replays, and training on digits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, data, models, training
from tfadv.training import ssat


def test_lambda_falls_linearly_from_lambda0_to_lambda1():
    config = ssat.Options(lambda0=1.0, lambda1=0.3)
    delta = tf.constant([[0.0, 0.0], [0.05, -0.02], [0.1, 0.0], [0.3, 0.0]])
    lam = ssat.smoothing_degree(delta, 0.1, "linf", config).numpy()
    np.testing.assert_allclose(lam, [1.0, 1.0 - 0.7 * 0.5, 0.3, 0.3], rtol=1e-6)
    constant = ssat.smoothing_degree(delta, 0.1, "linf", ssat.Options(adaptive=False)).numpy()
    np.testing.assert_allclose(constant, 0.3)


def test_adaptive_labels_hard_for_misclassified_smooth_inside():
    config = ssat.Options(lambda0=1.0, lambda1=0.3)
    labels = tf.constant([0, 1])
    logits = tf.constant([[2.0, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0]])  # row 2 is misclassified
    delta = tf.constant([[0.05, 0.0], [0.05, 0.0]])
    q = ssat.adaptive_labels(labels, logits, delta, 0.1, "linf", config, 4).numpy()
    lam = 0.65
    np.testing.assert_allclose(q[0], [1 - lam + lam / 4, lam / 4, lam / 4, lam / 4], rtol=1e-6)
    np.testing.assert_allclose(q[1], [0, 1, 0, 0])
    everyone = ssat.adaptive_labels(labels, logits, delta, 0.1, "linf", ssat.Options(boundary_split=False), 4)
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
    config = ssat.Options(**options)
    attack = training.AttackConfig(eps=0.125, step_size=0.125 / config.replays, steps=1)
    trainer = training.SSATTrainer(network, attack, config)
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
    np.testing.assert_array_equal(trainer.initial_delta(x).numpy(), delta)  # keyed: same iteration, same start
    trainer.optimizer.iterations.assign_add(3)  # the next minibatch (m = 3 updates later)
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
    # then one minibatch of m = 2 replays by hand (Alg. 1), against a copy trained by plain SGD
    config = trainer.options
    network = trainer.network
    hand = keras.models.clone_model(network)
    hand.set_weights(network.get_weights())
    plain = training.SSATTrainer(network, trainer.attack, config, weight_decay=0.0)
    plain.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.0), jit_compile=False)
    plain.optimizer.iterations.assign(trainer.optimizer.iterations)
    x, y = next(iter(ds))
    y = tf.cast(y, tf.int32)
    one_hot = np.eye(10, dtype=np.float32)[y.numpy()]
    eps, step, beta = 0.125, 0.125 / 2, config.target_beta
    delta = plain.initial_delta(x)  # keyed by (seed, iteration, position): the step's own start
    for _ in range(2):
        x_adv = tf.Variable(x + delta)
        with tf.GradientTape(persistent=True) as tape:
            z = hand(x_adv, training=True)
            zn = z.numpy()
            wrong = np.where(one_hot > 0, -np.inf, zn).argmax(-1)
            ratio = np.minimum(np.abs(delta.numpy()).reshape(64, -1).max(1) / eps, 1.0)
            lam = (config.lambda0 + (config.lambda1 - config.lambda0) * ratio if config.adaptive
                   else np.full(64, config.lambda1))
            soft = one_hot - lam[:, None].astype(np.float32) * (one_hot - 0.1)
            if config.boundary_split:
                soft = np.where((zn.argmax(-1) != y.numpy())[:, None], one_hot, soft)
            log_p = tf.nn.log_softmax(z)
            target_term = tf.gather(log_p, wrong, batch_dims=1)
            weight_loss = tf.reduce_mean(-(1 + beta) * tf.reduce_sum(soft * log_p, -1) + beta * target_term)
            attack_loss = tf.reduce_sum(-(1 + beta) * tf.reduce_sum(one_hot * log_p, -1) + beta * target_term)
        grads = tape.gradient(weight_loss, hand.trainable_variables)
        input_grad = tape.gradient(attack_loss, x_adv)
        for v, g in zip(hand.trainable_variables, grads):
            v.assign(v - 0.05 * g)
        delta = tf.clip_by_value(delta + step * tf.sign(input_grad), -eps, eps)
        delta = tf.clip_by_value(x + delta, 0.0, 1.0) - x
    plain.train_step((x, y))
    for a, b in zip(network.trainable_variables, hand.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_bad_lambdas_are_refused():
    with pytest.raises(ValueError, match="lambda1 <= lambda0"):
        ssat.Options(lambda0=0.0, lambda1=0.3)


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("l1", 4.0), ("linf", 0.125)])
def test_initial_delta_lies_in_the_gamma_eps_ball_of_the_norm(digits, norm, eps):
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    attack = training.AttackConfig(eps=eps, step_size=eps / 2, steps=1, norm=norm)
    trainer = training.SSATTrainer(network, attack, ssat.Options(replays=2, gamma=0.3))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    x = tf.fill([64, 8, 8, 1], 0.5)  # mid-grey: clipping to the box cannot shrink the start
    delta = trainer.initial_delta(x)
    norms = attacks.perturbation_norm(delta, norm).numpy()
    assert norms.max() <= 0.3 * eps + 1e-6
    assert norms.min() > 0.0 and norms.mean() > 0.1 * 0.3 * eps  # not all zero, not degenerate
    real = tf.constant(digits.train[0][:64])
    assert attacks.perturbation_norm(trainer.initial_delta(real), norm).numpy().max() <= 0.3 * eps + 1e-6
    x_start = real + trainer.initial_delta(real)
    assert float(tf.reduce_min(x_start)) >= 0.0 and float(tf.reduce_max(x_start)) <= 1.0


def test_ssat_step_uses_eq_6_7_labels_and_eq_21_loss(digits):
    # One SSAT replay by hand (m = 1, SGD without momentum, no weight decay): the weight gradient is that of
    # mean((1 + beta) CE(z, y_smooth) - beta CE(z, y')), y_smooth from Eq. 6-7 at the start delta.
    spec = digits.spec
    keras.utils.set_random_seed(0)
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    config = ssat.Options(replays=1, gamma=0.5, lambda0=0.9, lambda1=0.2, target_beta=0.3)
    trainer = training.SSATTrainer(network, training.AttackConfig(eps=0.125, step_size=0.125, steps=1),
                                   config, weight_decay=0.0)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.0), jit_compile=False)
    x, y = tf.constant(digits.train[0][:32]), tf.constant(digits.train[1][:32])
    delta = trainer.initial_delta(x)  # keyed: the train step draws the very same start
    before = [v.numpy().copy() for v in network.trainable_variables]
    logits = network(x + delta, training=True).numpy().astype(np.float64)
    lam = 0.9 + (0.2 - 0.9) * np.minimum(np.abs(delta.numpy()).reshape(32, -1).max(1) / 0.125, 1.0)
    one_hot = np.eye(10)[y.numpy()]
    smooth = one_hot - lam[:, None] * (one_hot - 0.1)
    outside = logits.argmax(-1) != y.numpy()
    soft = np.where(outside[:, None], one_hot, smooth)
    wrong = np.where(one_hot > 0, -np.inf, logits).argmax(-1)
    np.testing.assert_allclose(
        ssat.adaptive_labels(y, logits.astype(np.float32), delta, 0.125, "linf", config, 10).numpy(), soft,
        rtol=1e-5, atol=1e-6)
    with tf.GradientTape() as tape:
        z = network(x + delta, training=True)
        log_p = tf.nn.log_softmax(z)
        loss = tf.reduce_mean(-1.3 * tf.reduce_sum(soft.astype(np.float32) * log_p, -1)
                              + 0.3 * tf.gather(log_p, wrong, batch_dims=1))
    expected = [v - 0.1 * g for v, g in zip(before, tape.gradient(loss, network.trainable_variables))]
    trainer.train_step((x, y))
    for a, b in zip(network.trainable_variables, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
