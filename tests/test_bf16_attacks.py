"""--attack_precision=bfloat16 (issue 24 item 3): the attacks' iterations run on a mixed_bfloat16 copy of the model,
and a point counts as broken only if the float32 model misclassifies the image the attack returned; the clean pass
and the report's numbers are the float32 model's; the report records the precision; what cannot be copied in
bfloat16 (a bare SavedModel, a logits_fn) is refused in one line."""

import json
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import evaluation, export, models
from tfadv.errors import EvaluationError
from tfadv.evaluation import config as config_lib, pipeline, runner, specs

from test_cli import error_lines, run_script

RADII = {"linf": 0.125, "l2": 1.0, "l1": 10.0}


def _rolled(logits_fn):
    """A copy that is fooled everywhere the model is right: its class k is the model's class k - 1."""
    return lambda images: tf.roll(tf.cast(logits_fn(images), tf.float32), 1, axis=-1)


@pytest.mark.parametrize("name", ["fgsm", "pgd20", "square"])
def test_only_the_float32_model_decides_what_is_broken(natural_mlp, digits, name):
    """The attack iterates on a copy that misclassifies nearly everything; the images it returns fool that copy
    but mostly not the float32 model, and those points count as robust: the verdict is the float32 model's."""
    x, y = digits.test[0][:120], digits.test[1][:120].astype(np.int32)
    float32_fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    copy = _rolled(float32_fn)
    spec = specs.parse_attack(name, RADII)
    report = runner.Evaluator(float32_fn, [spec], 64, attack_logits_fn=copy)(x, y, keep_adversarial=True)
    out = report["adversarial"][spec.name]
    assert out["valid"].all()
    images, indices = out["images"], out["indices"]
    float32_right = np.argmax(float32_fn(images), -1) == y[indices]
    copy_fooled = np.argmax(copy(images), -1) != y[indices]
    fooled_only_the_copy = copy_fooled & float32_right
    assert fooled_only_the_copy.sum() >= 0.5 * len(indices), name  # the case the rule is about is there
    robust = report["per_example_correct"]["attacks"][spec.name]
    np.testing.assert_array_equal(robust[indices], float32_right)  # robust exactly where float32 is right
    assert robust[indices][fooled_only_the_copy].all()
    # and the attack did iterate on the copy: on the model itself it breaks far more points
    plain = runner.Evaluator(float32_fn, [spec], 64)(x, y)
    assert plain["attacks"][spec.name]["robust_accuracy"] < report["attacks"][spec.name]["robust_accuracy"] - 0.2


class _Sabotaged:
    """What the monkeypatched `as_mixed_bfloat16` returns: a 'copy' whose classes are rolled by one."""

    def __init__(self, network):
        self.network = network

    def __call__(self, images, training=False):
        return _rolled(lambda batch: self.network(batch, training=training))(images)


def test_evaluate_model_attacks_the_copy_and_reports_the_float32_model(natural_mlp, digits, monkeypatch):
    x, y = digits.test[0][:100], digits.test[1][:100]
    kwargs = dict(budget=RADII, audit=False, log=None)
    reference = evaluation.evaluate_model(natural_mlp, x, y, ["square"], **kwargs)
    assert reference["attack_precision"] == "float32"
    monkeypatch.setattr(export, "as_mixed_bfloat16", _Sabotaged)
    report = evaluation.evaluate_model(natural_mlp, x, y, ["square"], attack_precision="bfloat16", **kwargs)
    assert report["attack_precision"] == "bfloat16"
    assert report["clean_accuracy"] == reference["clean_accuracy"]  # the clean pass is the float32 model's
    # Square on the sabotaged copy sees every point broken from its first query and returns near-clean images,
    # which the float32 model classifies: nearly all stay robust (against most broken by Square on the model)
    robust = report["attacks"]["square"]["robust_accuracy"]
    assert robust >= reference["clean_accuracy"] - 0.1
    assert reference["attacks"]["square"]["robust_accuracy"] < robust - 0.2


def test_the_bfloat16_copy(natural_mlp, digits):
    copy = export.as_mixed_bfloat16(natural_mlp)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        built = models.build("mlp", digits.spec.image_shape, digits.spec.num_classes, digits.spec.mean,
                             digits.spec.std)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    policies = lambda net: [(type(layer).__name__, layer.dtype_policy.name) for layer in net.layers[1:]]  # noqa
    assert policies(copy) == policies(built)  # what training under --mixed_precision=bfloat16 builds
    assert {name for _, name in policies(copy)} == {"float32", "mixed_bfloat16"}
    assert copy.get_layer("normalize").dtype_policy.name == copy.get_layer("logits").dtype_policy.name == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(copy.get_weights(), natural_mlp.get_weights()))
    x = digits.test[0][:200]
    low, high = copy(x, training=False), natural_mlp(x, training=False)
    assert low.dtype == tf.float32
    assert np.mean(np.argmax(low, -1) == np.argmax(high, -1)) >= 0.98
    assert 0 < np.max(np.abs(low - high))  # it does compute in bfloat16
    assert export.as_float32(copy).get_layer("fc1").dtype_policy.name == "float32"


def test_the_real_copy_with_and_without_xla(natural_mlp, digits):
    x, y = digits.test[0][:100], digits.test[1][:100]
    kwargs = dict(budget=RADII, audit=False, log=None)
    reference = evaluation.evaluate_model(natural_mlp, x, y, ["pgd20"], **kwargs)
    for jit in (False, True):
        report = evaluation.evaluate_model(natural_mlp, x, y, ["pgd20"], attack_precision="bfloat16",
                                           jit_compile=jit, **kwargs)
        assert report["attack_precision"] == "bfloat16" and report.get("jit_compile", False) is jit
        assert report["clean_accuracy"] == reference["clean_accuracy"]
        assert report["attacks"]["pgd20"]["robust_accuracy"] < report["clean_accuracy"] - 0.2  # it attacks


def _one_line(error):
    assert "\n" not in str(error)
    return str(error)


def test_refusals_are_one_line(natural_mlp, digits, tmp_path):
    x, y = digits.test[0][:20], digits.test[1][:20]
    kwargs = dict(budget=RADII, audit=False, log=None, attack_precision="bfloat16")
    with pytest.raises(EvaluationError) as error:
        evaluation.evaluate_model(lambda images: natural_mlp(images), x, y, ["fgsm"], **kwargs)
    assert "logits_fn is not a network" in _one_line(error.value)
    saved = export.export(natural_mlp, str(tmp_path / "bare"))
    with pytest.raises(EvaluationError) as error:
        evaluation.evaluate_model(saved, x, y, ["fgsm"], **kwargs)
    assert "outside a tfadv run directory" in _one_line(error.value) and "--attack_precision=float32" in str(
        error.value)
    with pytest.raises(EvaluationError) as error:
        evaluation.evaluate_model(natural_mlp, x, y, ["transfer_pgd20"], source_model=natural_mlp, **kwargs)
    assert "every attack is a transfer attack" in _one_line(error.value)
    for config, words in ((config_lib.EvalConfig(attack_precision="float16"), "attack_precision: unknown"),
                          (config_lib.EvalConfig(attack_precision="bfloat16", cossat_protocol="white_box"),
                           "Co-SSAT")):
        with pytest.raises(EvaluationError) as error:
            config.validate()
        assert words in _one_line(error.value)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bf16") / "run"
    result = run_script("train.py", "--defense=natural", "--flagfile=flags/digits.cfg", "--epochs=2",
                        "--val_every=1", "--eval_examples=50", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_evaluate_py_on_a_run_directory(digits_run, tmp_path):
    for model_dir in (digits_run, digits_run / "saved_model" / "1"):
        report_path = tmp_path / "report.json"
        result = run_script("evaluate.py", f"--model_dir={model_dir}", "--attacks=fgsm,pgd20", "--num_examples=60",
                            "--noaudit", "--noprogress", "--attack_precision=bfloat16", f"--output={report_path}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "attack iterations in bfloat16" in result.stdout
        report = json.loads(report_path.read_text())
        assert report["attack_precision"] == "bfloat16"
        float32 = run_script("evaluate.py", f"--model_dir={model_dir}", "--attacks=fgsm", "--num_examples=60",
                             "--noaudit", "--noprogress", f"--output={report_path}")
        assert float32.returncode == 0, float32.stderr[-3000:]
        assert json.loads(report_path.read_text())["clean_accuracy"] == report["clean_accuracy"]


def test_evaluate_py_refuses_what_it_cannot_copy(digits_run, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(digits_run / "saved_model" / "1", bare)
    changed = tmp_path / "changed"
    shutil.copytree(digits_run, changed)
    network, _ = __import__("tfadv.runs", fromlist=["runs"]).load_run_network(str(changed))
    network.set_weights([w + 0.5 for w in network.get_weights()])
    network.save_weights(str(changed / "checkpoints" / "final.weights.h5"))
    for model_dir, words in ((bare, "outside a tfadv run directory"), (changed, "does not give its SavedModel's")):
        result = run_script("evaluate.py", f"--model_dir={model_dir}", "--attacks=fgsm", "--num_examples=20",
                            "--noaudit", "--attack_precision=bfloat16", f"--output={tmp_path / 'r.json'}")
        assert result.returncode == 2, result.stderr[-2000:]
        lines = error_lines(result)
        assert len(lines) == 1 and "--attack_precision=bfloat16" in lines[0] and words in lines[0], result.stderr
        assert not (tmp_path / "r.json").exists()


def test_run_directory_of(digits_run, tmp_path):
    assert pipeline.run_directory_of(str(digits_run)) == str(digits_run)
    assert pipeline.run_directory_of(str(digits_run / "saved_model" / "1")) == str(digits_run)
    assert pipeline.run_directory_of(str(tmp_path)) is None
