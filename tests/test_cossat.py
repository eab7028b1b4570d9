"""Co-SSAT (paper 000): detector metrics, calibration, the composite decision and the one serving graph."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT
from test_cli import run_script
from tfadv import cossat


def test_detector_metrics_on_hand_written_logits():
    logits = tf.constant([[4.0, 3.0, 0.0, -1.0], [1.0, 1.0, 1.0, 1.0]])
    m = {k: v.numpy() for k, v in cossat.detector_metrics(logits).items()}
    np.testing.assert_allclose(m["dlr"][0], (4 - 3) / (4 - 0), rtol=1e-6)
    np.testing.assert_allclose(m["top1"], [4.0, 1.0])
    np.testing.assert_allclose(m["top2"], [3.0, 1.0])
    np.testing.assert_allclose(m["cw_abs"], [1.0, 0.0])
    p = tf.nn.softmax(logits[0]).numpy()
    np.testing.assert_allclose(m["kl_uniform"][0], np.sum(p * np.log(p * 4)), rtol=1e-5)
    np.testing.assert_allclose(m["kl_uniform"][1], 0.0, atol=1e-6)


def test_calibration_recovers_a_known_threshold():
    rng = np.random.default_rng(0)
    positive = rng.uniform(0.0, 0.3, 2000)   # targeted: small DLR
    negative = rng.uniform(0.25, 1.0, 2000)  # untargeted: large DLR
    threshold, table, area = cossat.choose_threshold(positive, negative, min_recall=0.95)
    assert threshold.direction == "le" and area > 0.95
    assert 0.28 <= threshold.value <= 0.31  # high recall: the positives' upper edge
    chosen = cossat.confusion(positive, negative, threshold)
    assert chosen["tpr"] >= 0.95 and chosen["fpr"] < 0.1
    flipped, _, _ = cossat.choose_threshold(-positive, -negative, min_recall=0.95)
    assert flipped.direction == "ge" and -0.31 <= flipped.value <= -0.28


def _linear(weights):
    import keras
    inputs = keras.Input((2, 2, 1))
    outputs = keras.layers.Dense(4, use_bias=False)(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    model.layers[-1].kernel.assign(weights)
    return model


def test_cossat_output_is_d_times_base_plus_one_minus_d_times_ssat():
    rng = np.random.default_rng(1)
    ssat = _linear(rng.normal(size=(4, 4)).astype(np.float32))
    base = _linear(rng.normal(size=(4, 4)).astype(np.float32))
    model = cossat.CoSSAT(ssat, base, cossat.Detector("dlr", {"dlr": cossat.Threshold(0.5)}))
    x = rng.random((64, 2, 2, 1)).astype(np.float32)
    out = model.outputs(x)
    d = out["use_base"].numpy().astype(np.float32)[:, None]
    assert 0 < d.mean() < 1  # both branches are exercised
    expected = d * base(x).numpy() + (1 - d) * ssat(x).numpy()
    np.testing.assert_allclose(out["logits"].numpy(), expected, rtol=1e-6)
    dlr = cossat.detector_metrics(ssat(x))["dlr"].numpy()
    np.testing.assert_array_equal(out["use_base"].numpy(), dlr <= 0.5)
    vote = cossat.Detector("vote", {m: cossat.Threshold(0.0, "ge") for m in cossat.METRICS})
    votes = cossat.CoSSAT(ssat, base, vote).outputs(x)["votes"].numpy()
    assert votes.min() >= 0 and votes.max() <= 5


LOAD_WITHOUT_TFADV = r"""
import json, sys
import numpy as np
import tensorflow as tf
import keras
path, x_path = sys.argv[1], sys.argv[2]
x = np.load(x_path)["x"]
serve = tf.saved_model.load(path).signatures["serving_default"]
out = serve(images=tf.constant(x))
spec = serve.structured_outputs
layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
inputs = keras.Input(x.shape[1:])
wrapped = keras.Model(inputs, layer(inputs))
through_keras = wrapped(x)
assert not any(name.startswith("tfadv") for name in sys.modules)
print(json.dumps({
    "names": sorted(spec), "dtypes": {k: v.dtype.name for k, v in spec.items()},
    "batch": {k: v.shape.as_list()[0] for k, v in spec.items()},
    "logits": out["logits"].numpy().tolist(), "use_base": out["use_base"].numpy().tolist(),
    "keras_logits": np.asarray(through_keras["logits"]).tolist(),
}))
"""


@pytest.fixture(scope="module")
def cossat_build(tmp_path_factory):
    base = tmp_path_factory.mktemp("cossat")
    common = ["--flagfile=flags/digits.cfg", "--val_examples=100", "--eval_examples=100"]
    ssat = run_script("train.py", "--defense=ssat", "--ssat_replays=4", "--epochs=6", "--lr_schedule=cyclic",
                      "--lr=0.1", f"--output_dir={base / 'ssat'}", *common)
    assert ssat.returncode == 0, ssat.stderr[-3000:]
    pgd = run_script("train.py", "--defense=pgd", "--epochs=6", f"--output_dir={base / 'pgd'}", *common)
    assert pgd.returncode == 0, pgd.stderr[-3000:]
    built = run_script("build_cossat.py", f"--ssat={base / 'ssat'}", f"--base={base / 'pgd'}",
                       "--flagfile=flags/digits.cfg", "--calibration_examples=300", "--calibration_steps=10",
                       f"--output_dir={base / 'cossat'}")
    assert built.returncode == 0, built.stderr[-3000:]
    return base, built.stdout


def test_build_cossat_writes_calibration_and_one_serving_graph(cossat_build):
    base, stdout = cossat_build
    out = base / "cossat"
    for name in ("saved_model/1/saved_model.pb", "calibration.json", "calibration.md", "detector.json",
                 "plots/detector_roc.png", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    routing = metrics["clean_routing"]
    assert 0.0 <= routing["routed_to_base"] <= 1.0 and routing["num_examples"] == 450
    assert set(metrics["detector_auc"]) == set(cossat.METRICS)
    assert "routed to the base model" in stdout


def test_served_graph_equals_the_in_process_model_without_tfadv(cossat_build, digits, tmp_path):
    base, _ = cossat_build
    path = base / "cossat" / "saved_model" / "1"
    x = digits.test[0][:32]
    np.savez(tmp_path / "x.npz", x=x)
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_TFADV)
    result = subprocess.run([sys.executable, str(script), str(path), str(tmp_path / "x.npz")], cwd=str(tmp_path),
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=""), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])
    assert served["names"] == sorted(["logits", "probabilities", "classes", "use_base", "dlr", "votes",
                                      "ssat_logits", "base_logits"])
    assert served["dtypes"]["classes"] == "int32" and served["dtypes"]["use_base"] == "bool"
    assert all(b is None for b in served["batch"].values())

    ssat, _ = cossat.load_run_network(str(base / "ssat"))
    pgd, _ = cossat.load_run_network(str(base / "pgd"))
    detector = cossat.Detector.from_json(json.loads((base / "cossat" / "detector.json").read_text()))
    local = cossat.CoSSAT(ssat, pgd, detector).outputs(x)
    np.testing.assert_allclose(served["logits"], local["logits"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(served["keras_logits"], local["logits"].numpy(), rtol=1e-4, atol=1e-4)
    assert served["use_base"] == local["use_base"].numpy().tolist()


def test_white_box_protocol_is_the_worst_case_over_composite_and_branches(cossat_build, digits):
    from tfadv import evaluation
    from tfadv.evaluation import cossat_protocols

    base, _ = cossat_build
    ssat, _ = cossat.load_run_network(str(base / "ssat"))
    pgd, _ = cossat.load_run_network(str(base / "pgd"))
    detector = cossat.Detector.from_json(json.loads((base / "cossat" / "detector.json").read_text()))
    model = cossat.CoSSAT(ssat, pgd, detector)
    x, y = digits.test[0][:150], digits.test[1][:150]
    specs = [evaluation.parse_attack("pgd10", {"linf": 0.125})]
    white = cossat_protocols.evaluate(model.outputs, x, y, specs, "white_box")
    half = cossat_protocols.evaluate(model.outputs, x, y, specs, "half_white_box")
    entry = white["attacks"]["pgd10"]
    assert entry["robust_accuracy"] <= min(entry["per_source"].values()) + 1e-9
    assert set(entry["per_source"]) == {"logits", "ssat_logits", "base_logits"}
    assert half["clean_accuracy"] == white["clean_accuracy"]
    # the detector-aware attack is at least as strong as attacking SSAT alone (up to PGD's randomness)
    assert white["worst_case_accuracy"] <= half["worst_case_accuracy"] + 0.03


def test_evaluate_script_runs_the_cossat_protocols(cossat_build, tmp_path):
    base, _ = cossat_build
    output = tmp_path / "eval.json"
    result = run_script("evaluate.py", f"--model_dir={base / 'cossat'}", "--attacks=pgd10", "--num_examples=100",
                        "--cossat_protocol=both", "--noaudit", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert set(report["cossat"]) == {"white_box", "half_white_box"}
    assert report["cossat"]["white_box"]["sources"] == ["logits", "ssat_logits", "base_logits"]
    plain = run_script("evaluate.py", f"--model_dir={base / 'pgd'}", "--attacks=pgd10", "--num_examples=20",
                       "--cossat_protocol=white_box", "--noaudit")
    assert plain.returncode == 2 and "Co-SSAT SavedModel" in plain.stderr


def test_aa_dispatch_classifies_each_branchs_adversarials_with_cossat(cossat_build, digits):
    """App. H.2: attack each branch separately (a cascade per branch), let Co-SSAT classify both results."""
    import dataclasses

    from tfadv import evaluation
    from tfadv.attacks import rng
    from tfadv.evaluation import cossat_protocols

    base, _ = cossat_build
    ssat, _ = cossat.load_run_network(str(base / "ssat"))
    pgd, _ = cossat.load_run_network(str(base / "pgd"))
    detector = cossat.Detector.from_json(json.loads((base / "cossat" / "detector.json").read_text()))
    model = cossat.CoSSAT(ssat, pgd, detector)
    x, y = digits.test[0][:120], digits.test[1][:120].astype(np.int32)
    specs = [dataclasses.replace(evaluation.parse_attack(n, {"linf": 0.125}), group="aa") for n in ("fgsm", "pgd10")]
    report = cossat_protocols.evaluate(model.outputs, x, y, specs, "aa_dispatch", batch_size=50)
    assert report["sources"] == ["ssat_logits", "base_logits"]
    steps = [report["attacks"][n]["robust_accuracy"] for n in ("fgsm", "pgd10")]
    assert steps[1] <= steps[0] and report["groups"]["aa"]["robust_accuracy"] == steps[1]

    # the same by hand for the one-attack cascade [fgsm, pgd10] on each branch
    indices = tf.range(len(y), dtype=tf.int64)
    clean_ok = model.outputs(x)["classes"].numpy() == y
    robust = clean_ok.copy()
    for source in ("ssat_logits", "base_logits"):
        fn = lambda images, s=source: model.outputs(images)[s]  # noqa: E731
        images = x.copy()
        alive = np.argmax(fn(x).numpy(), -1) == y
        for spec in specs:
            keys = rng.example_keys(indices, 0, cossat_protocols._salt(spec.name, source))
            x_adv = spec.run(fn, x, y, keys).numpy()
            fooled = (np.argmax(fn(x_adv).numpy(), -1) != y) & alive & clean_ok
            images[fooled] = x_adv[fooled]
            alive &= ~fooled
        robust &= model.outputs(images)["classes"].numpy() == y
    assert report["worst_case_accuracy"] == pytest.approx(robust.mean())
