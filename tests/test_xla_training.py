"""Every defense's train_step compiles with XLA (`jit_compile=True`, what `--jit_compile=auto` picks on a GPU)
and trains to the same numbers as the plain graph at the same seed.

XLA runs on CPU, so a step that would not compile on a GPU fails here first. The training draws are keyed
integer hashes (`Trainer.example_keys`, `tfadv.attacks.rng`), not stateful generator ops, so XLA sees the same
random numbers: uniform draws are bit-identical, normal ones (Box-Muller: XLA's own log / cos) differ in the last
bit (measured max 2.4e-7 on N(0, 1), i.e. 2.4e-10 in TRADES' 0.001 * N(0, 1) start).

XLA fuses and reorders float operations, so values differ in the last bits. A smooth computation keeps that
small: the defenses without a training attack, and Free-AT / SSAT (whose sign steps follow a cross-entropy
gradient), are compared over 3 whole steps, losses and weights within 1e-4 (measured: at most 7e-7 / 2e-7).
A training attack's sign() steps can turn a last-bit difference into a different step once an input-gradient
component is near zero: TRADES, whose KL gradient at its 0.001-start is tiny, differed by 1.2e-4 (loss) /
1.8e-4 (weights) on a 4th step here, and where that happens depends on the CPU. So the defenses that call
`adversarial_examples` (PGD, FGSM-RS, TRADES, BAT) are compared step by step from the compiled run's state: the
plain graph's attack from that state gives the same images on most examples (as tests/test_attack_xla.py asks of
every attack), and the plain graph's step on the compiled step's own images gives its loss and weights within
1e-4 (rounding only: the inputs are the same).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import callbacks, training
from tfadv.attacks import rng
from tfadv.training import base

STEPS, BATCH = 3, 64
TOLERANCE = 1e-4

# a few steps of each registered defense; Free and SSAT with 2 replays (2 optimizer updates per step)
CASES = {
    "natural": {},
    "pgd": {},
    "fgsm_rs": {},
    "free": dict(replays=2, batch_size=BATCH),
    "trades": {},
    "bat": {},
    "ssat": dict(replays=2),
    "label_smoothing": dict(smoothing=base.SmoothingConfig("als", 0.3)),
    "logit_squeeze": dict(smoothing=base.SmoothingConfig(squeeze_beta=0.05)),
}


def tiny_network():
    """Dense(32) -> BatchNorm -> ReLU -> Dense(10) on 8x8 digits (BatchNorm: its training-mode statistics and
    moving averages go through XLA too)."""
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(hidden)))


@pytest.fixture(scope="module")
def batches(digits):
    x, y = digits.train
    return x[:STEPS * BATCH].astype("float32"), y[:STEPS * BATCH].astype("int32")


def train(name, jit, batches, **options):
    """(per-step losses [STEPS], final weights, trainer) of `name` trained for STEPS minibatches."""
    keras.utils.set_random_seed(0)
    network = tiny_network()
    trainer = training.make(name, network, training.AttackConfig(eps=0.125, step_size=0.05, steps=3), seed=1,
                            **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit)
    x, y = batches
    step_losses = []
    for i in range(STEPS):
        trainer.reset_metrics()
        logs = trainer.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH], return_dict=True)
        step_losses.append(float(logs["loss"]))
    return np.array(step_losses), [v.numpy() for v in network.weights], trainer


def largest_difference(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


# the defenses whose train step calls `adversarial_examples` (compared step by step, below)
ATTACKED = ("pgd", "fgsm_rs", "trades", "bat")
AGREE, MOST = 1e-4, 0.75  # as tests/test_attack_xla.py: an example's images "agree"; the share that must


@pytest.mark.parametrize("name", [name for name in CASES if name not in ATTACKED])
def test_train_step_under_xla_matches_the_plain_graph(name, batches):
    plain_losses, plain_weights, plain = train(name, False, batches, **CASES[name])
    xla_losses, xla_weights, compiled = train(name, True, batches, **CASES[name])
    assert compiled.jit_compile and not plain.jit_compile
    assert np.all(np.isfinite(xla_losses))
    assert len(set(np.round(plain_losses, 4))) == STEPS  # the steps really trained (losses move)
    np.testing.assert_allclose(xla_losses, plain_losses, rtol=0, atol=TOLERANCE, err_msg=name)
    assert largest_difference(xla_weights, plain_weights) <= TOLERANCE, name
    if name == "free":  # the perturbation carried across minibatches, too
        np.testing.assert_allclose(compiled.delta.numpy(), plain.delta.numpy(), rtol=0, atol=TOLERANCE)


def _compiled_trainer(name, jit, **options):
    keras.utils.set_random_seed(0)
    trainer = training.make(name, tiny_network(), training.AttackConfig(eps=0.125, step_size=0.05, steps=3), seed=1,
                            **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit)
    trainer.optimizer.build(trainer.network.trainable_variables)  # its variables exist before the first step
    return trainer


def _attack_images(trainer, replay=False):
    """A variable in which the trainer's attack records the images it returns (XLA compiles the assignment); with
    `replay`, the trainer trains on the variable's images instead of attacking."""
    images = tf.Variable(tf.zeros((BATCH, 8, 8, 1)), trainable=False)
    attack = trainer.adversarial_examples

    def adversarial_examples(*args):
        if replay:
            return tf.identity(images)
        out = attack(*args)
        images.assign(out)
        return out

    trainer.adversarial_examples = adversarial_examples
    return images


def _state(trainer):
    return trainer.network.get_weights(), [v.numpy() for v in trainer.optimizer.variables]


def _set_state(trainer, state):
    weights, optimizer = state
    trainer.network.set_weights(weights)
    for variable, value in zip(trainer.optimizer.variables, optimizer):
        variable.assign(value)


@pytest.mark.parametrize("name", ATTACKED)
def test_attacked_train_step_under_xla_matches_the_plain_graph_step_by_step(name, batches):
    compiled, plain, replayed = (_compiled_trainer(name, jit, **CASES[name]) for jit in (True, False, False))
    assert compiled.jit_compile and not plain.jit_compile
    images = {"compiled": _attack_images(compiled), "plain": _attack_images(plain),
              "replayed": _attack_images(replayed, replay=True)}
    x, y = batches
    losses = []
    for i in range(STEPS):
        images_i, labels_i = x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH]
        before = _state(compiled)  # the optimizer's iteration too: the same keyed random starts
        losses.append(float(compiled.train_on_batch(images_i, labels_i, return_dict=True)["loss"]))
        assert np.isfinite(losses[-1])
        _set_state(plain, before)
        plain.train_on_batch(images_i, labels_i)
        # the attack: the plain graph's images from the same state agree on most examples, and both are valid
        ours, theirs = images["compiled"].numpy(), images["plain"].numpy()
        difference = np.abs(ours - theirs).reshape(BATCH, -1).max(1)
        assert np.mean(difference <= AGREE) >= MOST, (name, i, difference)
        for adversarial in (ours, theirs):
            assert adversarial.min() >= 0 and adversarial.max() <= 1
            assert np.abs(adversarial - images_i).max() <= 0.125 + 1e-6
        # the step: the plain graph on the compiled step's own images, from the same state
        _set_state(replayed, before)
        images["replayed"].assign(ours)
        loss = float(replayed.train_on_batch(images_i, labels_i, return_dict=True)["loss"])
        np.testing.assert_allclose(losses[-1], loss, rtol=0, atol=TOLERANCE, err_msg=f"{name} step {i}")
        assert largest_difference(compiled.network.get_weights(), replayed.network.get_weights()) <= TOLERANCE
    assert len(set(np.round(losses, 4))) == STEPS  # the steps really trained (losses move)


class RunningLoss(keras.callbacks.Callback):
    """The logged loss after every minibatch (the epoch's running mean: equal means, equal per-step losses)."""

    def __init__(self):
        super().__init__()
        self.values = []

    def on_train_batch_end(self, batch, logs=None):
        self.values.append(float(logs["loss"]))


def test_distillation_and_swa_under_xla(batches):
    """PGD with paper 001's two frozen teachers (robust and standard) called inside the compiled step, fitted for
    2 epochs with SWA from the first (a callback, run eagerly between the compiled steps): the same losses,
    weights and SWA average with and without XLA."""
    keras.utils.set_random_seed(5)
    teachers = [tiny_network(), tiny_network()]
    distillation = training.Distillation(
        {"robust": (lambda images: teachers[0](images, training=False), 0.5),
         "standard": (lambda images: teachers[1](images, training=False), 0.25)}, ce_weight=0.25)
    runs = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        network = tiny_network()
        trainer = training.make("pgd", network, training.AttackConfig(eps=0.125, step_size=0.05, steps=3), seed=1,
                                distillation=distillation)
        trainer.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit)
        swa, losses = callbacks.StochasticWeightAveraging(network, start_epoch=1), RunningLoss()
        x, y = batches
        trainer.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[swa, losses])
        assert swa.count == 2
        runs[jit] = (np.array(losses.values), [v.numpy() for v in network.weights],
                     [v.numpy() for v in swa.tracker.average], trainer)
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=0, atol=TOLERANCE)
    assert largest_difference(runs[True][1], runs[False][1]) <= TOLERANCE
    assert largest_difference(runs[True][2], runs[False][2]) <= TOLERANCE
    # the teachers' term is in the trained loss: 0.25 CE + 0.5 KD(robust) + 0.25 KD(standard)
    plain = runs[False][3]
    images, labels = tf.constant(batches[0][:BATCH]), tf.constant(batches[1][:BATCH])
    logits = plain.network(images)
    teachers_term = float(distillation.loss(images, logits))
    cross_entropy = float(tf.reduce_mean(base.losses.hard_cross_entropy(labels, logits)))
    assert teachers_term > 0.1
    np.testing.assert_allclose(float(plain.outer_loss(labels, logits, images)),
                               0.25 * cross_entropy + teachers_term, rtol=1e-6)


def test_keyed_draws_are_the_same_under_xla():
    """The random starts come from integer hashes: uniform bits are identical under XLA; a normal draw
    (Box-Muller through XLA's log and cos) differs in the last bits only."""
    keys = rng.fold(rng.example_keys(tf.range(BATCH, dtype=tf.int64), 1, base.SALT_TRADES_START), 7)
    draws = {}
    for jit in (False, True):
        draw = tf.function(lambda: (rng.uniform(keys, (8, 8, 1)), rng.normal(keys, (8, 8, 1))), jit_compile=jit)
        draws[jit] = [t.numpy() for t in draw()]
    np.testing.assert_array_equal(draws[True][0], draws[False][0])
    np.testing.assert_allclose(draws[True][1], draws[False][1], rtol=0, atol=1e-6)
