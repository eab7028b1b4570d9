"""Bilateral Adversarial Training (paper 002): label formula, the R-MC attack, BatchNorm hygiene, training."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import InputRecorder
from tfadv import attacks, data, losses, models, targets, training
from tfadv.training import bat, pgd


def _probabilities(seed, rows=6, classes=10):
    logits = np.random.default_rng(seed).normal(size=(rows, classes)).astype(np.float32) * 2
    return tf.nn.softmax(logits), tf.one_hot(np.arange(rows) % classes, classes)


@pytest.mark.parametrize("beta", [9.0, 11.0, 2.0])
def test_adversarial_labels_follow_eq_14_to_18(beta):
    p, y = _probabilities(0)
    q = targets.bat(y, p, beta).numpy()
    yn = y.numpy()
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    true = (q * yn).sum(-1)
    wrong = np.where(yn > 0, -1, q)
    np.testing.assert_allclose(true, beta * wrong.max(-1), rtol=1e-5)  # Eq. 16-17 hold with equality
    # Eq. 14 by hand
    v = -np.log(p.numpy())
    for row in range(len(q)):
        c = int(np.argmax(yn[row]))
        others = [k for k in range(10) if k != c]
        vk = v[row, others]
        v_mc, v_ll = vk.min(), vk.max()
        denominator = vk.sum() / 9 - v_mc + 0.01
        eps_y = 1 / (1 + beta / 9 * (v_ll - v_mc + 0.01) / denominator)
        np.testing.assert_allclose(q[row, c], 1 - eps_y, rtol=1e-5)
        np.testing.assert_allclose(q[row, others], eps_y / 9 * (vk - v_mc + 0.01) / denominator, rtol=1e-4)
    # the most confusing class gets the least mass
    assert all(np.argmin(wrong[r] + 2 * yn[r]) == np.argmax(np.where(yn[r] > 0, -1, p.numpy()[r])) for r in range(6))


def test_equal_wrong_losses_give_label_smoothing_eq_15_and_19():
    p = tf.constant([[0.5] + [0.5 / 9] * 9], tf.float32)
    q = targets.bat(tf.one_hot([0], 10), p, 9.0).numpy()[0]
    np.testing.assert_allclose(q[0], 0.5, atol=1e-5)           # eps_y = 1 / (1 + beta / (n - 1)) = 0.5
    np.testing.assert_allclose(q[1:], 0.5 / 9, atol=1e-5)     # eps_y / (n - 1) on each wrong class
    q100 = targets.bat(tf.one_hot([3], 100), tf.fill([1, 100], 0.01), 11.0).numpy()[0]
    np.testing.assert_allclose(q100[3], 1 - 1 / (1 + 11 / 99), atol=1e-5)


def test_top_k_puts_no_mass_outside_the_k_largest_losses():
    p, y = _probabilities(1)
    q = targets.bat(y, p, 9.0, top_k=3).numpy()
    yn, pn = y.numpy(), p.numpy()
    np.testing.assert_allclose(q.sum(-1), 1.0, rtol=1e-6)
    for row in range(len(q)):
        wrong_p = np.where(yn[row] > 0, np.inf, pn[row])
        chosen = set(np.argsort(wrong_p)[:3])  # largest loss = smallest probability
        outside = [k for k in range(10) if k not in chosen and yn[row, k] == 0]
        assert np.all(q[row, outside] == 0)
        assert np.all(q[row, list(chosen)] > 0)
        np.testing.assert_allclose(q[row][yn[row] > 0][0], 9.0 * q[row, list(chosen)].max(), rtol=1e-5)


def _bat_trainer(digits, network=None, target="mc", labels=training.LabelAdversary(), random_start=True):
    spec = digits.spec
    network = network or models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    attack = training.AttackConfig(eps=0.125, step_size=0.125, steps=1, random_start=random_start)
    trainer = training.BATTrainer(network, attack, bat.Options(attack=target, labels=labels.kind),
                                  label_adversary=labels)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    return trainer


def test_one_step_targeted_attack_moves_toward_the_most_confusing_class(digits, natural_mlp):
    trainer = _bat_trainer(digits, natural_mlp)
    x, y = tf.constant(digits.test[0][:200]), tf.constant(digits.test[1][:200])
    clean_logits = natural_mlp(x, training=False)
    target = attacks.most_confusing(clean_logits, y)
    masked = np.where(tf.one_hot(y, 10).numpy() > 0, -np.inf, clean_logits.numpy())
    np.testing.assert_array_equal(target.numpy(), masked.argmax(-1))  # highest wrong logit
    x_adv = trainer.adversarial_examples(x, y, clean_logits)
    assert attacks.perturbation_norm(x_adv - x, "linf").numpy().max() <= 0.125 + 1e-6
    assert 0 <= float(tf.reduce_min(x_adv)) and float(tf.reduce_max(x_adv)) <= 1
    before = tf.gather(tf.nn.softmax(clean_logits), target, batch_dims=1)
    after = tf.gather(tf.nn.softmax(natural_mlp(x_adv, training=False)), target, batch_dims=1)
    assert float(tf.reduce_mean(after - before)) > 0.1
    assert float(tf.reduce_mean(tf.cast(after > before, tf.float32))) > 0.9


def test_labels_and_attack_leave_batchnorm_statistics_alone(digits):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
    network = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h)))
    x, y = tf.constant(digits.train[0][:64]), tf.constant(digits.train[1][:64])
    network(x, training=True)
    trainer = _bat_trainer(digits, network)
    bn = network.layers[3]
    before = [v.numpy().copy() for v in bn.non_trainable_weights]
    clean_logits = trainer.eval_logits(x)
    trainer.labels.targets(y, clean_logits, 10)
    trainer.adversarial_examples(x, y, clean_logits)
    for a, b in zip(before, bn.non_trainable_weights):
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("target,labels", [
    ("mc", training.LabelAdversary()),                        # R-MC-LA
    ("mc", training.LabelAdversary("uniform", eps_y=0.5)),    # R-MC-LS
    ("mc", training.LabelAdversary("hard")),                  # R-MC
    ("ll", training.LabelAdversary("hard")),                  # R-LL
    ("fgsm", training.LabelAdversary("hard")),                # R-FGSM
    ("mc", training.LabelAdversary(top_k=3)),                 # R-MC-LA3
])
def test_bat_variants_train_on_digits(digits, target, labels):
    trainer = _bat_trainer(digits, target=target, labels=labels)
    network = trainer.network
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=1)
    history = trainer.fit(ds, epochs=1, steps_per_epoch=10, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][-1])
    # one more step by hand: the variant's target class, its one-step attack, its labels, the soft CE on x_adv
    x, y = next(iter(ds))
    y = tf.cast(y, tf.int32)
    clean = network(x, training=False).numpy()
    one_hot = np.eye(10)[y.numpy()]
    if target == "mc":
        chosen = np.where(one_hot > 0, -np.inf, clean).argmax(-1)
    elif target == "ll":
        chosen = np.where(one_hot > 0, np.inf, clean).argmin(-1)
        assert not np.any(chosen == y.numpy())
    else:
        chosen = None
    keys = trainer.example_keys(64, training.base.SALT_ATTACK_START)
    x_adv = attacks.pgd(lambda v: network(v, training=False), x, y, eps=0.125, step_size=0.125, steps=1,
                        targets=None if chosen is None else tf.constant(chosen, tf.int32), keys=keys)
    if labels.kind == "hard":
        soft = one_hot
    elif labels.kind == "uniform":
        soft = (1 - labels.eps_y) * one_hot + labels.eps_y * (1 - one_hot) / 9
    else:
        soft = targets.bat(tf.constant(one_hot, tf.float32), tf.nn.softmax(clean), labels.beta, labels.gamma,
                           labels.top_k).numpy()  # Eq. 14/18 and top-k are checked by hand above
    log_p = _log_softmax64(network(x_adv, training=True))
    trainer.loss_tracker.reset_state()
    reported = float(trainer.train_step((x, y))["loss"])
    np.testing.assert_allclose(reported, -(soft * log_p).sum(-1).mean(), rtol=1e-4)


def _log_softmax64(logits):
    """log softmax in float64 numpy: the hand computation the trainers' reported losses are checked against."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_madry_la_trains_pgd_examples_on_adversarial_labels(digits):
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    trainer = training.PGDTrainer(network, training.AttackConfig(0.125, 0.03, 3), pgd.Options(labels="bat"),
                                  label_adversary=training.LabelAdversary())
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    ds = data.train_pipeline(digits.train, spec, 64, seed=0, epochs=1)
    assert np.isfinite(trainer.fit(ds, epochs=1, steps_per_epoch=5, verbose=0, shuffle=False).history["loss"][-1])
    # the step's loss: soft CE of Eq. 14/18 labels (clean, inference mode) on the 3-step PGD examples
    x, y = next(iter(ds))
    y = tf.cast(y, tf.int32)
    soft = targets.bat(tf.one_hot(y, 10), tf.nn.softmax(network(x, training=False)), 9.0).numpy()
    x_adv = attacks.pgd(lambda v: network(v, training=False), x, y, eps=0.125, step_size=0.03, steps=3,
                        keys=trainer.example_keys(64, training.base.SALT_ATTACK_START))
    log_p = _log_softmax64(network(x_adv, training=True))
    trainer.loss_tracker.reset_state()
    reported = float(trainer.train_step((x, y))["loss"])
    np.testing.assert_allclose(reported, -(soft * log_p).sum(-1).mean(), rtol=1e-4)
    hard = -log_p[np.arange(64), y.numpy()].mean()
    assert abs(reported - hard) > 1e-3  # not the hard-label loss


def test_top_k_adversarial_labels_by_hand():
    # LA-k (App. A Eq. 26-28): eps_y = 1 / (1 + beta v_max / sum_topk v); y'_k = eps_y v_k / sum_topk v on the k
    # wrong classes of largest loss v_k = -log p_k, 0 on the others.
    p = np.array([[0.4, 0.3, 0.15, 0.1, 0.05]], np.float32)
    q = targets.bat(tf.one_hot([1], 5), tf.constant(p), 4.0, top_k=2).numpy()[0]
    v = -np.log(p[0].astype(np.float64))
    chosen = [3, 4]  # the two smallest wrong probabilities
    total = v[chosen].sum()
    eps_y = 1.0 / (1.0 + 4.0 * v[4] / total)
    np.testing.assert_allclose(q[chosen], eps_y * v[chosen] / total, rtol=1e-5)
    np.testing.assert_allclose(q[1], 1.0 - eps_y, rtol=1e-5)
    np.testing.assert_array_equal(q[[0, 2]], 0.0)
    np.testing.assert_allclose(q[3] / q[4], v[3] / v[4], rtol=1e-5)  # proportional to v_k


def _bn_network():
    """A network whose training-mode and inference-mode outputs differ (fresh BatchNorm moving statistics)."""
    keras.utils.set_random_seed(0)
    recorder = InputRecorder()
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(32)(keras.layers.Flatten()(recorder(inputs)))
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h))), recorder


def _record_soft_targets(monkeypatch):
    seen = []
    original = losses.soft_cross_entropy

    def record(soft, logits):
        seen.append(np.array(soft))
        return original(soft, logits)

    monkeypatch.setattr(losses, "soft_cross_entropy", record)
    return seen


@pytest.mark.parametrize("method", ["bat", "madry_la"])
def test_adversarial_labels_come_from_clean_inference_mode_probabilities(method, digits, monkeypatch):
    network, recorder = _bn_network()
    x, y = tf.constant(digits.train[0][:64]), tf.constant(digits.train[1][:64])
    if method == "bat":
        trainer = training.BATTrainer(network, training.AttackConfig(0.125, 0.125, 1, random_start=False))
    else:
        trainer = training.PGDTrainer(network, training.AttackConfig(0.125, 0.05, 3, random_start=False),
                                      pgd.Options(labels="bat"), label_adversary=training.LabelAdversary())
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    one_hot = tf.one_hot(y, 10)
    weights = network.get_weights()
    train_mode = targets.bat(one_hot, tf.nn.softmax(network(x, training=True)), 9.0).numpy()
    network.set_weights(weights)  # undo that pass's update of the BatchNorm moving statistics
    expected = targets.bat(one_hot, tf.nn.softmax(network(x, training=False)), 9.0).numpy()
    x_adv = (trainer.adversarial_examples(x, y, network(x, training=False)) if method == "bat"
             else trainer.adversarial_examples(x, y))
    on_adv = targets.bat(one_hot, tf.nn.softmax(network(x_adv, training=False)), 9.0).numpy()
    assert not np.allclose(expected, train_mode, atol=1e-3) and not np.allclose(expected, on_adv, atol=1e-3)
    seen = _record_soft_targets(monkeypatch)
    recorder.seen.clear()
    trainer.train_step((x, y))
    assert len(seen) == 1
    np.testing.assert_allclose(seen[0], expected, rtol=1e-5, atol=1e-6)
    # the weight update sees the adversarial images only: one training-mode forward pass, on x_adv
    trained_on = [image for flag, image in recorder.seen if flag]
    assert len(trained_on) == 1
    np.testing.assert_allclose(trained_on[0], x_adv.numpy(), atol=1e-6)
    assert np.abs(trained_on[0] - x.numpy()).max() > 0.1


def test_bat_weight_update_sees_adversarial_images_only_with_random_start(digits):
    network, recorder = _bn_network()
    trainer = training.BATTrainer(network, training.AttackConfig(0.125, 0.125, 1))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    x, y = tf.constant(digits.train[0][:64]), tf.constant(digits.train[1][:64])
    x_adv = trainer.adversarial_examples(x, y, network(x, training=False))  # keyed: what train_step draws
    recorder.seen.clear()
    trainer.train_step((x, y))
    trained_on = [image for flag, image in recorder.seen if flag]
    assert len(trained_on) == 1
    np.testing.assert_array_equal(trained_on[0], x_adv.numpy())
