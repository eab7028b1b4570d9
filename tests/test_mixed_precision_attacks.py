"""Attacks on a model run under Keras mixed precision compute their loss and input gradient in float32.

Under `mixed_float16` the hidden layers compute (and backpropagate) in float16: the loss gradient reaching the
network is, for a confidently classified example, far below float16's smallest subnormal (6e-8), so an
unscaled backward pass underflows to zero and FGSM / PGD take no step at all. The attacks scale each
example's loss gradient at the logits by a power of two (exact, so float32 models are unaffected) so that its
largest entry is in [1, 2), backpropagate, and unscale in float32.

The measure: a small MLP trained in float32, its weights copied into the same architecture built under the
policy; over 200 test images (12 800 pixels), the share of pixels where the sign of the input gradient
(FGSM's step) of the mixed-precision model equals the float32 model's.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, models
import importlib
from tfadv.attacks import rng
from tfadv.attacks.cw import carlini_wagner_l2
from tfadv.attacks.fab import fab_targeted
from tfadv.attacks.pgd import input_gradient


@pytest.fixture(scope="module")
def float32_model(digits):
    keras.utils.set_random_seed(0)
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std, hidden=(64, 64))
    network.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(*digits.train, epochs=10, batch_size=64, verbose=0)
    return network


def _mixed_copy(network, digits, policy):
    spec = digits.spec
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std, hidden=(64, 64))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(network.get_weights())
    return mixed


# measured (200 images, 12 800 pixels; sign agreement of the input gradient with the float32 model's):
#   mixed_float16   before the fix: CE 90.2 % (9.6 % of the pixels with a zero gradient: underflow), after:
#                   CE 99.95 %, DLR 99.98 %, no zero gradients beyond the float32 model's own
#   mixed_bfloat16  (float32's exponent range, so no underflow, only an 8-bit mantissa): CE 99.57 %, DLR 99.39 %
#                   before and after
# DLR is exactly 1 (zero gradient) for a misclassified example whose label ranks third: the float32 model has
# two such examples, so zero gradients are compared with the float32 model's.
apgd_module = importlib.import_module("tfadv.attacks.apgd")
AGREEMENT = {"mixed_float16": 0.995, "mixed_bfloat16": 0.985}


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_gradient_signs_match_the_float32_model(float32_model, digits, policy):
    mixed = _mixed_copy(float32_model, digits, policy)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert mixed.layers[-2].compute_dtype != "float32"  # the hidden layers really run in low precision
    x, y = digits.test[0][:200], digits.test[1][:200].astype(np.int32)
    reference = lambda images: float32_model(images, training=False)  # noqa: E731
    low = lambda images: mixed(images, training=False)  # noqa: E731
    for loss in ("ce", "dlr"):
        _, g32 = input_gradient(reference, tf.constant(x), y, loss)
        _, g16 = input_gradient(low, tf.constant(x), y, loss)
        g32, g16 = g32.numpy(), g16.numpy()
        assert g16.dtype == np.float32
        assert np.mean(g16 == 0) <= np.mean(g32 == 0) + 0.001, (policy, loss)
        assert np.mean(np.sign(g16) == np.sign(g32)) >= AGREEMENT[policy], (policy, loss)
        # APGD's own gradient evaluation agrees too
        _, a16, _ = apgd_module._evaluate(low, tf.constant(x), tf.constant(y), loss, None)
        assert np.mean(np.sign(a16.numpy()) == np.sign(g32)) >= AGREEMENT[policy], (policy, loss)
    # FGSM's images and a PGD step from the same per-example random start
    eps = 0.125
    same = np.mean(attacks.fgsm(low, x, y, eps=eps).numpy() == attacks.fgsm(reference, x, y, eps=eps).numpy())
    assert same >= AGREEMENT[policy], policy
    keys = rng.example_keys(tf.range(len(y)))
    step = [attacks.pgd(fn, x, y, eps=eps, step_size=0.05, steps=1, keys=keys).numpy() for fn in (low, reference)]
    assert np.mean(np.abs(step[0] - step[1]) < 1e-6) >= AGREEMENT[policy], policy


def test_fab_and_cw_gradients_on_a_float16_model(float32_model, digits):
    """FAB's linearisation and C&W's gradient also run in float32 with a scaled float16 backward pass: the
    minimum norms they find on the float16 copy are close to the float32 model's (a guard: their logit
    gradients are O(1), so these did not underflow before either)."""
    mixed = _mixed_copy(float32_model, digits, "mixed_float16")
    x, y = digits.test[0][:40], digits.test[1][:40].astype(np.int32)
    norms = {}
    for name, net in (("32", float32_model), ("16", mixed)):
        fn = lambda images, net=net: net(images, training=False)  # noqa: E731
        norms["fab" + name] = fab_targeted(fn, x, y, steps=20, num_targets=3)[1].numpy()
        norms["cw" + name] = carlini_wagner_l2(fn, x, y, steps=50, binary_search_steps=5,
                                               initial_const=0.1).norms.numpy()
    for name in ("fab", "cw"):
        found = np.isfinite(norms[name + "32"]) & (norms[name + "32"] > 0)
        # measured: FAB finds 97.5 % (median norm ratio 1.0003), this short C&W 67.5 % (ratio 1.00001)
        assert found.mean() >= 0.6
        assert np.all(np.isfinite(norms[name + "16"][found])), name
        ratio = np.median(norms[name + "16"][found] / norms[name + "32"][found])
        assert 0.9 <= ratio <= 1.1, (name, ratio)


def test_a_batch_coupled_forward_pass_gets_the_exact_gradient(digits):
    """BatchNorm in training mode (a training attack with --attack_bn_mode=train) couples the examples: one
    scale for the batch gives the plain tape's gradient; per-example scales would weight the cross-example terms
    by s_i / s_j."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(16)(keras.layers.Flatten()(inputs)))
    net = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h)))
    x = tf.constant(digits.test[0][:32])
    labels = tf.constant(digits.test[1][:32].astype("int32"))
    logits_fn = lambda images: net(images, training=True)  # noqa: E731
    with tf.GradientTape() as tape:
        tape.watch(x)
        total = tf.reduce_sum(tf.constant(10.0 ** -(np.arange(32) % 6), tf.float32)
                              * attacks.cross_entropy(logits_fn(x), labels))
    reference = tape.gradient(total, x).numpy()
    # examples weighted over six orders of magnitude, so their per-example scales differ
    weights = tf.constant(10.0 ** -(np.arange(32) % 6), tf.float32)
    objective = lambda logits: weights * attacks.cross_entropy(logits, labels)  # noqa: E731
    _, coupled, _ = attacks.value_and_gradient(logits_fn, x, objective, independent=False)
    np.testing.assert_allclose(coupled.numpy(), reference, rtol=1e-5, atol=1e-7)
    _, per_example, _ = attacks.value_and_gradient(logits_fn, x, objective, independent=True)
    assert np.abs(per_example.numpy() - reference).max() > 10 * np.abs(coupled.numpy() - reference).max() + 1e-6
    # and the training attacks tell the attack which case they are in
    from tfadv import training

    for mode, independent in (("train", False), ("eval", True)):
        trainer = training.PGDTrainer(net, training.AttackConfig(0.1, 0.05, 2, bn_mode=mode))
        assert trainer.attack_independent is independent


def test_trades_inner_maximisation_moves_under_float16(float32_model, digits):
    """TRADES starts 0.001 N(0,1) from the clean point, where the KL's input gradient is tiny: in an unscaled
    float16 backward pass it underflows and delta never moves."""
    from tfadv import training

    x = tf.constant(digits.test[0][:100])
    mixed = _mixed_copy(float32_model, digits, "mixed_float16")
    steps = {}
    for name, network in (("float32", float32_model), ("float16", mixed)):
        trainer = training.TRADESTrainer(network, training.AttackConfig(0.125, 0.03, 1))
        steps[name] = np.sign((trainer.adversarial_examples(x) - x).numpy())
    # measured on these 100 images (6 400 pixels; about 29 % sit on the box edge, where the step is clipped in
    # float32 too): sign agreement with float32 0.767 with an unscaled float16 backward pass, 0.852 with the
    # scaled one (the rest: the float16 *forward* pass cannot resolve the 0.001 start's change of the logits)
    moved = np.mean(steps["float16"] != 0)
    agree = np.mean(steps["float16"] == steps["float32"])
    assert moved >= 0.98 * np.mean(steps["float32"] != 0) and agree > 0.82, (moved, agree)


def _ssat_attack_gradient(network, x, labels, target_beta):
    """SSATTrainer's delta gradient (Eq. 22, hard labels) from its shared training-mode forward pass, and the
    plain tape's gradient of the same objective."""
    from tfadv import training
    from tfadv.training import ssat

    trainer = training.make("ssat", network, training.AttackConfig(0.125, 0.05, 1), target_beta=target_beta)
    one_hot = tf.one_hot(labels, 10)
    with tf.GradientTape(persistent=True) as tape:
        x_adv = x + 0.0
        tape.watch(x_adv)
        logits = network(x_adv, training=True)
        wrong = tf.stop_gradient(attacks.most_confusing(tf.cast(logits, tf.float32), labels))
        attack_logits = tf.cast(logits, tf.float32)
        attack_loss = tf.reduce_sum(ssat.regularised_loss(one_hot, attack_logits, wrong, target_beta))
    scaled = trainer.attack_gradient(tape, attack_loss, attack_logits, logits, x_adv).numpy()
    plain = tf.cast(tape.gradient(attack_loss, x_adv), tf.float32).numpy()
    return scaled, plain


def test_ssat_attack_gradient_under_float16(float32_model, digits):
    """SSAT's delta ascends Eq. 22 through the training forward pass; with --ssat_target_beta=0 it is the hard-label
    CE, whose gradient underflows in an unscaled float16 backward pass for confidently classified examples.
    Measured on these 200 images: unscaled, 9.6 % zero pixels (15 examples with an all-zero gradient) and 90.2 %
    sign agreement with float32; scaled, no zero and 99.94 %. A float32 network gets the plain tape's bits."""
    x = tf.constant(digits.test[0][:200])
    labels = tf.constant(digits.test[1][:200].astype(np.int32))
    mixed = _mixed_copy(float32_model, digits, "mixed_float16")
    g32, plain32 = _ssat_attack_gradient(float32_model, x, labels, 0.0)
    np.testing.assert_array_equal(g32, plain32)
    g16, _ = _ssat_attack_gradient(mixed, x, labels, 0.0)
    assert g16.dtype == np.float32 and np.all(np.isfinite(g16))
    assert np.mean(g16 == 0) <= np.mean(g32 == 0) + 0.001
    assert np.mean(np.sign(g16) == np.sign(g32)) >= 0.995


def test_ssat_attack_gradient_with_batchnorm_is_exact(digits):
    """A training-mode BatchNorm couples the batch: SSAT then uses one scale for the batch, exactly the tape's
    gradient (per-example scales would weight the cross-example terms)."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.BatchNormalization()(keras.layers.Dense(16)(keras.layers.Flatten()(inputs)))
    net = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h)))
    x = tf.constant(digits.test[0][:32])
    labels = tf.constant(digits.test[1][:32].astype(np.int32))
    scaled, plain = _ssat_attack_gradient(net, x, labels, 0.0)
    np.testing.assert_allclose(scaled, plain, rtol=1e-6, atol=1e-9)
