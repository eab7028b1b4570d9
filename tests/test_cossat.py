"""Co-SSAT (paper 000): detector metrics, calibration, the composite decision and the one serving graph."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from test_cli import run_script
from tfadv import cossat, runs


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


# hand-made calibration scores, 2 positives (targeted) per negative (untargeted); low scores flag "targeted".
# Over the observed thresholds tau (flag score <= tau):
#   tau   TPR    TNR   accuracy  balanced accuracy
#   5     5/8    4/4   9/12      (5/8 + 1)/2   = 0.8125   <- balanced-accuracy optimum (TPR >= 0.6)
#   9     8/8    2/4   10/12     (1 + 1/2)/2   = 0.75     <- accuracy optimum
#   11    8/8    0/4   8/12      0.5                      <- "everything is targeted" already scores 0.667
POSITIVE = np.array([1, 2, 3, 4, 5, 7, 8, 9], np.float64)
NEGATIVE = np.array([6, 6.5, 10, 11], np.float64)


def test_threshold_is_chosen_by_balanced_accuracy_at_the_required_recall():
    threshold, table, area = cossat.choose_threshold(POSITIVE, NEGATIVE, min_recall=0.6)
    assert threshold.direction == "le" and area > 0.5
    assert threshold.value == 5.0
    chosen = cossat.confusion(POSITIVE, NEGATIVE, threshold)
    assert chosen["tpr"] == 5 / 8 and chosen["fpr"] == 0.0
    assert chosen["accuracy"] == pytest.approx(9 / 12) and chosen["balanced_accuracy"] == pytest.approx(0.8125)
    # the candidates are the observed scores, each row with both accuracies
    assert sorted(row["threshold"] for row in table) == sorted(np.r_[POSITIVE, NEGATIVE].tolist())
    row9 = next(row for row in table if row["threshold"] == 9.0)
    assert row9["accuracy"] == pytest.approx(10 / 12) and row9["balanced_accuracy"] == pytest.approx(0.75)
    # a higher required recall leaves only tau >= 7 (TPR 0.75, 0.875, 1): 9 is then the balanced optimum
    assert cossat.choose_threshold(POSITIVE, NEGATIVE, min_recall=0.7)[0].value == 9.0
    # the old reading (plain accuracy on the 2:1 set) is still selectable and picks the permissive tau
    assert cossat.choose_threshold(POSITIVE, NEGATIVE, min_recall=0.6, criterion="accuracy")[0].value == 9.0
    # the mirrored scores: direction "ge", the same cut
    flipped, _, _ = cossat.choose_threshold(-POSITIVE, -NEGATIVE, min_recall=0.6)
    assert flipped.direction == "ge" and flipped.value == -5.0


def _logits_with_dlr(values):
    """Rows [d, 0, -1] whose DLR (d - 0) / (d + 1) is each of `values` (in [0, 1))."""
    d = np.asarray(values, np.float64) / (1 - np.asarray(values, np.float64))
    return tf.constant(np.stack([d, np.zeros_like(d), -np.ones_like(d)], -1), tf.float32)


def test_calibrate_balances_the_two_to_one_calibration_set():
    positive, negative = _logits_with_dlr(POSITIVE / 12), _logits_with_dlr(NEGATIVE / 12)
    detector, report = cossat.calibrate(positive, negative, "dlr", min_recall=0.6)
    assert report["balance"] == "balanced_accuracy"
    assert (report["num_positive"], report["num_negative"]) == (8, 4)
    assert detector.thresholds["dlr"].value == pytest.approx(5 / 12, rel=1e-5)
    chosen = report["metrics"]["dlr"]["chosen"]
    assert chosen["balanced_accuracy"] == pytest.approx(0.8125) and chosen["accuracy"] == pytest.approx(0.75)
    old, old_report = cossat.calibrate(positive, negative, "dlr", min_recall=0.6, balance="none")
    assert old.thresholds["dlr"].value == pytest.approx(9 / 12, rel=1e-5) and old_report["balance"] == "none"
    with pytest.raises(ValueError, match="balance"):
        cossat.calibrate(positive, negative, "dlr", balance="weighted")


def test_subsample_balance_keeps_every_negative_and_as_many_positives():
    keep_positive, keep_negative = cossat.balance_classes(8, 4, seed=3)
    assert len(keep_positive) == 4 and len(np.unique(keep_positive)) == 4 and set(keep_positive) <= set(range(8))
    np.testing.assert_array_equal(keep_negative, np.arange(4))
    np.testing.assert_array_equal(cossat.balance_classes(8, 4, seed=3)[0], keep_positive)  # deterministic
    keep_positive, keep_negative = cossat.balance_classes(3, 5, seed=0)  # the larger class is subsampled
    assert len(keep_negative) == 3 and len(keep_positive) == 3

    positive, negative = _logits_with_dlr(POSITIVE / 12), _logits_with_dlr(NEGATIVE / 12)
    detector, report = cossat.calibrate(positive, negative, "dlr", min_recall=0.6, balance="subsample", seed=3)
    assert (report["num_positive"], report["num_negative"]) == (4, 4)
    kept = np.sort(POSITIVE[cossat.balance_classes(8, 4, seed=3)[0]] / 12)
    # on the balanced set accuracy and balanced accuracy coincide; the threshold is the accuracy optimum there
    expected, _, _ = cossat.choose_threshold(kept, NEGATIVE / 12, 0.6, criterion="accuracy")
    assert detector.thresholds["dlr"].value == pytest.approx(expected.value, rel=1e-5)
    chosen = report["metrics"]["dlr"]["chosen"]
    assert chosen["accuracy"] == pytest.approx(chosen["balanced_accuracy"])


def test_vote_flags_targeted_when_exactly_three_of_five_metrics_agree():
    # row a: [3, 2.5, 0] -> dlr 0.5/3, top1 3, top2 2.5, cw_abs 0.5; row b: [3, 1, 0] -> dlr 2/3, top1 3, top2 1,
    # cw_abs 2. Thresholds: dlr <= 0.8 (a, b), top1 >= 2.9 (a, b), top2 >= 2 (a only), cw_abs <= 0.1 and
    # kl_uniform >= 100 (neither): a has 3 votes, b has 2.
    logits = tf.constant([[3.0, 2.5, 0.0], [3.0, 1.0, 0.0]])
    thresholds = {"dlr": cossat.Threshold(0.8, "le"), "top1": cossat.Threshold(2.9, "ge"),
                  "top2": cossat.Threshold(2.0, "ge"), "cw_abs": cossat.Threshold(0.1, "le"),
                  "kl_uniform": cossat.Threshold(100.0, "ge")}
    use_base, dlr, votes = cossat.Detector("vote", thresholds).decide(logits)
    np.testing.assert_array_equal(votes.numpy(), [3, 2])
    np.testing.assert_array_equal(use_base.numpy(), [True, False])
    np.testing.assert_allclose(dlr.numpy(), [0.5 / 3, 2 / 3], rtol=1e-6)
    # the same thresholds in single-metric mode: only the DLR decides (both flagged)
    single = cossat.Detector("dlr", thresholds).decide(logits)[0]
    np.testing.assert_array_equal(single.numpy(), [True, True])


def test_vote_calibration_reports_both_accuracies_of_the_vote():
    positive, negative = _logits_with_dlr(POSITIVE / 12), _logits_with_dlr(NEGATIVE / 12)
    detector, report = cossat.calibrate(positive, negative, "vote", min_recall=0.6)
    assert set(detector.thresholds) == set(cossat.METRICS)
    # each metric's threshold is its own balanced-accuracy optimum at the required recall
    metrics_pos = {k: v.numpy() for k, v in cossat.detector_metrics(positive).items()}
    metrics_neg = {k: v.numpy() for k, v in cossat.detector_metrics(negative).items()}
    for metric in cossat.METRICS:
        expected, _, _ = cossat.choose_threshold(metrics_pos[metric], metrics_neg[metric], 0.6)
        assert detector.thresholds[metric] == expected
    votes_pos = detector.decide(positive)[0].numpy()
    votes_neg = detector.decide(negative)[0].numpy()
    tpr, tnr = votes_pos.mean(), 1 - votes_neg.mean()
    assert report["vote"]["tpr"] == pytest.approx(tpr) and report["vote"]["fpr"] == pytest.approx(1 - tnr)
    assert report["vote"]["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2)
    assert report["vote"]["accuracy"] == pytest.approx((votes_pos.sum() + (1 - votes_neg).sum()) / 12)


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
    z = np.sort(ssat(x).numpy(), -1)[:, ::-1]
    m1, m2 = float(np.median(z[:, 0])), float(np.median(z[:, 1]))
    vote = cossat.Detector("vote", {"dlr": cossat.Threshold(0.5, "le"), "top1": cossat.Threshold(m1, "ge"),
                                    "top2": cossat.Threshold(m2, "ge"), "kl_uniform": cossat.Threshold(0.0, "ge"),
                                    "cw_abs": cossat.Threshold(-1.0, "le")})
    out = cossat.CoSSAT(ssat, base, vote).outputs(x)
    votes = out["votes"].numpy()
    # by hand: kl_uniform >= 0 always votes, cw_abs <= -1 never; dlr, top1 and top2 vote by their thresholds
    dlr_by_hand = (z[:, 0] - z[:, 1]) / (z[:, 0] - z[:, 2] + 1e-12)
    expected = 1 + (dlr_by_hand <= 0.5).astype(int) + (z[:, 0] >= m1).astype(int) + (z[:, 1] >= m2).astype(int)
    np.testing.assert_array_equal(votes, expected)
    assert 0 < (expected >= 3).mean() < 1  # both branches are exercised
    np.testing.assert_array_equal(out["use_base"].numpy(), expected >= 3)
    expected_logits = np.where((expected >= 3)[:, None], base(x).numpy(), ssat(x).numpy())
    np.testing.assert_allclose(out["logits"].numpy(), expected_logits, rtol=1e-6)


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
    common = ["--flagfile=flags/digits.cfg", "--eval_examples=100"]
    ssat = run_script("train.py", *common, "--defense=ssat", "--ssat_replays=4", "--epochs=6", "--lr_schedule=cyclic",
                      "--lr=0.1", f"--output_dir={base / 'ssat'}")
    assert ssat.returncode == 0, ssat.stderr[-3000:]
    pgd = run_script("train.py", *common, "--defense=pgd", "--epochs=6", f"--output_dir={base / 'pgd'}")
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

    # calibration: 2 targeted (CW-PGD, APGD-T) per untargeted (PGD-CE) example, tau by balanced accuracy
    report = json.loads((out / "calibration.json").read_text())
    assert (report["num_positive"], report["num_negative"]) == (600, 300)
    assert report["balance"] == metrics["calibration"]["balance"] == "balanced_accuracy"
    detector = cossat.Detector.from_json(json.loads((out / "detector.json").read_text()))
    chosen = report["metrics"]["dlr"]["chosen"]
    assert detector.thresholds["dlr"].value == chosen["threshold"]
    assert detector.thresholds["dlr"].direction == chosen["direction"]
    assert chosen["tpr"] >= 0.9  # --min_recall's default
    eligible = [row for row in report["metrics"]["dlr"]["candidates"] if row["tpr"] >= 0.9]
    assert chosen["balanced_accuracy"] == max(row["balanced_accuracy"] for row in eligible)
    assert chosen["balanced_accuracy"] == pytest.approx((chosen["tpr"] + 1 - chosen["fpr"]) / 2)
    assert metrics["detector_calibration"]["dlr"]["balanced_accuracy"] == chosen["balanced_accuracy"]
    assert "balanced accuracy" in (out / "calibration.md").read_text()
    # routing on clean test images is exactly DLR(SSAT logits) <= tau
    from tfadv import data
    ssat = runs.load_run(str(base / "ssat")).network()
    x_test, _ = data.load("digits").test
    dlr = cossat.detector_metrics(ssat(x_test, training=False))["dlr"].numpy()
    assert routing["routed_to_base"] == pytest.approx(np.mean(dlr <= chosen["threshold"]), abs=1e-9)


def test_build_cossat_refuses_an_unknown_calibration_balance(tmp_path):
    result = run_script("build_cossat.py", f"--ssat={tmp_path}", f"--base={tmp_path}", f"--output_dir={tmp_path}",
                        "--calibration_balance=weighted")
    assert result.returncode == 2 and "--calibration_balance" in result.stderr and "subsample" in result.stderr


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

    ssat = runs.load_run(str(base / "ssat")).network()
    pgd = runs.load_run(str(base / "pgd")).network()
    detector = cossat.Detector.from_json(json.loads((base / "cossat" / "detector.json").read_text()))
    local = cossat.CoSSAT(ssat, pgd, detector).outputs(x)
    np.testing.assert_allclose(served["logits"], local["logits"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(served["keras_logits"], local["logits"].numpy(), rtol=1e-4, atol=1e-4)
    assert served["use_base"] == local["use_base"].numpy().tolist()


def test_white_box_protocol_is_the_worst_case_over_composite_and_branches(cossat_build, digits):
    from tfadv import evaluation
    from tfadv.evaluation import cossat_protocols

    base, _ = cossat_build
    ssat = runs.load_run(str(base / "ssat")).network()
    pgd = runs.load_run(str(base / "pgd")).network()
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
    ssat = runs.load_run(str(base / "ssat")).network()
    pgd = runs.load_run(str(base / "pgd")).network()
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
