import dataclasses
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import InputRecorder
from tfadv import attacks, callbacks, data, losses, models, targets, training


def _trainer(defense, digits, precision="float32", options=None, **keywords):
    keras.mixed_precision.set_global_policy(
        {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision])
    try:
        spec = digits.spec
        network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
        step = 1.25 * 0.125 if defense == "fgsm_rs" else (0.125 if defense == "free" else 0.03)
        attack = training.AttackConfig(eps=0.125, step_size=step, steps=3)
        if defense == "free":
            options = options or training.FreeTrainer.Options(replays=2)
            keywords.setdefault("batch_size", 64)
        trainer = training.registry.get(defense).trainer(network, attack, options, **keywords)
        trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
        return trainer, network
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("defense", training.DEFENSES)
def test_each_defense_trains_one_epoch_with_finite_loss(defense, precision, digits):
    trainer, network = _trainer(defense, digits, precision)
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=1)
    before = [v.numpy().copy() for v in network.trainable_variables]
    history = trainer.fit(ds, epochs=1, steps_per_epoch=8, verbose=0, shuffle=False)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss) and loss > 0
    logits = network(digits.test[0][:4], training=False)
    assert logits.dtype == tf.float32  # logits stay float32 under mixed precision
    # one weight update per minibatch, m per minibatch for the replay methods (Free-AT, SSAT): as the method
    # declares (`updates_per_batch`), and for the built-in ones as written here
    updates_per_batch = training.registry.get(defense).updates_per_batch(trainer.options)
    if defense in METHODS:
        assert updates_per_batch == {"free": 2, "ssat": trainer.options.replays if defense == "ssat" else 1
                                     }.get(defense, 1)
    assert int(trainer.optimizer.iterations.numpy()) == 8 * updates_per_batch
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, network.trainable_variables))


def test_natural_training_learns(digits):
    trainer, network = _trainer("natural", digits)
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=5)
    trainer.fit(ds, epochs=5, steps_per_epoch=21, verbose=0, shuffle=False)
    x, y = digits.test
    assert np.mean(np.argmax(network(x, training=False), -1) == y) > 0.9


def test_free_training_carries_delta_across_minibatches_inside_the_ball(digits):
    trainer, _ = _trainer("free", digits, options=training.FreeTrainer.Options(replays=3))
    assert float(tf.reduce_max(tf.abs(trainer.delta))) == 0.0
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=1)
    trainer.fit(ds, epochs=1, steps_per_epoch=2, verbose=0, shuffle=False)
    delta = trainer.delta.numpy()
    assert 0.1 < np.abs(delta).max() <= 0.125 + 1e-6
    # 2 batches x 3 replays = 6 weight updates
    assert int(trainer.optimizer.iterations.numpy()) == 6


def test_weight_decay_is_coupled_l2_like_torch_sgd(digits):
    # With a zero learning signal (all-zero inputs to a linear model, zero-initialised bias gradient aside),
    # one SGD step without momentum must shrink every kernel weight by lr * wd * w.
    network = models.build("linear", (8, 8, 1), 10)
    trainer = training.NaturalTrainer(network, training.AttackConfig(0.1, 0.1, 1), weight_decay=0.1)
    trainer.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.0), jit_compile=False)
    kernel = network.get_layer("classifier").kernel
    before = kernel.numpy().copy()
    x = np.zeros((10, 8, 8, 1), np.float32)  # zero input: the data gradient of the kernel is exactly zero
    trainer.train_on_batch(x, np.arange(10))
    np.testing.assert_allclose(kernel.numpy(), before * (1 - 0.5 * 0.1), rtol=1e-5)


def test_trades_adversarial_examples_stay_in_the_ball(digits):
    trainer, _ = _trainer("trades", digits)
    x = tf.constant(digits.test[0][:32])
    x_adv = trainer.adversarial_examples(x)
    assert attacks.perturbation_norm(x_adv - x, "linf").numpy().max() <= 0.125 + 1e-6
    assert float(tf.reduce_min(x_adv)) >= 0 and float(tf.reduce_max(x_adv)) <= 1


def test_learning_rate_schedules():
    piecewise = callbacks.make_schedule("piecewise", 0.1, 10, 5, decay_epochs=[4, 8], decay_factor=0.1)
    assert np.isclose(float(piecewise(0)), 0.1) and np.isclose(float(piecewise(19)), 0.1)
    assert np.isclose(float(piecewise(20)), 0.01) and np.isclose(float(piecewise(45)), 0.001)
    cyclic = callbacks.make_schedule("cyclic", 0.04, 10, 10, peak_fraction=0.4)
    assert float(cyclic(0)) == 0.0 and np.isclose(float(cyclic(40)), 0.04) and float(cyclic(100)) == 0.0
    assert np.isclose(float(cyclic(20)), 0.02) and np.isclose(float(cyclic(70)), 0.02)
    cosine = callbacks.make_schedule("cosine", 0.1, 10, 10, warmup_epochs=1)
    assert np.isclose(float(cosine(5)), 0.05) and np.isclose(float(cosine(10)), 0.1)
    assert np.isclose(float(cosine(55)), 0.05, atol=1e-6) and np.isclose(float(cosine(100)), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="valid"):
        callbacks.make_schedule("step", 0.1, 1, 1)


def _smoothing_trainer(defense, digits, smoothing, **options):
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    attack = training.AttackConfig(eps=0.125, step_size=0.03, steps=3)
    trainer = training.registry.get(defense).trainer(network, attack, smoothing=smoothing, **options)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    return trainer, network


@pytest.mark.parametrize("defense,smoothing", [
    ("label_smoothing", training.SmoothingConfig("uniform", 0.5)),
    ("label_smoothing", training.SmoothingConfig("sls", 0.1)),
    ("label_smoothing", training.SmoothingConfig("als", 0.1)),
    ("label_smoothing", training.SmoothingConfig("bls", 0.1, temperature=0.001)),
    ("label_smoothing", training.SmoothingConfig("sbls", 0.1)),
    ("logit_squeeze", training.SmoothingConfig(squeeze_beta=0.5)),
    ("logit_squeeze", training.SmoothingConfig(squeeze_beta=0.5, squeeze_reduction="mean_l2")),
    ("trades", training.SmoothingConfig("als", 0.1, squeeze_beta=0.1)),
    ("fgsm_rs", training.SmoothingConfig("uniform", 0.2)),
])
def test_label_smoothing_defenses_train_with_noise(defense, smoothing, digits):
    trainer, network = _smoothing_trainer(defense, digits, smoothing)
    ds = data.train_pipeline(digits.train, digits.spec, 64, seed=0, epochs=1, noise_sigma=0.3)
    history = trainer.fit(ds, epochs=1, steps_per_epoch=8, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"][-1])
    # the loss of one more step, by hand (numpy) on the inputs that step trains on (keyed attacks: the same)
    x, y = next(iter(ds))
    y = tf.cast(y, tf.int32)
    one_hot = np.eye(10)[y.numpy()]
    if defense == "trades":
        x_train = trainer.adversarial_examples(x)
        clean = network(x, training=True).numpy().astype(np.float64)
    elif defense == "fgsm_rs":
        x_train = trainer.adversarial_examples(x, y)
    else:
        x_train = x
    z = network(x_train, training=True).numpy().astype(np.float64)
    z_ce = clean if defense == "trades" else z
    log_p = z_ce - z_ce.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    a, k = smoothing.alpha, 10
    wrong = 1.0 - one_hot
    if smoothing.method == "uniform":
        soft = one_hot - a * (one_hot - 1.0 / k)
    elif smoothing.method == "sls":
        soft = (1 - a) * one_hot + a * wrong / (k - 1)
    elif smoothing.method == "als":
        lowest = (z_ce == z_ce.min(-1, keepdims=True)).astype(float)
        soft = (1 - a) * one_hot + a * lowest / lowest.sum(-1, keepdims=True)
    elif smoothing.method == "bls":
        e = np.where(wrong > 0, -z_ce / smoothing.temperature, -np.inf)
        e = np.exp(e - e.max(-1, keepdims=True))
        soft = (1 - a) * one_hot + a * e / e.sum(-1, keepdims=True)
    elif smoothing.method == "sbls":
        soft = (1 - a) * one_hot + a * np.eye(k)[np.where(wrong > 0, z_ce, -np.inf).argmax(-1)]
    else:
        soft = one_hot
    expected = -(soft * log_p).sum(-1).mean()
    if smoothing.squeeze_beta:
        if smoothing.squeeze_reduction == "frobenius":
            expected += smoothing.squeeze_beta * np.sqrt((z_ce ** 2).sum()) / len(z_ce)
        else:
            expected += smoothing.squeeze_beta * np.sqrt((z_ce ** 2).sum(-1)).mean()
    if defense == "trades":
        p_adv = z - z.max(-1, keepdims=True)
        p_adv = p_adv - np.log(np.exp(p_adv).sum(-1, keepdims=True))
        expected += trainer.beta * (np.exp(log_p) * (log_p - p_adv)).sum(-1).mean()
    trainer.loss_tracker.reset_state()
    reported = float(trainer.train_step((x, y))["loss"])
    np.testing.assert_allclose(reported, expected, rtol=1e-4)


def test_pgd_with_als_trains_on_als_targets(digits):
    hard, network = _smoothing_trainer("pgd", digits, training.SmoothingConfig())
    als_trainer = training.PGDTrainer(network, hard.attack, smoothing=training.SmoothingConfig("als", 0.4))
    x, y = tf.constant(digits.test[0][:64]), tf.constant(digits.test[1][:64])
    logits = network(x, training=False)
    expected = targets.als(tf.one_hot(y, 10), logits, 0.4)
    np.testing.assert_allclose(als_trainer.soft_targets(y, logits).numpy(), expected.numpy(), atol=1e-7)
    assert not np.allclose(expected.numpy(), tf.one_hot(y, 10).numpy())
    smooth_loss = float(als_trainer.outer_loss(y, logits))
    np.testing.assert_allclose(smooth_loss, float(tf.reduce_mean(losses.soft_cross_entropy(expected, logits))),
                               rtol=1e-5)
    assert abs(smooth_loss - float(hard.outer_loss(y, logits))) > 0.05
    # and the ALS term pulls the arg-min logit up: its gradient differs from the hard-label one
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        a = als_trainer.outer_loss(y, logits)
        b = hard.outer_loss(y, logits)
    lowest = tf.argmin(logits, -1)
    ga = tf.gather(tape.gradient(a, logits), lowest, batch_dims=1)
    gb = tf.gather(tape.gradient(b, logits), lowest, batch_dims=1)
    assert float(tf.reduce_mean(ga - gb)) < 0  # descent raises the arg-min logit under ALS


def _recording_network(batch_norm=False):
    keras.utils.set_random_seed(0)
    recorder = InputRecorder()
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(32)(keras.layers.Flatten()(recorder(inputs)))
    if batch_norm:
        h = keras.layers.BatchNormalization()(h)
    network = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h)))
    return network, recorder


def test_free_training_trains_only_on_images_inside_the_box(digits):
    # Shafahi et al.'s code clamps input + noise to [0, 1] on every replay; the delta carried over from the
    # previous minibatch must not push the next minibatch outside the box.
    network, recorder = _recording_network()
    trainer = training.FreeTrainer(network, training.AttackConfig(eps=0.3, step_size=0.3, steps=1),
                                   training.FreeTrainer.Options(replays=2), batch_size=32)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05), jit_compile=False)
    x, y = digits.train
    for i in range(4):
        trainer.train_step((tf.constant(x[i * 32:(i + 1) * 32]), tf.constant(y[i * 32:(i + 1) * 32])))
    trained_on = [image for flag, image in recorder.seen if flag]
    assert len(trained_on) == 8  # 4 minibatches x 2 replays
    # the carried delta really would leave the box on a new minibatch (the test is not vacuous)
    assert np.abs(trainer.delta.numpy()).max() > 0.2
    for image in trained_on:
        assert image.min() >= 0.0 and image.max() <= 1.0


def test_weight_decay_scope_kernels_decays_kernels_only(digits):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(3, 3, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    logits = keras.layers.Dense(10, name="dense")(keras.layers.Flatten()(h))
    network = keras.Model(inputs, logits)
    x, y = tf.constant(digits.train[0][:16]), tf.constant(digits.train[1][:16])

    def one_step(scope):
        net = keras.models.clone_model(network)
        net.set_weights(network.get_weights())
        before = {v.path: v.numpy().copy() for v in net.trainable_variables}
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.hard_cross_entropy(y, net(x, training=True)))
        plain = dict(zip([v.path for v in net.trainable_variables], tape.gradient(loss, net.trainable_variables)))
        net.set_weights(network.get_weights())
        trainer = training.NaturalTrainer(net, training.AttackConfig(0.1, 0.1, 1), weight_decay=0.1,
                                          weight_decay_scope=scope)
        trainer.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.0), jit_compile=False)
        trainer.train_step((x, y))
        return before, plain, {v.path: v.numpy() for v in net.trainable_variables}

    before, plain, after = one_step("kernels")
    decayed = {path for path in before if path.endswith("kernel")}
    assert decayed == {"conv/kernel", "dense/kernel"}
    assert {"conv/bias", "bn/gamma", "bn/beta", "dense/bias"} <= set(before) - decayed
    for path, value in before.items():
        expected = value - 0.5 * (plain[path].numpy() + (0.1 * value if path in decayed else 0.0))
        np.testing.assert_allclose(after[path], expected, rtol=1e-5, atol=1e-7, err_msg=path)
    before, plain, after = one_step("all")
    for path, value in before.items():
        np.testing.assert_allclose(after[path], value - 0.5 * (plain[path].numpy() + 0.1 * value), rtol=1e-5,
                                   atol=1e-7, err_msg=path)
    with pytest.raises(ValueError, match="weight_decay_scope"):
        training.NaturalTrainer(network, training.AttackConfig(0.1, 0.1, 1), weight_decay_scope="bn")


def test_trades_objective_and_gradient_on_hand_written_logits():
    clean = np.array([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]], np.float32)
    adv = np.array([[1.0, 1.5, -0.5], [0.5, 0.0, 2.0]], np.float32)
    labels = np.array([0, 2])
    beta = 6.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(clean.astype(np.float64)), softmax(adv.astype(np.float64))
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    np.testing.assert_allclose(losses.kl_divergence(clean, adv).numpy(), kl, rtol=1e-5)
    ce = -np.log(p[np.arange(2), labels])
    expected = ce.mean() + beta * kl.mean()
    network = models.build("linear", (8, 8, 1), 3)
    trainer = training.TRADESTrainer(network, training.AttackConfig(0.1, 0.1, 1), training.TRADESTrainer.Options(beta))
    z_clean, z_adv = tf.Variable(clean), tf.Variable(adv)
    with tf.GradientTape() as tape:
        objective = (trainer.outer_loss(tf.constant(labels), z_clean)
                     + beta * tf.reduce_mean(losses.kl_divergence(z_clean, z_adv)))
    np.testing.assert_allclose(float(objective), expected, rtol=1e-5)
    g_clean, g_adv = tape.gradient(objective, [z_clean, z_adv])
    # closed forms: d/dz_adv = beta/B (q - p); d/dz_clean = 1/B (p - y) + beta/B * p * (log p - log q - KL)
    y = np.eye(3)[labels]
    np.testing.assert_allclose(g_adv.numpy(), beta / 2 * (q - p), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_clean.numpy(), (p - y) / 2 + beta / 2 * p * (np.log(p) - np.log(q) - kl[:, None]),
                               rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# the registry: each method module registers its trainer, its Options (flags named as before) and its features

FLAGS_BEFORE = {  # flag: (default, --help) as tfadv/cli.py defined them before the methods owned their options
    "pgd_labels": ("hard", "pgd: hard, or bat (Madry-LA: BAT's adversarial labels)"),
    "free_replays": (8, "free: replays m of each minibatch"),
    # added with their own step rules (docs/presets.md D9, D10, D11)
    "free_step_size": (0.0, "free: step size in pixel levels (0 = eps, Shafahi et al.)"),
    "free_clip_delta": (True, "free: also clip the carried perturbation to the current batch's [0, 1] box (Wong et "
                              "al.'s re-implementation); off = Shafahi et al.'s code: clamp it to +-eps only and "
                              "clip the input"),
    "fgsm_rs_step_size": (0.0, "fgsm_rs: step size in pixel levels (0 = 1.25 eps, Wong et al.'s alpha)"),
    "trades_beta": (6.0, "trades: weight of the KL term"),
    "bat_attack": ("mc", "bat: mc (targeted most confusing), ll (least likely), fgsm (untargeted)"),
    "bat_random_start": (True, "bat: uniform random start in the eps-ball"),
    "bat_labels": ("adversarial", "bat: adversarial (Eq. 14/18), uniform (R-MC-LS, --bat_eps_y), hard"),
    "bat_step_size": (0.0, "bat: step size in pixel levels (0 = eps)"),
    "ssat_replays": (8, "ssat: replays m per minibatch (8 ResNet-18, 4 WRN)"),
    "ssat_gamma": (0.3, "ssat: delta re-initialised uniformly in +-gamma*eps per minibatch"),
    "ssat_lambda0": (1.0, "ssat: smoothing lambda at the clean point (Eq. 7)"),
    "ssat_lambda1": (0.3, "ssat: smoothing lambda at ||delta|| = eps (0.3 ResNet-18, 0.4 WRN)"),
    "ssat_target_beta": (0.2, "ssat: target regularisation beta (Eq. 21-22; 0.2 ResNet-18, 0.1 WRN; 0 = off)"),
    "ssat_step_size": (0.0, "ssat: delta step in pixel levels (0 = eps / m)"),
    "ssat_boundary_split": (True, "ssat: hard labels for misclassified perturbed points (off = smooth every point)"),
    "ssat_adaptive": (True, "ssat: lambda falls with ||delta|| (off = constant lambda1)"),
}

CLEAN = {"label_smoothing", "logit_squeeze", "distillation"}
METHODS = {  # name: (trainer, supports, requires, clean, norms)
    "natural": ("NaturalTrainer", CLEAN, set(), True, ("linf", "l2", "l1")),
    "pgd": ("PGDTrainer", CLEAN | {"adversarial_labels"}, set(), False, ("linf", "l2")),
    "fgsm_rs": ("FGSMRSTrainer", CLEAN, set(), False, ("linf", "l2", "l1")),
    "free": ("FreeTrainer", CLEAN, set(), False, ("linf", "l2", "l1")),
    "trades": ("TRADESTrainer", CLEAN, set(), False, ("linf", "l2", "l1")),
    "bat": ("BATTrainer", {"logit_squeeze", "distillation", "adversarial_labels"}, set(), False, ("linf", "l2", "l1")),
    "ssat": ("SSATTrainer", {"logit_squeeze", "distillation"}, set(), False, ("linf", "l2", "l1")),
    "label_smoothing": ("NaturalTrainer", CLEAN, {"label_smoothing"}, True, ("linf", "l2", "l1")),
    "logit_squeeze": ("NaturalTrainer", CLEAN, {"logit_squeeze"}, True, ("linf", "l2", "l1")),
}


def test_every_method_is_registered_with_its_features_and_todays_flags():
    registry = training.registry
    # the built-in methods first, in the order of --defense's help as before; a method added since follows them
    assert training.DEFENSES == registry.names() and registry.names()[:len(METHODS)] == tuple(METHODS)
    assert training.CLEAN_DEFENSES == tuple(method.name for method in registry.methods() if method.clean)
    assert tuple(name for name in training.CLEAN_DEFENSES if name in METHODS) == ("natural", "label_smoothing",
                                                                                   "logit_squeeze")
    flags = {}
    for name, (trainer, supports, requires, clean, norms) in METHODS.items():
        method = registry.get(name)
        assert training.TRAINERS[name] is method.trainer and method.trainer.__name__ == trainer
        assert (set(method.supports), set(method.requires), method.clean, method.norms) == (supports, requires,
                                                                                            clean, norms)
        assert method.trainer.Options is method.options
        defaults = method.options()
        for flag, field in method.flags().items():
            declared = {f.name: f for f in dataclasses.fields(method.options)}[field]
            flags[flag] = (getattr(defaults, field), declared.metadata["help"])
            assert type(getattr(defaults, field)) is type(FLAGS_BEFORE[flag][0]), flag
    assert flags == FLAGS_BEFORE


@pytest.mark.parametrize("name", training.DEFENSES)
def test_a_registered_method_declares_a_consistent_registration(name):
    """For every registered method, built-in or added since: its trainer takes its Options, every option field
    is a flag --<prefix>_<field> with --help text and a default that passes its own check, its step rule,
    BatchNorm reading and updates per minibatch are well formed, and its example run is a valid run config."""
    from tfadv.config import TrainConfig

    registry = training.registry
    method = registry.get(name)
    assert training.TRAINERS[name] is method.trainer and method.trainer.Options is method.options
    assert issubclass(method.trainer, training.Trainer)
    fields = dataclasses.fields(method.options)
    assert method.flags() == {(f"{method.flag_prefix}_{f.name}" if method.flag_prefix else f.name): f.name
                              for f in fields}
    assert fields == () or method.flag_prefix, "a method with options needs a flag prefix"
    for field in fields:
        assert field.metadata.get("help"), field.name
    defaults = method.options()
    defaults.validate(_run(name))
    assert method.step_flag == "step_size" or method.step_flag in method.flags()
    assert float(method.step_levels(defaults, 8.0, 2.0)) > 0
    assert method.attack_bn_mode in training.BN_MODES and isinstance(method.attack_bn_applies, bool)
    assert isinstance(method.random_start(defaults), bool)
    assert int(method.updates_per_batch(defaults)) >= 1
    assert set(method.norms) <= set(registry.NORMS) and method.norms
    config = TrainConfig.from_flags(defense=name, output_dir="unused", **method.example).validate()
    assert config.method is method


def _run(defense="pgd", ls_method="none"):
    return types.SimpleNamespace(defense=defense, spec=types.SimpleNamespace(num_classes=10),
                                 smoothing=types.SimpleNamespace(ls_method=ls_method),
                                 attack=types.SimpleNamespace(eps=2.0))


@pytest.mark.parametrize("defense,options,run,flag,message", [
    ("pgd", dict(labels="soft"), _run(), "pgd_labels", "unknown value 'soft'; valid: hard, bat"),
    ("pgd", dict(labels="bat"), _run(ls_method="uniform"), "ls_method",
     "BAT's labels replace label smoothing; use --bat_labels=uniform for R-MC-LS"),
    ("pgd", dict(labels="bat"), _run("fgsm_rs"), "pgd_labels", "bat labels (Madry-LA) apply to --defense=pgd"),
    ("free", dict(replays=0), _run("free"), "free_replays", "must be a positive integer, got 0"),
    ("trades", dict(beta=-1.0), _run("trades"), "trades_beta", "must not be negative, got -1.0"),
    ("bat", dict(attack="pgd"), _run("bat"), "bat_attack", "unknown value 'pgd'; valid: mc, ll, fgsm"),
    ("bat", dict(labels="soft"), _run("bat"), "bat_labels",
     "unknown value 'soft'; valid: adversarial, uniform, hard"),
    ("bat", dict(step_size=-1.0), _run("bat"), "bat_step_size", "must not be negative, got -1.0"),
    ("bat", dict(), _run("bat", "sls"), "ls_method",
     "BAT's labels replace label smoothing; use --bat_labels=uniform for R-MC-LS"),
    ("ssat", dict(replays=0), _run("ssat"), "ssat_replays", "must be a positive integer, got 0"),
    ("ssat", dict(lambda0=0.2, lambda1=0.3), _run("ssat"), "ssat_lambda1",
     "SSAT needs 0 <= lambda1 <= lambda0 <= 1 (Eq. 7), got lambda0=0.2, lambda1=0.3"),
    ("ssat", dict(gamma=-0.1), _run("ssat"), "ssat_gamma", "must not be negative, got -0.1"),
    ("ssat", dict(gamma=1.5), _run("ssat"), "ssat_gamma", "must be in [0, 1], got 1.5"),
    ("ssat", dict(target_beta=-0.1), _run("ssat"), "ssat_target_beta", "must not be negative, got -0.1"),
    ("ssat", dict(step_size=-1.0), _run("ssat"), "ssat_step_size", "must not be negative, got -1.0"),
    ("ssat", dict(), _run("ssat", "als"), "ls_method",
     "SSAT builds its own adaptive labels; --ls_method does not apply"),
])
def test_method_options_refuse_todays_bad_values_with_todays_messages(defense, options, run, flag, message):
    method = training.registry.get(defense)
    with pytest.raises(training.registry.OptionError) as info:
        method.options(**options).validate(run)
    assert info.value.flag == flag and str(info.value) == f"--{flag}: {message}"


def test_method_options_accept_good_values_and_give_the_attack_budget_in_levels():
    registry = training.registry
    for method in registry.methods():
        method.options().validate(_run(method.name))
    registry.get("pgd").options(labels="bat").validate(_run("pgd"))
    bat_method, ssat_method, free_method = registry.get("bat"), registry.get("ssat"), registry.get("free")
    # BAT: --bat_step_size or eps, random start by flag; SSAT: --ssat_step_size or eps / m; others --step_size
    assert bat_method.step_levels(bat_method.options(), 8.0, 2.0) == 8.0
    assert bat_method.step_levels(bat_method.options(step_size=3.0), 8.0, 2.0) == 3.0
    assert bat_method.random_start(bat_method.options(random_start=False)) is False
    assert ssat_method.step_levels(ssat_method.options(replays=4), 8.0, 2.0) == 2.0
    assert ssat_method.step_levels(ssat_method.options(step_size=1.5), 8.0, 2.0) == 1.5
    assert registry.get("pgd").step_levels(registry.get("pgd").options(), 8.0, 2.0) == 2.0
    assert ssat_method.updates_per_batch(ssat_method.options(replays=4)) == 4
    assert free_method.updates_per_batch(free_method.options(replays=3)) == 3
    assert registry.get("trades").updates_per_batch(registry.get("trades").options()) == 1


@pytest.mark.parametrize("name", training.DEFENSES)
def test_every_trainer_takes_the_same_keywords(name):
    method = training.registry.get(name)
    network = models.build("linear", (8, 8, 1), 10)
    kd = training.Distillation({"robust": (lambda v: network(v, training=False), 0.5)}, ce_weight=0.5)
    trainer = method.trainer(network, training.AttackConfig(0.1, 0.1, 1), method.options(), weight_decay=1e-4,
                             weight_decay_scope="kernels", smoothing=training.SmoothingConfig(squeeze_beta=0.1),
                             distillation=kd, label_adversary=training.LabelAdversary(beta=5.0), seed=3,
                             eps_warmup_updates=2, batch_size=32)
    assert trainer.options == method.options() and trainer.seed == 3 and trainer.distillation is kd
    assert method.trainer(network, training.AttackConfig(0.1, 0.1, 1), batch_size=32).options == method.options()
    with pytest.raises(TypeError, match="Options"):
        method.trainer(network, training.AttackConfig(0.1, 0.1, 1), object(), batch_size=32)


def test_label_adversary_reaches_bat_and_madry_la_only():
    network = models.build("linear", (8, 8, 1), 10)
    attack = training.AttackConfig(0.1, 0.1, 1)
    given = training.LabelAdversary(beta=5.0, gamma=0.02, top_k=3)
    assert training.PGDTrainer(network, attack, label_adversary=given).label_adversary is None
    madry_la = training.PGDTrainer(network, attack, training.PGDTrainer.Options(labels="bat"), label_adversary=given)
    assert madry_la.label_adversary == given
    bat_trainer = training.BATTrainer(network, attack, training.BATTrainer.Options(labels="uniform"),
                                      label_adversary=given)
    assert bat_trainer.labels == dataclasses.replace(given, kind="uniform")
    # without one: BAT's beta for the class count (9 for 10 classes, 11 for 100)
    assert training.BATTrainer(network, attack).labels == training.LabelAdversary("adversarial", beta=9.0)
    wide = models.build("linear", (8, 8, 1), 100)
    assert training.BATTrainer(wide, attack).labels.beta == 11.0
    with pytest.raises(ValueError, match="batch_size"):
        training.FreeTrainer(network, attack)
