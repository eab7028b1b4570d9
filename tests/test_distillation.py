"""Self-teacher distillation (paper 001): the T^2-scaled soft cross-entropy, teachers, shape checks."""


import numpy as np
import pytest
import tensorflow as tf

from tfadv import assembly, runs, export, experiment, losses, models, training
from tfadv.config import ConfigError, TrainConfig


def test_kd_golden_value_and_kl_gradient():
    teacher = tf.constant([[2.0, 0.0, -1.0]])
    student = tf.Variable([[0.5, 1.0, 0.0]])
    t = 2.0
    p = tf.nn.softmax(teacher / t).numpy()[0]
    log_q = tf.nn.log_softmax(student / t).numpy()[0]
    with tf.GradientTape(persistent=True) as tape:
        kd = tf.reduce_sum(losses.distillation(teacher, student, t))
        kl = t ** 2 * tf.reduce_sum(p * (np.log(p) - tf.nn.log_softmax(student / t)))
    np.testing.assert_allclose(float(kd), t ** 2 * -(p * log_q).sum(), rtol=1e-6)
    np.testing.assert_allclose(tape.gradient(kd, student).numpy(), tape.gradient(kl, student).numpy(), rtol=1e-5)


def test_changing_a_teacher_changes_the_student_loss(digits):
    spec = digits.spec
    student = models.build("mlp", spec.image_shape, 10, spec.mean, spec.std)
    teacher_a = models.build("mlp", spec.image_shape, 10, spec.mean, spec.std)
    teacher_b = models.build("mlp", spec.image_shape, 10, spec.mean, spec.std)
    x, y = tf.constant(digits.test[0][:64]), tf.constant(digits.test[1][:64])

    def trainer(teacher):
        kd = training.Distillation({"robust": (lambda v: teacher(v, training=False), 0.5)}, ce_weight=0.25)
        return training.NaturalTrainer(student, training.AttackConfig(0.1, 0.1, 1), distillation=kd)

    logits = student(x, training=False)
    loss_a = float(trainer(teacher_a).outer_loss(y, logits, x))
    loss_b = float(trainer(teacher_b).outer_loss(y, logits, x))
    plain = float(training.NaturalTrainer(student, training.AttackConfig(0.1, 0.1, 1)).outer_loss(y, logits, x))
    assert abs(loss_a - loss_b) > 1e-3
    expected = 0.25 * plain + 0.5 * float(tf.reduce_mean(losses.distillation(teacher_a(x), logits, 2.0)))
    np.testing.assert_allclose(loss_a, expected, rtol=1e-5)


def test_a_teacher_of_the_wrong_shape_is_refused(tmp_path, digits):
    wrong = models.build("mlp", (28, 28, 1), 10)
    export.export(wrong, str(tmp_path / "teacher"))
    with pytest.raises(ConfigError) as info:
        runs.load_teacher(str(tmp_path / "teacher"), "kd_adv_teacher", digits.spec)
    assert info.value.flag == "kd_adv_teacher" and "(28, 28, 1)" in str(info.value)
    classes = models.build("mlp", (8, 8, 1), 5)
    export.export(classes, str(tmp_path / "five"))
    with pytest.raises(ConfigError, match="5 classes"):
        runs.load_teacher(str(tmp_path / "five"), "kd_std_teacher", digits.spec)
    config = TrainConfig.from_flags(output_dir=str(tmp_path / "run"), kd_adv_teacher=str(tmp_path / "teacher"))
    with pytest.raises(ConfigError):
        experiment.train(config, log=lambda *_: None)
    assert not (tmp_path / "run").exists()
    bad = config.replace(kd_adv_teacher=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="kd_adv_teacher"):
        assembly.check(bad.validate())  # the directory is checked on the training side, before anything is written


@pytest.mark.parametrize("teachers, weights, expected", [
    (("adv", "std"), [0.25, 0.5, 0.25], {"ce": 0.25, "robust": 0.5, "standard": 0.25}),
    (("adv", "std"), [0.3, 0.6, 0.1], {"ce": 0.3, "robust": 0.6, "standard": 0.1}),  # the official code's
    (("adv",), [0.25, 0.5, 0.25], {"ce": 0.5, "robust": 0.5, "standard": 0.0}),  # KD_adv only: lambda2 = 0
    (("std",), [0.25, 0.5, 0.25], {"ce": 0.75, "robust": 0.0, "standard": 0.25}),  # KD_std only: lambda1 = 0
])
def test_loss_weights_follow_paper_001_eq_1_with_one_or_two_teachers(tmp_path, teachers, weights, expected):
    """(1 - lambda1 - lambda2) L + lambda1 KD_adv + lambda2 KD_std: the weights always sum to 1, a teacher that is
    not given has lambda 0 (its weight goes to the method's own loss)."""
    paths = {"adv": str(tmp_path / "adv"), "std": str(tmp_path / "std")}
    for path in paths.values():
        (tmp_path / path).mkdir(exist_ok=True)
    config = TrainConfig.from_flags(kd_weights=weights, output_dir=str(tmp_path / "run"),
                                    **{f"kd_{t}_teacher": paths[t] for t in teachers})
    config.validate()
    got = config.distillation.loss_weights()
    assert got == pytest.approx(expected) and sum(got.values()) == pytest.approx(1.0)


def test_weights_that_do_not_sum_to_one_are_refused(tmp_path):
    (tmp_path / "adv").mkdir()
    config = TrainConfig.from_flags(kd_weights=[0.5, 0.5, 0.25], kd_adv_teacher=str(tmp_path / "adv"),
                                    output_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="kd_weights.*sum to 1"):
        config.validate()


def test_build_distillation_gives_the_remaining_teachers_weight_to_the_ce(tmp_path, digits):
    """Only the robust teacher: CE weight 0.5 (not 0.25, which left the total at 0.75)."""
    spec = digits.spec
    teacher = models.build("mlp", spec.image_shape, 10, spec.mean, spec.std)
    export.export(teacher, str(tmp_path / "teacher"))
    config = TrainConfig.from_flags(kd_adv_teacher=str(tmp_path / "teacher"), output_dir=str(tmp_path / "run"))
    distillation, records = experiment.build_distillation(config, log=lambda *_: None)
    assert distillation.ce_weight == pytest.approx(0.5)
    assert {name: weight for name, (_, weight) in distillation.teachers.items()} == {"robust": 0.5}
    assert records["robust"]["weight"] == 0.5
