"""A clean first impression: the scripts start without TensorFlow's C++ chatter, `--help` lists the flags with
their meaning, a flag that a later --flagfile would override is refused naming both, the evaluation chart has a legend
and the worst case, and `--overwrite` of a training run keeps the evaluation reports in its directory."""

import json
import os
import re
import subprocess
import sys

import pytest

import script_server
from helpers import ROOT
from tfadv import cli, runs
from tfadv.evaluation import reports

# TensorFlow's start-up lines ("oneDNN custom operations are on" where it enables oneDNN; not tfadv's own line
# saying it is off, precision.ONEDNN_OFF)
NOISE = ("cuInit", "cudart_stub", "oneDNN custom operations", "InitializeLog", "cpu_feature_guard", "TF-TRT", "I0000",
         "E0000", "W0000")


def clean_env(**extra):
    """The environment of a user who never heard of TF_CPP_MIN_LOG_LEVEL."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_script(script, *args, env=None, timeout=500):
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *args], cwd=ROOT,
                          env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def noise_in(text):
    return [line for line in text.splitlines() if any(marker in line for marker in NOISE)]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One digits epoch trained by scripts/train.py in a clean environment."""
    out = tmp_path_factory.mktemp("first") / "run"
    result = run_script("train.py", "--flagfile=flags/digits.cfg", "--epochs=1", f"--output_dir={out}")
    return out, result


def test_train_and_evaluate_start_without_tensorflow_noise(trained_run):
    out, train = trained_run
    assert train.returncode == 0, train.stderr[-3000:]
    assert noise_in(train.stderr) == [] and noise_in(train.stdout) == [], train.stderr[-3000:]
    assert json.load(open(runs.metrics_path(out)))["final"]["num_examples"] == 450  # it really trained
    evaluate = run_script("evaluate.py", f"--model_dir={out}", "--attacks=fgsm", "--num_examples=50", "--noaudit",
                          "--noprogress", f"--output_dir={out}")
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert noise_in(evaluate.stderr) == [] and noise_in(evaluate.stdout) == [], evaluate.stderr[-3000:]
    report = json.load(open(runs.path(out, runs.REPORT_JSON)))
    assert report["num_examples"] == 50 and list(report["attacks"]) == ["fgsm"]
    assert os.path.getsize(os.path.join(runs.plots_dir(out), runs.ROBUST_ACCURACY_PLOT)) > 0


def test_build_cossat_refusal_is_one_line_without_noise():
    result = run_script("build_cossat.py", "--flagfile=flags/digits.cfg")
    assert result.returncode == 2
    assert noise_in(result.stderr) == [] and noise_in(result.stdout) == [], result.stderr[-3000:]
    assert result.stderr.splitlines() == ["error: --ssat: is required"], result.stderr[-3000:]


def test_cpp_log_filter_follows_the_level():
    text = (b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
            b"I0000 00:00:1795800731.795202   32031 port.cc:153] oneDNN custom operations are on.\n"
            b"W1127 17:32:09.123456    7 gpu.cc:12] a warning\n"
            b"E0000 00:00:1795800731.795673   32031 cuda_executor.cc:1] failed call to cuInit\n"
            b"a Python line I0000 that is not a log line\n")
    lines = text.splitlines(keepends=True)
    assert cli.filter_cpp_log(text, 0) == text
    assert cli.filter_cpp_log(text, 1) == b"".join(lines[2:])
    assert cli.filter_cpp_log(text, 2) == b"".join(lines[3:])
    assert cli.filter_cpp_log(text, 3) == lines[4]


def test_a_users_log_level_is_kept():
    code = ("import os, sys; from tfadv import cli; cli.quiet_tensorflow(); "
            "print(os.environ['TF_CPP_MIN_LOG_LEVEL'], 'tensorflow' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", code], env=clean_env(TF_CPP_MIN_LOG_LEVEL="0"), cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert shown.stdout.split() == ["0", "True"]
    # level 0 asks for TensorFlow's INFO lines: they are not swallowed (which ones depends on the machine: "oneDNN
    # custom operations are on" only where TensorFlow enables oneDNN, an Intel CPU with AVX512 / AMX, not this AMD)
    assert re.search(r"^I\d{4} [\d:.]+ +\d+ \w+\.cc:\d+\] ", shown.stderr, re.MULTILINE), shown.stderr[-2000:]
    default = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert default.stdout.split() == ["3", "True"] and noise_in(default.stderr) == []


@pytest.mark.parametrize("script,expected", [
    ("train.py", ["--lr: ", "--defense: training method: natural", "--eps: ", "--output_dir: ", "--free_replays: "]),
    ("evaluate.py", ["--model_dir: a SavedModel directory or a tfadv run directory", "--attacks: "]),
    ("build_cossat.py", ["--ssat: the SSAT run directory", "--base: ", "--min_recall: "]),
])
def test_short_help_lists_the_scripts_flags_with_their_meaning(script, expected):
    result = run_script(script, "--help")
    for text in expected:
        assert text in result.stdout, (text, result.stdout[:2000])
    assert noise_in(result.stdout + result.stderr) == []
    assert "--helpfull" not in result.stdout.split("flags:")[-1][:40]  # a list of flags, not only a pointer


def refusal_of(capsys, argv, flag_values):
    """The one error line `cli.refuse_overridden_flags` exits 2 with, or None when it lets the command through."""
    try:
        cli.refuse_overridden_flags(["train.py", *argv], flag_values)
    except SystemExit as exit_:
        lines = [line for line in capsys.readouterr().err.splitlines() if line]
        assert exit_.code == 2 and len(lines) == 1, lines
        return lines[0]
    assert capsys.readouterr().err == ""
    return None


def test_flag_before_an_overriding_flagfile_is_refused(capsys, monkeypatch, training_flags):
    """Accepted, not applied (Boundary II): absl lets the later --flagfile win over a flag typed before it; it
    was a warning and the run went on with the flagfile's value. Now one line naming both, exit 2."""
    expected = ("error: --lr=0.1 is overridden by --flagfile=flags/digits.cfg (which sets --lr=0.05): the flagfile "
                "would win; put flags after --flagfile")
    monkeypatch.chdir(ROOT)
    assert refusal_of(capsys, ["--lr=0.1", "--flagfile=flags/digits.cfg"], training_flags) == expected
    assert refusal_of(capsys, ["--lr", "0.1", "--flagfile", "flags/digits.cfg"], training_flags) == expected
    assert refusal_of(capsys, ["--flagfile=flags/digits.cfg", "--lr=0.1"], training_flags) is None
    assert refusal_of(capsys, ["--lr=0.05", "--flagfile=flags/digits.cfg"], training_flags) is None
    assert refusal_of(capsys, ["--lr=5e-2", "--flagfile=flags/digits.cfg"], training_flags) is None  # same number
    assert refusal_of(capsys, ["--lr=0.1", "--flagfile=flags/digits.cfg", "--lr=0.2"], training_flags) is None
    assert refusal_of(capsys, ["--epochs=3", "--lr=0.05", "--defense=trades", "--flagfile=flags/digits.cfg"],
                      training_flags) == ("error: --epochs=3 is overridden by --flagfile=flags/digits.cfg (which "
                                          "sets --epochs=30): the flagfile would win; put flags after --flagfile")


def test_nested_flagfile_override_is_refused_naming_every_flag(tmp_path, capsys, training_flags):
    nested = tmp_path / "nested.cfg"
    nested.write_text(f"--flagfile={os.path.join(ROOT, 'flags', 'digits.cfg')}\n--seed=7\n")
    assert refusal_of(capsys, ["--momentum=0.5", "--seed=1", f"--flagfile={nested}"], training_flags) == (
        f"error: --momentum=0.5 is overridden by --flagfile={nested} (which sets --momentum=0.9); --seed=1 is "
        f"overridden by --flagfile={nested} (which sets --seed=7): the flagfile would win; put flags after "
        "--flagfile")


def test_scripts_refuse_a_flag_their_flagfile_overrides(tmp_path):
    # train.py (absl's own flagfiles): one line, exit 2, nothing written (it trained with --lr=0.05 before).
    out = tmp_path / "run"
    train = script_server.run_script("train.py", "--lr=0.1", "--flagfile=flags/digits.cfg", "--epochs=1",
                                     f"--output_dir={out}")
    assert train.returncode == 2 and not out.exists()
    assert train.stderr.splitlines() == ["error: --lr=0.1 is overridden by --flagfile=flags/digits.cfg (which sets "
                                         "--lr=0.05): the flagfile would win; put flags after --flagfile"], train.stderr
    # build_cossat.py (cli.training_flagfile_parser): a flag of its own that a nested training flagfile sets.
    flagfile = tmp_path / "c.cfg"
    flagfile.write_text("--flagfile=flags/digits.cfg\n--min_recall=0.8\n")
    build = script_server.run_script("build_cossat.py", "--min_recall=0.95", f"--flagfile={flagfile}")
    assert build.returncode == 2
    assert build.stderr.splitlines() == [
        f"error: --min_recall=0.95 is overridden by --flagfile={flagfile} (which sets --min_recall=0.8): the "
        "flagfile would win; put flags after --flagfile"], build.stderr
    after = script_server.run_script("build_cossat.py", f"--flagfile={flagfile}", "--min_recall=0.95")
    assert after.stderr.splitlines() == ["error: --ssat: is required"], after.stderr


def _report(by_norm, worst):
    entry = {"norm": "linf", "eps": 0.125, "robust_accuracy": 0.5, "attacked": 40, "seconds": 1.0,
             "images_per_second": 50.0}
    attacks = {"pgd20": entry, "pgd20_l2": dict(entry, norm="l2", robust_accuracy=0.3),
               "apgd_ce": dict(entry, robust_accuracy=0.45, group="autoattack")}
    if len(by_norm) == 1:
        attacks = {"pgd20": entry}
    return {"clean_accuracy": 0.9, "num_examples": 50, "attacks": attacks, "worst_case_by_norm": by_norm,
            "worst_case_accuracy": worst}


def test_chart_has_a_legend_and_the_worst_case_report_md_leads_with(tmp_path):
    import matplotlib.pyplot as plt

    report = _report({"linf": 0.45, "l2": 0.3}, 0.3)
    assert "worst case over all attacks **30.00 %**; linf attacks only **45.00 %**; l2 attacks only **30.00 %**" \
        in reports.format_markdown(report)
    fig = reports.report_figure(report, "m")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]  # top to bottom
    assert labels == ["clean", "pgd20", "pgd20_l2", "+ apgd_ce", "worst case (linf)", "worst case (l2)",
                      "worst case (all norms)"]
    widths = [bar.get_width() for bar in ax.patches][:len(labels)]
    assert widths == pytest.approx([90, 50, 30, 45, 45, 30, 30])
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_xdata()) == pytest.approx([30.0, 30.0])
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["clean", "l-inf attack", "l2 attack", "cascade stage (accuracy after it)",
                      "worst case (per norm, over all norms)", "worst case over all attacks: 30.0 %"]
    plt.close(fig)
    single = reports.report_figure(_report({"linf": 0.5}, 0.5))
    assert [t.get_text() for t in single.axes[0].get_yticklabels()] == ["clean", "pgd20", "worst case"]
    assert "worst case over all attacks: 50.0 %" in [t.get_text() for t in single.axes[0].get_legend().get_texts()]
    plt.close(single)
    path = reports.plot_report(report, str(tmp_path / "chart.png"), "m")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_chart_title_says_the_threat_model_it_measured():
    """robust_accuracy.png names each norm's radius (Boundary II item 9): in pixel levels when the report's budget
    records them (evaluate.py always does), else as a fraction of [0, 1]."""
    import matplotlib.pyplot as plt

    report = _report({"linf": 0.45, "l2": 0.3}, 0.3)
    for entry in (report["attacks"]["pgd20_l2"],):
        entry["eps"] = 0.5
    assert reports.threat_model_line(report) == "l-inf eps 0.125; l2 eps 0.5"
    report["budget"] = {"pixel_max": 16.0, "eps": {"levels": 2.0, "fraction": 0.125},
                        "eps_l2": {"levels": 8.0, "fraction": 0.5}}
    fig = reports.report_figure(report, "m: robust accuracy")
    assert fig.axes[0].get_title().splitlines()[0] == "m: robust accuracy (l-inf eps 2/16 = 0.125; l2 eps 0.5)"
    plt.close(fig)


def test_remove_training_outputs_keeps_everything_else(tmp_path):
    run = tmp_path / "run"
    for name in ["flags.txt", "metrics.json", "history.csv", "robust_overfitting.md", "report.json", "report.md",
                 "checkpoints/best.weights.h5", "checkpoints/resume/x", "saved_model/1/saved_model.pb",
                 "plots/learning_rate.png", "plots/accuracy.png", "plots/robust_accuracy.png", "tensorboard/t/e",
                 "eval/pgd/report.json", "notes.txt"]:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    removed = runs.remove_training_outputs(str(run))
    assert len(removed) == 9
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    assert left == ["eval/pgd/report.json", "notes.txt", "plots/robust_accuracy.png", "report.json", "report.md"]
    (run / "plots" / "robust_accuracy.png").unlink()
    runs.remove_training_outputs(str(run))
    assert not (run / "plots").exists()  # an emptied plots/ goes


def test_overwrite_keeps_evaluation_reports(trained_run):
    out, train = trained_run
    assert train.returncode == 0, train.stderr[-3000:]
    (out / "eval").mkdir(exist_ok=True)
    (out / "eval" / "note.md").write_text("mine")
    report_before = (out / runs.REPORT_JSON).read_text() if (out / runs.REPORT_JSON).exists() else None
    if report_before is None:
        (out / runs.REPORT_JSON).write_text('{"user": 1}')
        report_before = '{"user": 1}'
    stale = out / runs.CHECKPOINTS_DIR / "stale.weights.h5"
    stale.write_text("old")
    metrics_before = (out / runs.METRICS_FILE).read_text()
    again = script_server.run_script("train.py", "--flagfile=flags/digits.cfg", "--epochs=1", "--seed=1", "--overwrite",
                       f"--output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "eval" / "note.md").read_text() == "mine"
    assert (out / runs.REPORT_JSON).read_text() == report_before
    assert not stale.exists()  # the old checkpoints went
    metrics = json.loads((out / runs.METRICS_FILE).read_text())
    assert (out / runs.METRICS_FILE).read_text() != metrics_before and metrics["final"]["num_examples"] == 450
    assert "--seed=1" in (out / runs.FLAGS_FILE).read_text()
