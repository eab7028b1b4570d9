"""Self-teacher distillation (paper 001): the T^2-scaled soft cross-entropy, teachers, shape checks."""


import numpy as np
import pytest
import tensorflow as tf

from tfadv import runs, export, experiment, losses, models, training
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
        bad.validate()
