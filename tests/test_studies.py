"""The study code behind docs' tables (tfadv/studies): the real-CIFAR-10 study's rows, runs and report, the preset
table and the digits tables, from run directories written here; subprocesses are recorded, never started."""

import json
import math
import os

import pytest

from helpers import ROOT
from tfadv.studies import cifar, cost, digits, jobs, presets


def _write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        if isinstance(value, str):
            handle.write(value)
        else:
            json.dump(value, handle)


def _study_row(run_dir, clean, pgd20, aa, best_ra=None, seconds=600.0, warn=()):
    """A finished study row: metrics.json, autoattack/report.json (660 / 300 images) and history.csv."""
    metrics = {"final": {"clean_accuracy": clean, "robust_accuracy": pgd20, "num_examples": 660},
               "train_seconds": seconds, "epochs": 25}
    if best_ra is not None:
        metrics["best"] = {"robust_accuracy": best_ra, "epoch": 20}
    _write(os.path.join(run_dir, "metrics.json"), metrics)
    audit = {"random_noise": {"verdict": "pass"}, **{name: {"verdict": "warn"} for name in warn}}
    _write(os.path.join(run_dir, "autoattack", "report.json"),
           {"worst_case_accuracy": aa, "num_examples": 300, "audit": audit})
    _write(os.path.join(run_dir, "history.csv"), "epoch,val_robust_accuracy,val_clean_accuracy\n"
                                                 "0,0.1,0.3\n1,0.2,0.4\n")


def _output(args):
    """The directory or file a recorded command writes (its --output_dir or --output)."""
    return next(a.split("=", 1)[1] for a in args if a.startswith(("--output_dir=", "--output=")))


class _Recorder:
    """Stands in for jobs.run: records each command and answers with the next exit code (0 when none is left)."""

    def __init__(self, *codes):
        self.calls, self.codes = [], list(codes)

    def __call__(self, args, log_path, done_path):
        self.calls.append((args, log_path, done_path))
        return (self.codes.pop(0) if self.codes else 0), 0.0


def test_study_report_tabulates_finished_rows_and_leaves_the_rest_pending(tmp_path):
    _study_row(tmp_path / "natural", 0.65, 0.0, 0.0)
    _study_row(tmp_path / "pgd", 0.45, 0.30, 0.26, best_ra=0.36, seconds=1440, warn=("loss_dependence",))
    markdown = cifar.Study(str(tmp_path)).report()
    lines = markdown.splitlines()
    pgd = next(line for line in lines if line.startswith("| PGD-AT | `--defense=pgd` |"))
    se = 100 * math.sqrt(0.45 * 0.55 / 660)  # binomial standard error on the 660 test images
    assert f"| 45.0 ± {se:.1f} |" in pgd and "| 26.0 ± 2.5 | 300 | 36.0 / 30.0 | loss_dependence | 24 |" in pgd
    assert pgd.endswith(f"| {cifar.PAPER['pgd']} |")
    pending = [line for line in lines if "| pending | | | | | | |" in line]
    assert len(pending) == len(cifar.ROWS) - 2  # every row but the two finished ones
    claim = next(line for line in lines if line.startswith("| 001: PGD-AT overfits robustly"))
    assert claim.endswith("| reproduced |") and "+6.0" in claim  # 6 points > 2 * sqrt(2) SE of 30 % on 660
    assert "Co-SSAT(PGD-AT): pending (needs the SSAT and PGD-AT rows)." in lines


def test_study_report_gives_cossat_its_detector_protocols_and_claims_once_evaluated(tmp_path):
    _study_row(tmp_path / "pgd", 0.45, 0.29, 0.23)
    _study_row(tmp_path / "ssat", 0.38, 0.25, 0.16)
    _write(str(tmp_path / "cossat" / "metrics.json"),
           {"detector_auc": {"dlr": 0.565}, "calibration": {"num_positive": 2000, "num_negative": 1000},
            "detector_calibration": {"dlr": {"tpr": 0.904, "fpr": 0.890, "balanced_accuracy": 0.507}}})
    _write(str(tmp_path / "cossat" / "eval.json"),
           {"cossat": {name: {"num_examples": 300, "clean_accuracy": 0.42, "worst_case_accuracy": worst,
                              "attacks": {"pgd20": {"robust_accuracy": 0.25}}}
                       for name, worst in (("white_box", 0.14), ("half_white_box", 0.2733), ("aa_dispatch", 0.2))}})
    lines = cifar.Study(str(tmp_path)).report().splitlines()
    assert "| white_box | 42.0 ± 2.8 | 25.0 ± 2.5 | 14.0 ± 2.0 | 300 |" in lines
    detector = next(line for line in lines if line.startswith("| 000: the DLR detector"))
    assert "ROC AUC 0.565" in detector and detector.endswith("| not reproduced |")
    white = next(line for line in lines if line.startswith("| 000: Co-SSAT(PGD-AT) beats PGD-AT alone"))
    assert "AA 14.0 ± 2.0 vs PGD-AT 23.0 ± 2.4 (-9.0 ± 3.1)" in white
    assert white.endswith("| not reproduced (opposite) |")


def test_study_report_writes_figures_linked_from_the_markdown_directory(tmp_path):
    _study_row(tmp_path / "runs" / "natural", 0.65, 0.0, 0.0)
    _study_row(tmp_path / "runs" / "pgd", 0.45, 0.30, 0.26, best_ra=0.36)
    markdown = cifar.Study(str(tmp_path / "runs")).report(str(tmp_path / "docs" / "plots"), str(tmp_path / "docs"))
    assert "![cifar10_robust_overfitting.png](plots/cifar10_robust_overfitting.png)" in markdown
    assert "![cifar10_baselines.png](plots/cifar10_baselines.png)" in markdown
    with open(tmp_path / "docs" / "plots" / "cifar10_baselines.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_study_runs_each_row_then_its_evaluation_with_teachers_substituted(tmp_path, monkeypatch, capsys):
    recorder = _Recorder(0, 0, 3)  # pgd_kd trains and is evaluated; pgd_swa's training fails
    monkeypatch.setattr(jobs, "run", recorder)
    monkeypatch.setattr(jobs, "last_lines", lambda path: "the log's last lines")
    study = cifar.Study(str(tmp_path), "/data", autoattack_examples=50)
    _study_row(tmp_path / "natural", 0.65, 0.0, 0.0)  # the teachers are finished
    _study_row(tmp_path / "pgd", 0.45, 0.30, 0.26)
    study.run(["pgd_swa", "pgd_kd"])  # in ROWS' order whatever --only's order; no Co-SSAT without its bases
    (train, log, done), (evaluate, _, evaluated), (failed, _, _) = recorder.calls
    run_dir = str(tmp_path / "pgd_kd")
    assert train[:2] == ["scripts/train.py", "--flagfile=flags/cifar10_cpu.cfg"]
    assert f"--kd_adv_teacher={tmp_path / 'pgd'}" in train and f"--kd_std_teacher={tmp_path / 'natural'}" in train
    assert train[-2:] == ["--data_dir=/data", f"--output_dir={run_dir}"]
    assert (log, done) == (run_dir + ".log", os.path.join(run_dir, "metrics.json"))
    assert evaluate[0] == "scripts/evaluate.py" and "--num_examples=50" in evaluate and "--suite=autoattack" in evaluate
    assert evaluated == os.path.join(run_dir, "autoattack", "report.json")
    assert "--swa" in failed and len(recorder.calls) == 3  # a failed training is not evaluated
    assert capsys.readouterr().out == f"pgd_swa: exit code 3; see {tmp_path / 'pgd_swa'}.log: the log's last lines\n"


def test_study_trains_in_the_precision_asked_and_the_table_says_which_rows_did(tmp_path, monkeypatch):
    """On a CPU without bfloat16 instructions the preset's bfloat16 is emulated (8.4x slower here): --mixed_precision
    reaches every training the study starts, teachers included, and a row trained so shows it in its flags cell."""
    recorder = _Recorder()
    monkeypatch.setattr(jobs, "run", recorder)
    archive = str(tmp_path / "archive")
    _study_row(tmp_path / "old" / "pgd", 0.45, 0.30, 0.26)
    cifar.Study(str(tmp_path / "old"), archive_dir=archive).report()
    study = cifar.Study(str(tmp_path / "new"), "/data", archive_dir=archive, precision="none")
    study.run(["pgd_swa", "pgd_kd"])
    trainings = [args for args, _, _ in recorder.calls if args[0] == "scripts/train.py"]
    assert [_output(args) for args in trainings] == [str(tmp_path / "new" / key) for key in (
        "natural", "teachers/pgd", "pgd_kd", "pgd_swa")]
    assert all(args[-3] == "--mixed_precision=none" for args in trainings)
    assert not any("--mixed_precision" in " ".join(args) for args, _, _ in recorder.calls if args[0] != trainings[0][0])
    _study_row(tmp_path / "new" / "pgd_swa", 0.44, 0.29, 0.22)
    metrics = jobs.read_json(tmp_path / "new" / "pgd_swa" / "metrics.json")
    jobs.write_json(str(tmp_path / "new" / "pgd_swa" / "metrics.json"),
                    {**metrics, "precision": {"training": "float32", "requested": "none"}})
    lines = study.report().splitlines()
    swa = "| PGD-AT + SWA | `--defense=pgd --swa --mixed_precision=none` | 44.0"
    assert any(line.startswith(swa) for line in lines)
    assert any(line.startswith("| PGD-AT | `--defense=pgd` | 45.0") for line in lines)  # the preset's bfloat16


def test_study_builds_cossat_only_when_ssat_and_pgd_are_finished(tmp_path, monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(jobs, "run", recorder)
    study = cifar.Study(str(tmp_path), "/data")
    study.run(["cossat"])
    assert recorder.calls == []
    _study_row(tmp_path / "ssat", 0.5, 0.3, 0.2)
    _study_row(tmp_path / "pgd", 0.5, 0.3, 0.2)
    study.run(["cossat"])
    (build, _, _), (evaluate, _, done) = recorder.calls
    assert build[0] == "scripts/build_cossat.py" and f"--ssat={tmp_path / 'ssat'}" in build
    assert "--cossat_protocol=all" in evaluate and done == str(tmp_path / "cossat" / "eval.json")
    assert cifar.unknown_rows(["pgd", "cossat", "pgdd"]) == ["pgdd"]


def test_an_archived_row_outlives_its_run_directory(tmp_path, monkeypatch, capsys):
    """A fresh machine has only the repository: the archive keeps a finished row in the report, and the study
    does not train it again unless a row still to run needs its weights."""
    archive = str(tmp_path / "docs" / "cifar10_study")
    _study_row(tmp_path / "old" / "natural", 0.65, 0.0, 0.0)
    _study_row(tmp_path / "old" / "pgd", 0.45, 0.30, 0.26, best_ra=0.36, seconds=1440)
    before = cifar.Study(str(tmp_path / "old"), archive_dir=archive).report()
    assert sorted(os.listdir(os.path.join(archive, "pgd"))) == ["autoattack", "history.csv", "metrics.json"]
    fresh = cifar.Study(str(tmp_path / "new"), "/data", archive_dir=archive)  # the run directories are gone
    assert fresh.report() == before and "| PGD-AT | `--defense=pgd` | 45.0" in before
    recorder = _Recorder()
    monkeypatch.setattr(jobs, "run", recorder)
    fresh.run(["natural", "pgd"])
    assert recorder.calls == []
    assert capsys.readouterr().out.splitlines() == [
        f"natural: archived in {os.path.join(archive, 'natural')}, not run again",
        f"pgd: archived in {os.path.join(archive, 'pgd')}, not run again"]

    def train_teachers(args, log_path, done_path):  # as train.py: a training run's flags, metrics and checkpoints
        recorder(args, log_path, done_path)
        out = _output(args)
        if args[0] == "scripts/train.py" and not os.path.exists(done_path):
            for name in ("flags.txt", "metrics.json", *(f"checkpoints/{c}.weights.h5" for c in ("best", "best_clean",
                                                                                                   "final"))):
                _write(os.path.join(out, name), f"{os.path.basename(out)} {name}")
        return 0, 0.0

    monkeypatch.setattr(jobs, "run", train_teachers)
    recorder.calls.clear()
    fresh.run(["pgd_kd"])  # its teachers' weights are gone: each trains again (no evaluation), then the row
    teachers = tmp_path / "new" / "teachers"
    assert [(args[0], _output(args)) for args, _, _ in recorder.calls] == [
        ("scripts/train.py", str(teachers / "natural")), ("scripts/train.py", str(teachers / "pgd")),
        ("scripts/train.py", str(tmp_path / "new" / "pgd_kd")),
        ("scripts/evaluate.py", str(tmp_path / "new" / "pgd_kd" / "autoattack"))]
    kd = recorder.calls[2][0]
    assert f"--kd_adv_teacher={teachers / 'pgd'}" in kd and f"--kd_std_teacher={teachers / 'natural'}" in kd
    assert fresh.report() == before  # the reported rows are the archived runs: a teacher run replaces nothing
    # the archive keeps each teacher's flags, metrics and the one checkpoint its role reads (paper 001's code:
    # the robust teacher's best-robust, the standard teacher's best-clean), so no later machine trains it again
    for key, checkpoint in (("pgd", "best"), ("natural", "best_clean")):
        kept = os.path.join(archive, key, "teacher")
        assert sorted(os.listdir(kept)) == ["checkpoints", "flags.txt", "metrics.json"]
        assert os.listdir(os.path.join(kept, "checkpoints")) == [f"{checkpoint}.weights.h5"]
        with open(os.path.join(kept, "checkpoints", f"{checkpoint}.weights.h5")) as handle:
            assert handle.read() == f"{key} checkpoints/{checkpoint}.weights.h5"
    recorder.calls.clear()
    cifar.Study(str(tmp_path / "third"), "/data", archive_dir=archive).run(["pgd_kd_swa"])  # another machine
    (kd_swa, _, _), _ = recorder.calls
    assert kd_swa[0] == "scripts/train.py" and f"--kd_adv_teacher={os.path.join(archive, 'pgd', 'teacher')}" in kd_swa
    assert f"--kd_std_teacher={os.path.join(archive, 'natural', 'teacher')}" in kd_swa


def test_the_archive_retrains_a_cossat_base_only_when_cossat_needs_it_and_keeps_smoke_runs_out(tmp_path, monkeypatch,
                                                                                                  capsys):
    archive = str(tmp_path / "archive")
    _study_row(tmp_path / "old" / "pgd", 0.45, 0.30, 0.26)
    cifar.Study(str(tmp_path / "old"), archive_dir=archive).report()  # pgd archived; its weights are then lost
    fresh = cifar.Study(str(tmp_path / "new"), "/data", archive_dir=archive)

    def train_and_finish(args, log_path, done_path):  # as jobs.run: a finished run is skipped; training writes
        if os.path.exists(done_path):                   # every result of a row (its evaluation's too)
            return 0, 0.0
        out = _output(args)
        if args[0] == "scripts/train.py":
            _study_row(out, 0.5, 0.3, 0.2)
        calls.append(args[0] + " " + os.path.basename(out))
        return 0, 0.0

    calls = []
    monkeypatch.setattr(jobs, "run", train_and_finish)
    fresh.run(["ssat", "cossat"])  # pgd is archived only: Co-SSAT needs its weights, so it trains again first
    assert calls == ["scripts/train.py pgd", "scripts/train.py ssat", "scripts/build_cossat.py cossat",
                     "scripts/evaluate.py eval.json"]
    # a row trained but not evaluated needs no teacher weights: only its evaluation runs
    calls.clear()
    _study_row(tmp_path / "old" / "natural", 0.65, 0.0, 0.0)
    cifar.Study(str(tmp_path / "old"), archive_dir=archive).report()
    kd = tmp_path / "third" / "pgd_kd"
    _study_row(kd, 0.5, 0.3, 0.2)
    os.remove(kd / "autoattack" / "report.json")
    cifar.Study(str(tmp_path / "third"), "/data", archive_dir=archive).run(["pgd_kd"])
    assert calls == ["scripts/evaluate.py autoattack"]
    # a smoke run evaluated on fewer images does not replace what the archive keeps
    capsys.readouterr()
    smoke = tmp_path / "smoke" / "natural"
    _study_row(smoke, 0.9, 0.9, 0.9)
    report = jobs.read_json(smoke / "autoattack" / "report.json")
    jobs.write_json(str(smoke / "autoattack" / "report.json"), {**report, "num_examples": 20})
    assert cifar.Study(str(tmp_path / "smoke"), archive_dir=archive).load("natural")["metrics"]["final"][
        "clean_accuracy"] == 0.65
    assert "evaluated on another number of images than --autoattack_examples=300: not archived" in (
        capsys.readouterr().out)


def test_jobs_run_skips_a_finished_run_and_appends_to_the_log(tmp_path):
    log, done = str(tmp_path / "log.txt"), str(tmp_path / "done")
    code, _ = jobs.run(["-c", "print('first')"], log, done)
    code2, _ = jobs.run(["-c", "import sys; sys.exit(4)"], log, done)
    with open(log) as handle:
        text = handle.read()
    assert (code, code2) == (0, 4) and "first" in text and text.count("$ python -c") == 2
    _write(done, "")
    assert jobs.run(["-c", "import sys; sys.exit(5)"], log, done) == (0, 0.0)  # finished: not run again
    assert jobs.last_lines(log, 1) == "$ python -c import sys; sys.exit(4)"


def test_run_or_exit_names_the_failed_script_and_its_log(tmp_path):
    log = str(tmp_path / "x.log")
    with pytest.raises(SystemExit) as info:
        jobs.run_or_exit("no_such_script.py", "--a=1", log=log)
    assert str(info.value).startswith("no_such_script.py --a=1 failed with exit code 2; see ")
    assert str(info.value).endswith(log) and os.path.exists(log)


def test_flags_of_reads_a_flagfile_as_train_py_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the flagfile is found relative to the repository, whatever the directory
    recipe = jobs.flags_of("flags/cifar10_cpu.cfg", ["--defense=pgd", "--swa", "--epochs=3"])
    assert recipe["defense"] == "pgd" and recipe["model"] == "wide_resnet" and recipe["dataset"] == "cifar10"
    assert recipe["swa"] is True and int(recipe["epochs"]) == 3
    assert jobs.flags_of("flags/cifar10_cpu.cfg", ["--defense=pgd", "--swa", "--noswa"])["swa"] is False
    assert os.getcwd() == str(tmp_path)


def test_passes_per_image_counts_forward_equivalents():
    assert cost.passes_per_image({"defense": "natural"}) == 3
    assert cost.passes_per_image({"defense": "pgd", "attack_steps": "7"}) == 17  # 2k + 3
    assert cost.passes_per_image({"defense": "trades", "attack_steps": 10}) == 27  # 2k + 7
    assert cost.passes_per_image({"defense": "ssat", "ssat_replays": "4"}) == 12
    assert cost.passes_per_image({"defense": "pgd", "kd_adv_teacher": "/t", "kd_std_teacher": ""}) == 24


def test_preset_table_report_only_reads_rows_and_marks_the_rest(tmp_path):
    table = presets.PresetTable(str(tmp_path), train_examples=128)
    done = {"name": "cifar10-pgd", "preset": "cifar10", "defense": "pgd", "extra": "", "stage": "done",
            "network": "preact_resnet18", "precision": "none", "images_per_second": 7.34, "epoch_seconds": 17.4,
            "full_epochs": 200, "full_images": 50000, "cpu_hours": 380.2, "gpu_hours": 0.57}
    _write(str(tmp_path / "cifar10-pgd" / "row.json"), done)
    _write(str(tmp_path / "svhn-pgd" / "row.json"), {**done, "name": "svhn-pgd", "preset": "svhn",
                                                     "stage": "autoattack", "failure": "Killed"})
    rows = table.build(["cifar10-pgd", "svhn-pgd", "smoothening_cifar10-pgd-kd-swa"], report_only=True)
    lines = table.table(rows).splitlines()
    assert "s per epoch of 128" in lines[0] and len(lines) == 5
    assert lines[2] == ("| cifar10 | pgd  | preact_resnet18 (none) | train, PGD-20, SavedModel, AutoAttack | 7.3 | 17 "
                        "| 200 x 50000 | 380 h | 34 min |")
    assert lines[3] == "| svhn | pgd  | | FAILED at autoattack: Killed | | | | | |"
    assert lines[4] == "| smoothening_cifar10 | pgd + KD + SWA | | not run yet (the command resumes here) | | | | | |"
    assert not os.path.exists(tmp_path / "shapes")  # a report runs nothing


def test_preset_rows_cover_every_registered_method_and_every_32px_flagfile():
    from tfadv.training import registry

    rows = presets.rows()
    assert [defense for preset, defense, _ in rows if preset == "cifar10"] == list(registry.names())
    for preset, _, _ in rows:
        assert os.path.exists(os.path.join(ROOT, "flags", f"{preset}.cfg")), preset
    names = [presets.row_name(*row) for row in rows]
    assert len(set(names)) == len(names)


def test_preset_measure_projects_the_full_recipe(monkeypatch):
    monkeypatch.setattr(cost, "forward_flops", lambda model, shape, classes, **options: 2e9)
    recipe = {"model": "wide_resnet", "wrn_depth": "16", "wrn_width": "2", "dataset": "svhn", "val_fraction": "0.1",
              "epochs": "80", "mixed_precision": "bfloat16", "defense": "pgd", "attack_steps": "10"}
    row = presets.measure(recipe, seconds=10.0, images=128)
    full = 73257 * 0.9
    assert row["network"] == "wide_resnet-16-2" and row["full_images"] == int(full)
    assert row["cpu_hours"] == pytest.approx(10 / 128 * full * 80 / 3600)
    assert row["gpu_hours"] == pytest.approx(2e9 * 23 * full * 80 / cost.GPU_FLOPS / 3600)  # PGD-10: 23 passes


def _digits_run(run_dir, clean, attacks, seconds_per_epoch=0.5, best=None):
    _write(os.path.join(run_dir, "eval.json"), {"clean_accuracy": clean, "worst_case_accuracy": min(attacks.values()),
                                                "attacks": {k: {"robust_accuracy": v, "seconds": 2.0}
                                                            for k, v in attacks.items()}})
    _write(os.path.join(run_dir, "metrics.json"), {"seconds_per_epoch": seconds_per_epoch,
                                                   "best": best or {}, "final": best or {}})


def test_digits_attack_table_runs_rows_and_tabulates_them(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(jobs, "run_or_exit", lambda script, *args, log: calls.append((script, args, log)))
    monkeypatch.setitem(digits.TABLES, "baselines", [("natural", "--defense=natural"), ("PGD-AT", "--defense=pgd")])
    attacks = {"fgsm": 0.5, "pgd20": 0.4, "cw20": 0.3, "pgd100": 0.25}
    _digits_run(str(tmp_path / "baselines-0"), 0.9, {k: v / 5 for k, v in attacks.items()}, 0.25)
    _digits_run(str(tmp_path / "baselines-1"), 0.8, attacks, 1.0)
    digits.write_table("baselines", str(tmp_path))
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "| PGD-AT | `--defense=pgd` | 80.0 | 50.0 | 40.0 | 30.0 | 25.0 | 25.0 | 1.000 | 4.00 |"
    assert out[-2] == "| natural | `--defense=natural` | 90.0 | 10.0 | 8.0 | 6.0 | 5.0 | 5.0 | 0.250 | 1.00 |"
    assert [script for script, _, _ in calls] == ["train.py", "evaluate.py"] * 2
    script, args, log = calls[1]
    assert args[:2] == (f"--model_dir={tmp_path / 'baselines-0'}", "--attacks=fgsm,pgd20,cw20,pgd100")
    assert "--noaudit" in args and log == str(tmp_path / "baselines-0") + ".eval.log"


def test_digits_smoothening_table_trains_the_teachers_first(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(jobs, "run_or_exit", lambda script, *args, log: calls.append(args))
    for index in range(1, 4):
        _digits_run(str(tmp_path / f"smoothening-{index}"), 0.9, {"pgd20": 0.5},
                    best={"robust_accuracy": 0.5, "clean_accuracy": 0.9, "epoch": 40})
    digits.write_table("smoothening", str(tmp_path))
    kd = calls[2]
    assert f"--kd_adv_teacher={tmp_path / 'smoothening-1'}" in kd
    assert f"--kd_std_teacher={tmp_path / 'smoothening-0'}" in kd
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3] == "| PGD-AT | 50.00 | 50.00 | 0.00 | 90.00 | 90.00 | 0.00 | 40 |"  # no line for the teacher


def test_every_script_is_flags_and_a_call_under_80_lines():
    """Issue 23 item 7: the scripts are thin entry points; a study's rows and logic live in tfadv/studies."""
    scripts = os.path.join(ROOT, "scripts")
    lengths = {}
    for name in sorted(os.listdir(scripts)):
        if name.endswith(".py"):
            with open(os.path.join(scripts, name)) as handle:
                lengths[name] = len(handle.read().splitlines())
    assert "cifar_study.py" in lengths and "digits_table.py" in lengths
    assert {name: count for name, count in lengths.items() if count >= 80} == {}
