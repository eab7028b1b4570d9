"""The README's main job on digits, the SavedModel outside tfadv, resume after kill -9, mirrored training."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT
import script_server
from test_cli import run_script


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for defense in ("natural", "pgd"):
        result = run_script("train.py", f"--defense={defense}", "--flagfile=flags/digits.cfg",
                            f"--output_dir={base / defense}")
        assert result.returncode == 0, result.stderr[-3000:]
        with open(base / defense / "metrics.json") as handle:
            out[defense] = (base / defense, json.load(handle), result.stdout)
    return out


def test_pgd_beats_natural_under_pgd20_by_20_points(runs):
    natural, pgd = runs["natural"][1], runs["pgd"][1]
    for metrics in (natural, pgd):
        assert metrics["final"]["robust_attack"] == "pgd20"
        assert metrics["final"]["num_examples"] == 450
        assert 0.0 <= metrics["final"]["robust_accuracy"] <= metrics["final"]["clean_accuracy"] <= 1.0
    assert natural["final"]["clean_accuracy"] > 0.95 and pgd["final"]["clean_accuracy"] > 0.9
    assert pgd["final"]["robust_accuracy"] >= natural["final"]["robust_accuracy"] + 0.20
    assert "best" in pgd and pgd["train_seconds"] > 0 and pgd["images_per_second"] > 0


def test_run_directory_layout(runs):
    run, metrics, stdout = runs["pgd"]
    for name in ("flags.txt", "metrics.json", "history.csv", "checkpoints/best.weights.h5",
                 "checkpoints/final.weights.h5", "saved_model/1/saved_model.pb", "plots/learning_rate.png",
                 "plots/accuracy.png", "tensorboard"):
        assert (run / name).exists(), name
    with open(run / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30 and "val_robust_accuracy" in rows[0]
    assert "final: clean accuracy" in stdout and "robust accuracy" in stdout
    flags_text = (run / "flags.txt").read_text()
    assert "--defense=pgd" in flags_text and "--eps=2.0" in flags_text


LOAD_WITHOUT_TFADV = r"""
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
serve = loaded.signatures["serving_default"]
x = np.load(sys.argv[2])["x"]
out = serve(images=tf.constant(x))
assert not any(name.startswith("tfadv") for name in sys.modules), "tfadv was imported"
try:
    serve(images=tf.constant(x[:, :, :, 0]))
    bad = "accepted"
except Exception as error:
    bad = type(error).__name__ + ": " + str(error)
print(json.dumps({"classes": out["classes"].numpy().tolist(), "logits": out["logits"].numpy().tolist(),
                  "probabilities_sum": out["probabilities"].numpy().sum(-1).tolist(), "bad": bad}))
"""


def test_saved_model_loads_without_tfadv_and_predicts_the_same(runs, digits, tmp_path):
    run = runs["pgd"][0]
    x = digits.test[0][:16]
    np.savez(tmp_path / "x.npz", x=x)
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_TFADV)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH="")
    result = subprocess.run([sys.executable, str(script), str(run / "saved_model" / "1"), str(tmp_path / "x.npz")],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = json.loads(result.stdout.strip().splitlines()[-1])

    from tfadv import models
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    network.load_weights(str(run / "checkpoints" / "final.weights.h5"))
    logits = network(x, training=False).numpy()
    np.testing.assert_allclose(served["logits"], logits, rtol=1e-4, atol=1e-4)
    # the same class wherever that tolerance decides it (two logits closer than twice it may swap in another
    # process's kernels); the served classes are the served logits' argmax everywhere
    top = np.sort(logits, -1)[:, -2:]
    decided = top[:, 1] - top[:, 0] > 2 * (1e-4 + 1e-4 * np.abs(top).max(-1))
    assert np.array_equal(np.array(served["classes"])[decided], np.argmax(logits, -1)[decided])
    assert served["classes"] == np.argmax(served["logits"], -1).tolist()
    np.testing.assert_allclose(served["probabilities_sum"], 1.0, rtol=1e-5)
    assert "expects images of shape [batch, 8, 8, 1]" in served["bad"], served["bad"]


def test_saved_model_cli_runs_it(runs, digits, tmp_path):
    cli = shutil.which("saved_model_cli")
    if cli is None:
        pytest.skip("saved_model_cli is not on PATH")
    np.save(tmp_path / "x.npy", digits.test[0][:3])
    result = subprocess.run([cli, "run", "--dir", str(runs["pgd"][0] / "saved_model" / "1"), "--tag_set", "serve",
                             "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'x.npy'}"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "classes" in result.stdout and "logits" in result.stdout


def test_evaluate_script_reports_the_schema(runs, tmp_path):
    output = tmp_path / "eval.json"
    result = run_script("evaluate.py", f"--model_dir={runs['pgd'][0]}", "--attacks=fgsm,pgd20,cw20,pgd10_l2",
                        "--num_examples=200", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["num_examples"] == 200 and abs(report["eps"] - 0.125) < 1e-9
    assert set(report["attacks"]) == {"fgsm", "pgd20", "cw20", "pgd10_l2"}
    worst = min(a["robust_accuracy"] for a in report["attacks"].values())
    assert report["worst_case_accuracy"] <= worst <= report["clean_accuracy"]
    assert "worst case" in result.stdout
    bad = run_script("evaluate.py", f"--model_dir={runs['pgd'][0]}", "--attacks=pgd")
    assert bad.returncode == 2 and "--attacks" in bad.stderr


def _completed_checkpoint(directory) -> int:
    """The epoch of the newest *completed* resumable checkpoint: the one TF's `checkpoint` state file names
    (written atomically after the checkpoint's data and index files), not merely an index file on disk."""
    state = directory / "checkpoint"
    try:
        text = state.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("model_checkpoint_path:"):
            return int(line.split('"')[1].split("-")[1])
    return 0


def _history(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


def test_resume_after_kill_9_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """kill -9 after a completed checkpoint, rerun: same final weights (bit for bit), same metrics, no epoch
    twice in history.csv. Every random stream (data order, augmentation, the training attack's random starts)
    is keyed on the seed and the step, so it does not matter where the process died."""
    from tfadv import models

    common = ["--defense=pgd", "--flagfile=flags/digits.cfg", "--epochs=8", "--model=lenet", "--val_every=2"]
    whole = tmp_path / "whole"
    result = run_script("train.py", *common, f"--output_dir={whole}")
    assert result.returncode == 0, result.stderr[-3000:]

    out = tmp_path / "run"
    args = [*common, f"--output_dir={out}"]
    process = script_server.start_script("train.py", *args)
    resume_dir = out / "checkpoints" / "resume"
    deadline = time.time() + 300
    while _completed_checkpoint(resume_dir) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.kill()  # SIGKILL
    killed_after = _completed_checkpoint(resume_dir)
    assert 2 <= killed_after < 8 and not (out / "metrics.json").exists()
    result = run_script("train.py", *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed_at = [line for line in result.stdout.splitlines() if line.startswith("resuming")]
    assert resumed_at, result.stdout[-2000:]
    epoch = int(resumed_at[0].split("after epoch ")[1])
    assert killed_after <= epoch < 8
    assert f"epoch {epoch + 1}/8" in result.stdout and "epoch 1/8" not in result.stdout

    rows, whole_rows = _history(out / "history.csv"), _history(whole / "history.csv")
    assert [int(row["epoch"]) for row in rows] == list(range(8))  # each epoch once, in order
    timing = {"epoch_seconds", "images_per_second"}
    for row, reference in zip(rows, whole_rows):
        assert {k: v for k, v in row.items() if k not in timing} == \
            {k: v for k, v in reference.items() if k not in timing}
    spec_network = []
    for run in (whole, out):
        network = models.build("lenet", (8, 8, 1), 10)
        network.load_weights(str(run / "checkpoints" / "final.weights.h5"))
        spec_network.append([w.numpy() for w in network.weights])
    for a, b in zip(*spec_network):
        np.testing.assert_array_equal(a, b)
    metrics, whole_metrics = (json.loads((run / "metrics.json").read_text()) for run in (out, whole))
    for key in ("final", "best", "best_clean"):
        assert metrics[key] == whole_metrics[key], key


def test_final_pgd20_in_metrics_equals_evaluate_pgd20(runs, tmp_path):
    """One name, one attack: the final figure of a run and `evaluate.py --attacks=pgd20` on the same model and
    the same 450 test images are the same number."""
    run, metrics, _ = runs["pgd"]
    output = tmp_path / "eval.json"
    result = run_script("evaluate.py", f"--model_dir={run}", "--attacks=pgd20", "--num_examples=-1",
                        f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["num_examples"] == metrics["final"]["num_examples"] == 450
    assert metrics["final"]["robust_attack"] == "pgd20"
    assert report["attacks"]["pgd20"]["robust_accuracy"] == metrics["final"]["robust_accuracy"]
    assert report["clean_accuracy"] == metrics["final"]["clean_accuracy"]


@pytest.mark.parametrize("defense, extra", [("free", ())])
def test_mirrored_training_over_two_logical_cpu_devices_matches_one_device(tmp_path, defense, extra):
    """Two replicas at the same global batch and seed train the same weights as one device (MLP: no BatchNorm,
    so the per-replica batch statistics do not enter; the training attacks' random starts are keyed on the
    example's global position). A loss reduced per replica instead of over the global batch fails this.
    Through scripts/train.py for Free-AT (its perturbation buffer is the most replica-specific state); every
    defense, in-process on 2 devices and on 2 workers, is compared step by step in tests/test_parity.py."""
    from tfadv import models

    weights = []
    for devices in (2, 1):
        out = tmp_path / f"{defense}-{devices}"
        mirrored = ["--distribute=mirrored", f"--num_cpu_devices={devices}"] if devices > 1 else []
        # float32: the claim is parity up to float32 round-off (--mixed_precision=auto trains in bfloat16 on an AMX
        # CPU, whose per-replica bfloat16 gradients round differently: 0.24 apart after 2 epochs)
        result = run_script("train.py", f"--defense={defense}", "--flagfile=flags/digits.cfg", "--epochs=2",
                            "--mixed_precision=none", *mirrored, *extra, f"--output_dir={out}", "--eval_examples=100")
        assert result.returncode == 0, result.stderr[-3000:]
        if devices > 1:
            assert "2 replica(s)" in result.stdout and "XLA off" in result.stdout
        network = models.build("mlp", (8, 8, 1), 10)
        network.load_weights(str(out / "checkpoints" / "final.weights.h5"))
        weights.append([w.numpy() for w in network.weights])
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["final"]["clean_accuracy"] > 0.8 and metrics["warnings"] == []
    # measured 2026-11-27 after 2 epochs: largest difference 7.5e-8 (pgd), 1.8e-7 (free), 8.9e-8 (logit squeeze);
    # with the squeeze penalty reduced per replica (the old bug) the weights differed by 0.09 after 3 steps
    for two, one in zip(*weights):
        np.testing.assert_allclose(two, one, rtol=0, atol=1e-5)


def test_evaluate_suite_audit_diagnostics_and_transfer(runs, tmp_path):
    output = tmp_path / "suite.json"
    result = run_script("evaluate.py", f"--model_dir={runs['pgd'][0]}", "--suite=standard", "--num_examples=100",
                        f"--source_model={runs['natural'][0]}", "--diagnostics=gradients,landscape,sweep",
                        f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert {"fgsm", "pgd20", "pgd100", "cw20", "cw100", "pgd20_l2", "transfer_pgd20"} == set(report["attacks"])
    assert set(report["audit"]) >= {"one_step_vs_multi_step", "unbounded_eps", "black_box_vs_white_box"}
    assert report["audit"]["black_box_vs_white_box"]["verdict"] == "pass"  # transfer is weaker than white-box
    assert (tmp_path / "plots" / "loss_landscape.png").exists()
    assert (tmp_path / "plots" / "accuracy_sweeps.png").exists()
    bad = run_script("evaluate.py", f"--model_dir={runs['pgd'][0]}", "--suite=magic")
    assert bad.returncode == 2 and "--suite" in bad.stderr


NO_TRAINING_CODE = """
import json, sys
# the evaluation library must not need the training side of tfadv: make those imports fail
for name in ("tfadv.training", "tfadv.models", "tfadv.losses", "tfadv.targets", "tfadv.config", "tfadv.cli",
             "tfadv.callbacks", "tfadv.experiment"):
    sys.modules[name] = None
import numpy as np
from tfadv import evaluation, export
path, examples, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
with np.load(examples) as archive:
    x, y = archive["x"], archive["y"]
logits_fn = export.load_logits_fn(path)
eps = float(export.read_metadata(path)["eps"])
report = evaluation.evaluate(logits_fn, x, y, evaluation.autoattack_specs({"linf": eps, "l2": 0.5}), batch, seed=3)
print(json.dumps({name: entry["robust_accuracy"] for name, entry in report["attacks"].items()}))
"""


def test_autoattack_suite_on_a_bare_saved_model_without_the_training_code(runs, digits, tmp_path):
    # only the exported SavedModel (no checkpoints, no run config) and the user's own examples
    exported = tmp_path / "exported" / "1"
    shutil.copytree(runs["pgd"][0] / "saved_model" / "1", exported)
    examples = tmp_path / "examples.npz"
    np.savez(examples, x=digits.test[0][:60], y=digits.test[1][:60])
    report_dir = tmp_path / "report"
    result = run_script("evaluate.py", f"--model_dir={exported}", f"--examples={examples}", "--suite=autoattack",
                        "--seed=3", "--eval_batch_size=64", "--audit_square_queries=200", "--noprogress",
                        f"--output_dir={report_dir}", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert abs(report["eps"] - 0.125) < 1e-9  # read from the SavedModel's metadata
    attacks = report["attacks"]
    assert list(attacks) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    cumulative = [attacks[name]["robust_accuracy"] for name in attacks]
    assert all(a >= b for a, b in zip(cumulative, cumulative[1:]))  # a cascade can only remove points
    assert report["groups"]["autoattack"]["robust_accuracy"] == cumulative[-1] <= report["clean_accuracy"]
    assert cumulative[-1] > 0.4  # a PGD-AT model keeps robustness under AutoAttack at eps 2/16
    assert all(attacks[name]["seconds"] > 0 and attacks[name]["images_per_second"] > 0 for name in attacks)
    assert "verdict" in report["audit"]["one_step_vs_multi_step"]
    markdown = (report_dir / "report.md").read_text()
    assert "apgd_t" in markdown and "autoattack" in markdown
    assert "![robust accuracy](plots/robust_accuracy.png)" in markdown
    assert (report_dir / "plots" / "robust_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # the library alone, with the training modules unimportable, gives the same numbers at another batch size
    # batches of 25 (25, 25, 10): each batch runs its own Square loop of up to 5000 queries, so 7 cost 9 of them
    check = subprocess.run([sys.executable, "-c", NO_TRAINING_CODE, str(exported), str(examples), "25"], cwd=ROOT,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True,
                           timeout=900)
    assert check.returncode == 0, check.stderr[-3000:]
    library = json.loads(check.stdout.strip().splitlines()[-1])
    assert library == {name: entry["robust_accuracy"] for name, entry in attacks.items()}
