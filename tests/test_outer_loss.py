"""The composed outer loss (`Trainer.outer_loss`): targets -> cross-entropy -> distillation -> logit squeezing,
in one place for every method.

* Combinations that worked before the composition give the very losses and weights captured from the code
  before it (tests/data/outer_loss_before.json: two SGD steps of each combination on a BatchNorm network).
* Combinations that were accepted but silently dropped a feature (PGD with BAT's labels and --squeeze_beta or
  teachers, TRADES with teachers and --ls_method or --squeeze_beta, SSAT with --squeeze_beta) and the ones
  the composition newly enables (teachers for Free-AT, BAT and SSAT) now train with the feature: the step's
  loss differs from the run without it and equals the composed formula computed by hand (numpy, float64) from
  the same logits, targets and teacher logits.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from tfadv import losses, models, training
from tfadv.training import bat, free, pgd, ssat, trades

with open(os.path.join(ROOT, "tests", "data", "outer_loss_before.json")) as _handle:
    BEFORE = json.load(_handle)

S = training.SmoothingConfig
LA = training.LabelAdversary
ATTACKS = dict(pgd=training.AttackConfig(0.125, 0.03, 3), pgd_l2=training.AttackConfig(0.5, 0.2, 3, norm="l2"),
               fgsm_rs=training.AttackConfig(0.125, 1.25 * 0.125, 1), free=training.AttackConfig(0.125, 0.125, 1),
               trades=training.AttackConfig(0.125, 0.03, 3), bat=training.AttackConfig(0.125, 0.125, 1),
               bat_fixed=training.AttackConfig(0.125, 0.125, 1, random_start=False),
               ssat=training.AttackConfig(0.125, 0.125 / 2, 1),
               ssat_l2=training.AttackConfig(0.5, 0.25, 1, norm="l2"),
               natural=training.AttackConfig(0.125, 0.03, 1))

# name: (defense, attack, options, keywords, with teachers); the same runs as the capture before the change
SCENARIOS = {
    "natural": ("natural", "natural", None, {}, False),
    "natural_uniform": ("natural", "natural", None, dict(smoothing=S("uniform", 0.2)), False),
    "label_smoothing_als": ("label_smoothing", "natural", None, dict(smoothing=S("als", 0.1)), False),
    "label_smoothing_bls": ("label_smoothing", "natural", None, dict(smoothing=S("bls", 0.1)), False),
    "logit_squeeze": ("logit_squeeze", "natural", None, dict(smoothing=S(squeeze_beta=0.5)), False),
    "logit_squeeze_mean_l2": ("logit_squeeze", "natural", None,
                              dict(smoothing=S(squeeze_beta=0.5, squeeze_reduction="mean_l2")), False),
    "natural_teachers": ("natural", "natural", None, {}, True),
    "natural_teachers_sls_squeeze": ("natural", "natural", None, dict(smoothing=S("sls", 0.1, squeeze_beta=0.1)),
                                     True),
    "pgd": ("pgd", "pgd", None, {}, False),
    "pgd_squeeze": ("pgd", "pgd", None, dict(smoothing=S(squeeze_beta=0.1)), False),
    "pgd_teachers": ("pgd", "pgd", None, {}, True),
    "pgd_sbls": ("pgd", "pgd", None, dict(smoothing=S("sbls", 0.1)), False),
    "pgd_l2": ("pgd", "pgd_l2", None, {}, False),
    "pgd_bat_labels": ("pgd", "pgd", pgd.Options(labels="bat"), dict(label_adversary=LA()), False),
    "pgd_bat_labels_top3": ("pgd", "pgd", pgd.Options(labels="bat"), dict(label_adversary=LA(top_k=3)), False),
    "fgsm_rs_uniform_squeeze": ("fgsm_rs", "fgsm_rs", None, dict(smoothing=S("uniform", 0.1, squeeze_beta=0.1)),
                                False),
    "fgsm_rs_teachers": ("fgsm_rs", "fgsm_rs", None, {}, True),
    "free": ("free", "free", free.Options(replays=2), dict(batch_size=64), False),
    "free_uniform_squeeze": ("free", "free", free.Options(replays=2),
                             dict(batch_size=64, smoothing=S("uniform", 0.1, squeeze_beta=0.1)), False),
    "trades": ("trades", "trades", None, {}, False),
    "trades_als_squeeze": ("trades", "trades", trades.Options(beta=3.0), dict(smoothing=S("als", 0.1, squeeze_beta=0.1)),
                           False),
    "trades_teachers": ("trades", "trades", None, {}, True),
    "bat": ("bat", "bat", None, {}, False),
    "bat_uniform": ("bat", "bat", bat.Options(labels="uniform"), dict(label_adversary=LA(eps_y=0.4)), False),
    "bat_ll_hard": ("bat", "bat", bat.Options(attack="ll", labels="hard"), {}, False),
    "bat_fgsm_fixed_start": ("bat", "bat_fixed", bat.Options(attack="fgsm", random_start=False), {}, False),
    "bat_squeeze": ("bat", "bat", None, dict(smoothing=S(squeeze_beta=0.1)), False),
    "bat_top3": ("bat", "bat", None, dict(label_adversary=LA(top_k=3)), False),
    "ssat": ("ssat", "ssat", ssat.Options(replays=2), {}, False),
    "ssat_ablation": ("ssat", "ssat", ssat.Options(replays=2, boundary_split=False, adaptive=False, target_beta=0.0),
                      {}, False),
    "ssat_l2": ("ssat", "ssat_l2", ssat.Options(replays=2, lambda0=0.9, lambda1=0.2, target_beta=0.3), {}, False),
}


def _bn_networks():
    """Student, robust teacher, standard teacher: Dense-BatchNorm-ReLU-Dense on digits, seeded."""
    keras.utils.set_random_seed(0)
    out = []
    for _ in range(3):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.BatchNormalization()(keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
        out.append(keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h))))
    return out


def _teachers(robust, standard, weights=(0.25, 0.5, 0.25)):
    return training.Distillation({"robust": (lambda v: robust(v, training=False), weights[1]),
                                  "standard": (lambda v: standard(v, training=False), weights[2])},
                                 ce_weight=weights[0], temperature=2.0)


def _run_scenario(name, digits):
    defense, attack, options, keywords, teachers = SCENARIOS[name]
    student, robust, standard = _bn_networks()
    keywords = dict(keywords)
    if teachers:
        keywords["distillation"] = _teachers(robust, standard)
    trainer = training.TRAINERS[defense](student, ATTACKS[attack], options, **keywords)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    x, y = digits.train[0][:128], digits.train[1][:128].astype("int32")
    step_losses = [float(trainer.train_on_batch(x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64],
                                                return_dict=True)["loss"]) for i in range(2)]
    checksum = float(sum(np.sum(np.abs(w.numpy()).astype(np.float64)) for w in student.weights))
    return {"loss1": step_losses[0], "loss2": step_losses[1], "weights": checksum}


def test_the_scenarios_are_the_captured_ones():
    assert set(SCENARIOS) == set(BEFORE)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_unchanged_combinations_train_as_before(name, digits):
    # Bit-identical on the machine that captured them (checked when the composition was introduced); the
    # tolerance only absorbs another CPU's float rounding. The exact op order is pinned by the in-process
    # comparisons with the formulas of the code before the change below.
    result = _run_scenario(name, digits)
    for key, value in result.items():
        np.testing.assert_allclose(value, float.fromhex(BEFORE[name][key]), rtol=1e-6, err_msg=f"{name} {key}")


# ---------------------------------------------------------------------------------------------------------
# the same op order as the code before the composition, in-process (exact on any machine)

def _logits(seed, rows=16, classes=10):
    return tf.constant(np.random.default_rng(seed).normal(size=(rows, classes)).astype(np.float32) * 3)


def _linear_teachers():
    keras.utils.set_random_seed(3)
    robust, standard = (models.build("linear", (8, 8, 1), 10) for _ in range(2))
    return _teachers(robust, standard)


def _plain_trainer(cls=training.NaturalTrainer, options=None, **keywords):
    return cls(models.build("linear", (8, 8, 1), 10), ATTACKS["natural"], options, **keywords)


def test_outer_loss_keeps_the_old_float_operations():
    labels = tf.constant(np.arange(16) % 10, tf.int32)
    logits, other = _logits(0), _logits(1)
    x = tf.constant(np.random.default_rng(2).uniform(size=(16, 8, 8, 1)).astype(np.float32))
    kd = _linear_teachers()
    soft = tf.nn.softmax(_logits(4))
    squeeze = S(squeeze_beta=0.3)
    # hard labels, --ls_method, teachers, squeeze: mean CE, ce_weight * CE + sum of weighted KD means, + squeeze
    smooth = S("sbls", 0.2, squeeze_beta=0.3)
    old = tf.reduce_mean(losses.soft_cross_entropy(_plain_trainer(smoothing=smooth).soft_targets(labels, logits),
                                                   logits))
    old = kd.ce_weight * old + kd.loss(x, logits)
    old += losses.logit_squeeze(logits, 0.3)
    new = _plain_trainer(smoothing=smooth, distillation=kd).outer_loss(labels, logits, x)
    assert float(new) == float(old)
    hard = tf.reduce_mean(losses.hard_cross_entropy(labels, logits))
    assert float(_plain_trainer().outer_loss(labels, logits, x)) == float(hard)
    # BAT / Madry-LA: the mean soft CE on their labels (+ squeeze for BAT)
    mean_soft = tf.reduce_mean(losses.soft_cross_entropy(soft, logits))
    assert float(_plain_trainer().outer_loss(labels, logits, x, targets=soft)) == float(mean_soft)
    with_squeeze = mean_soft + losses.logit_squeeze(logits, 0.3)
    assert float(_plain_trainer(smoothing=squeeze).outer_loss(labels, logits, x, targets=soft)) == float(with_squeeze)
    # TRADES with teachers: ce_weight * hard CE on the clean logits + KD on the adversarial pair
    trades_old = kd.ce_weight * hard + kd.loss(x + 0.1, other)
    trades_new = _plain_trainer(distillation=kd).outer_loss(labels, logits, x, distill_on=(x + 0.1, other))
    assert float(trades_new) == float(trades_old)
    # SSAT: the mean of Eq. 21 per example
    wrong = tf.constant(np.arange(1, 17) % 10, tf.int32)
    eq_21 = lambda t, z: ssat.regularised_loss(t, z, wrong, 0.2)  # noqa: E731
    ssat_old = tf.reduce_mean(ssat.regularised_loss(soft, logits, wrong, 0.2))
    ssat_new = _plain_trainer().outer_loss(labels, logits, x, targets=soft, per_example_ce=eq_21)
    assert float(ssat_new) == float(ssat_old)


def test_own_targets_refuse_label_smoothing_instead_of_dropping_it():
    trainer = _plain_trainer(smoothing=S("uniform", 0.1))
    soft = tf.nn.softmax(_logits(4))
    with pytest.raises(ValueError, match="ls_method=uniform"):
        trainer.outer_loss(tf.zeros([16], tf.int32), _logits(0), targets=soft)
    with pytest.raises(ValueError, match="inputs"):
        _plain_trainer(distillation=_linear_teachers()).outer_loss(tf.zeros([16], tf.int32), _logits(0))


# ---------------------------------------------------------------------------------------------------------
# features that were dropped before, or are new with the composition: applied, and equal to the hand formula

def _softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _log_softmax64(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _ce(soft, z):
    return -(np.asarray(soft, np.float64) * _log_softmax64(z)).sum(-1)


def _kd(teacher, z, temperature=2.0):
    """T^2 times the soft CE of the student's tempered softmax against the teacher's (paper 001)."""
    return temperature ** 2 * _ce(_softmax64(np.asarray(teacher, np.float64) / temperature),
                                  np.asarray(z, np.float64) / temperature)


def _squeeze(z, beta):
    z = np.asarray(z, np.float64)
    return beta * np.sqrt((z ** 2).sum()) / len(z)


def _kl(clean, adv):
    return (_softmax64(clean) * (_log_softmax64(clean) - _log_softmax64(adv))).sum(-1)


def _mlps(digits):
    keras.utils.set_random_seed(0)
    spec = digits.spec
    return [models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std) for _ in range(3)]


def _kd_terms(robust, standard, inputs, z):
    """0.5 * KD(robust) + 0.25 * KD(standard), both teachers in inference mode on `inputs`."""
    return (0.5 * _kd(robust(inputs, training=False), z).mean()
            + 0.25 * _kd(standard(inputs, training=False), z).mean())


def _batch(digits, index=0):
    x, y = digits.train
    return tf.constant(x[index * 64:(index + 1) * 64]), tf.constant(y[index * 64:(index + 1) * 64].astype("int32"))


def _step(trainer, x, y):
    return float(trainer.train_on_batch(x, y, return_dict=True)["loss"])


def _pgd_bat(digits, feature, with_feature):
    student, robust, standard = _mlps(digits)
    keywords = {"squeeze": dict(smoothing=S(squeeze_beta=0.5)),
                "teachers": dict(distillation=_teachers(robust, standard))}[feature] if with_feature else {}
    trainer = training.PGDTrainer(student, ATTACKS["pgd"], pgd.Options(labels="bat"), label_adversary=LA(), **keywords)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    x, y = _batch(digits)
    soft = training.LabelAdversary().targets(y, student(x, training=False), 10).numpy()  # Eq. 14/18, clean
    x_adv = trainer.adversarial_examples(x, y)  # keyed: the step's own PGD examples
    z = student(x_adv, training=True).numpy()
    expected = _ce(soft, z).mean()
    if with_feature and feature == "squeeze":
        expected += _squeeze(z, 0.5)
    if with_feature and feature == "teachers":
        expected = 0.25 * expected + _kd_terms(robust, standard, x_adv, z)
    return _step(trainer, x, y), expected


def _trades(digits, feature, with_feature):
    student, robust, standard = _mlps(digits)
    smoothing = {"ls": S("sbls", 0.2), "squeeze": S(squeeze_beta=0.5)}[feature] if with_feature else S()
    trainer = training.TRADESTrainer(student, ATTACKS["trades"], trades.Options(beta=6.0), smoothing=smoothing,
                                     distillation=_teachers(robust, standard))
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    x, y = _batch(digits)
    x_adv = trainer.adversarial_examples(x)
    clean, adv = student(x, training=True).numpy(), student(x_adv, training=True).numpy()
    one_hot = np.eye(10)[y.numpy()]
    soft = one_hot
    if with_feature and feature == "ls":  # SBLS on the *clean* logits: 0.2 on their highest wrong class
        soft = 0.8 * one_hot + 0.2 * np.eye(10)[np.where(one_hot > 0, -np.inf, clean).argmax(-1)]
    expected = 0.25 * _ce(soft, clean).mean() + _kd_terms(robust, standard, x_adv, adv)
    if with_feature and feature == "squeeze":
        expected += _squeeze(clean, 0.5)  # on the logits the CE is on: the clean ones
    expected += 6.0 * _kl(clean, adv).mean()
    return _step(trainer, x, y), expected


def _ssat(digits, feature, with_feature):
    student, robust, standard = _mlps(digits)
    keywords = {"squeeze": dict(smoothing=S(squeeze_beta=0.5)),
                "teachers": dict(distillation=_teachers(robust, standard))}[feature] if with_feature else {}
    options = ssat.Options(replays=1, gamma=0.5, lambda0=0.9, lambda1=0.2, target_beta=0.3)
    trainer = training.SSATTrainer(student, ATTACKS["ssat"], options, **keywords)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    x, y = _batch(digits)
    delta = trainer.initial_delta(x)  # keyed: the step's own start
    z = student(x + delta, training=True).numpy()
    one_hot = np.eye(10)[y.numpy()]
    lam = 0.9 + (0.2 - 0.9) * np.minimum(np.abs(delta.numpy()).reshape(64, -1).max(1) / 0.125, 1.0)
    soft = np.where((z.argmax(-1) != y.numpy())[:, None], one_hot, one_hot - lam[:, None] * (one_hot - 0.1))
    wrong = np.eye(10)[np.where(one_hot > 0, -np.inf, z).argmax(-1)]
    expected = (1.3 * _ce(soft, z) - 0.3 * _ce(wrong, z)).mean()  # Eq. 21
    if with_feature and feature == "squeeze":
        expected += _squeeze(z, 0.5)
    if with_feature and feature == "teachers":
        expected = 0.25 * expected + _kd_terms(robust, standard, x + delta, z)
    return _step(trainer, x, y), expected


def _bat(digits, feature, with_feature):
    student, robust, standard = _mlps(digits)
    keywords = dict(distillation=_teachers(robust, standard)) if with_feature else {}
    trainer = training.BATTrainer(student, ATTACKS["bat"], label_adversary=LA(), **keywords)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    x, y = _batch(digits)
    clean = student(x, training=False)
    soft = training.LabelAdversary().targets(y, clean, 10).numpy()
    x_adv = trainer.adversarial_examples(x, y, clean)
    z = student(x_adv, training=True).numpy()
    expected = _ce(soft, z).mean()
    if with_feature:
        expected = 0.25 * expected + _kd_terms(robust, standard, x_adv, z)
    return _step(trainer, x, y), expected


def _free(digits, feature, with_feature):
    student, robust, standard = _mlps(digits)
    keywords = dict(distillation=_teachers(robust, standard)) if with_feature else {}
    trainer = training.FreeTrainer(student, ATTACKS["free"], free.Options(replays=1), batch_size=64, **keywords)
    trainer.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), jit_compile=False)
    _step(trainer, *_batch(digits, 0))  # a first minibatch leaves a delta for the second
    x, y = _batch(digits, 1)
    x_adv = tf.clip_by_value(x + trainer.delta, 0.0, 1.0)
    assert float(tf.reduce_max(tf.abs(x_adv - x))) > 0.1
    z = student(x_adv, training=True).numpy()
    expected = _ce(np.eye(10)[y.numpy()], z).mean()
    if with_feature:
        expected = 0.25 * expected + _kd_terms(robust, standard, x_adv, z)
    return _step(trainer, x, y), expected


CASES = {
    "pgd_bat_labels+squeeze": (_pgd_bat, "squeeze"),
    "pgd_bat_labels+teachers": (_pgd_bat, "teachers"),
    "trades+teachers+ls_method": (_trades, "ls"),
    "trades+teachers+squeeze": (_trades, "squeeze"),
    "ssat+squeeze": (_ssat, "squeeze"),
    "ssat+teachers": (_ssat, "teachers"),
    "bat+teachers": (_bat, "teachers"),
    "free+teachers": (_free, "teachers"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_feature_is_applied_as_the_composed_formula(case, digits):
    run, feature = CASES[case]
    loss, expected = run(digits, feature, True)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    without, expected_without = run(digits, feature, False)
    np.testing.assert_allclose(without, expected_without, rtol=1e-5)
    assert abs(loss - without) > 1e-3 * abs(without), (loss, without)  # the feature changes the loss
