"""Exact resume: every random draw of a train_step is keyed by (seed, optimizer iteration, replica, position),
so no stateful TensorFlow generator (whose state a checkpoint does not keep) decides a training step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import models, training
from tfadv.training import ssat

ATTACK = training.AttackConfig(eps=0.125, step_size=0.05, steps=2)

DEFENSES = {
    "pgd": dict(),
    "fgsm_rs": dict(),
    "trades": dict(),
    "ssat": dict(options=ssat.Options(replays=2)),
    "bat": dict(),
    "pgd_l2": dict(),
    "ssat_l2": dict(options=ssat.Options(replays=2)),
}


def _make(defense, digits, seed=0):
    keras.utils.set_random_seed(1)  # the same initial weights for every trainer
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    attack = ATTACK
    if defense.endswith("_l2"):
        attack = training.AttackConfig(eps=0.5, step_size=0.2, steps=2, norm="l2")
    trainer = training.TRAINERS[defense.replace("_l2", "")](network, attack, seed=seed, **DEFENSES[defense])
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    return trainer, network


def _batches(digits, count, size=32):
    x, y = digits.train
    return [(x[i * size:(i + 1) * size], y[i * size:(i + 1) * size].astype("int32")) for i in range(count)]


@pytest.mark.parametrize("defense", sorted(DEFENSES))
def test_same_seed_same_step_whatever_other_random_ops_ran(defense, digits):
    first, net_a = _make(defense, digits)
    second, net_b = _make(defense, digits)
    for a, b in zip(net_a.weights, net_b.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for x, y in _batches(digits, 2):
        first.train_on_batch(x, y)
        for _ in range(3):  # other random ops between the two trainers' steps move the global generator
            tf.random.uniform([5])
            tf.random.normal([7])
        second.train_on_batch(x, y)
    for a, b in zip(net_a.weights, net_b.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # and a different seed gives a different step (the draws really depend on the seed)
    third, net_c = _make(defense, digits, seed=1)
    for x, y in _batches(digits, 2):
        third.train_on_batch(x, y)
    assert any(not np.array_equal(a.numpy(), c.numpy()) for a, c in zip(net_a.weights, net_c.weights))


@pytest.mark.parametrize("defense", ["pgd", "trades", "ssat"])
def test_resume_from_a_checkpoint_is_bit_identical(defense, digits, tmp_path):
    batches = _batches(digits, 4)
    straight, net_straight = _make(defense, digits)
    for x, y in batches:
        straight.train_on_batch(x, y)

    interrupted, net_interrupted = _make(defense, digits)
    for x, y in batches[:2]:
        interrupted.train_on_batch(x, y)
    path = tf.train.Checkpoint(network=net_interrupted, optimizer=interrupted.optimizer).write(
        str(tmp_path / "ckpt"))
    tf.random.uniform([11])  # the "new process" starts from another global generator state

    resumed, net_resumed = _make(defense, digits)
    keras.utils.set_random_seed(12345)
    resumed.optimizer.build(net_resumed.trainable_variables)
    tf.train.Checkpoint(network=net_resumed, optimizer=resumed.optimizer).read(path).assert_consumed()
    assert int(resumed.optimizer.iterations.numpy()) == int(interrupted.optimizer.iterations.numpy()) > 0
    for x, y in batches[2:]:
        resumed.train_on_batch(x, y)
    for a, b in zip(net_straight.weights, net_resumed.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_example_keys_depend_on_seed_iteration_and_position(digits):
    trainer, _ = _make("pgd", digits)
    keys = trainer.example_keys(8).numpy()
    assert len(set(keys.tolist())) == 8  # one key per position
    np.testing.assert_array_equal(keys, trainer.example_keys(8).numpy())
    other_salt = trainer.example_keys(8, salt=1).numpy()
    assert not np.intersect1d(keys, other_salt).size
    other_seed, _ = _make("pgd", digits, seed=7)
    assert not np.intersect1d(keys, other_seed.example_keys(8).numpy()).size
    trainer.optimizer.iterations.assign_add(1)
    assert not np.intersect1d(keys, trainer.example_keys(8).numpy()).size
