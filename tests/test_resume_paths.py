"""A refused run leaves nothing behind, so the corrected rerun starts; an interrupted run resumes however its
directory is spelled; a changed flag is named; a diverged run says what was not finite and how to restart."""

import os

import pytest

from tfadv import experiment, runs
from tfadv.config import ConfigError, TrainConfig

QUIET = dict(log=lambda *_: None)


def _config(out, **values):
    return TrainConfig.from_flags(defense="natural", epochs=1, eval_examples=50, output_dir=str(out),
                                  **values)


def test_a_refused_run_writes_nothing_and_the_corrected_rerun_resumes_under_any_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        experiment.train(_config("runs/x", lr=float("nan")), **QUIET)
    assert info.value.flag == "lr" and not os.path.exists("runs")  # nothing written: no flags.txt to block a rerun
    experiment.train(_config("runs/x"), **QUIET)
    os.remove(runs.metrics_path("runs/x"))  # as if it was interrupted after its last epoch
    for spelling in ("./runs/x", "runs/x/", str(tmp_path / "runs" / "x"), "runs/../runs/x"):
        experiment.train(_config(spelling), **QUIET)  # the same run: resumed (finished), not refused
        assert os.path.exists(runs.metrics_path("runs/x"))
        os.remove(runs.metrics_path("runs/x"))
    with pytest.raises(experiment.RunError) as refused:
        experiment.train(_config("runs/x", lr=0.01), **QUIET)
    assert "--lr=0.01 (was 0.05)" in str(refused.value) and "--overwrite" in str(refused.value)


def test_a_diverged_run_names_the_non_finite_values_and_the_restart(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("accuracy,epoch,loss,val_robust_accuracy\n0.5,0,1.2,0.3\n0.1,1,nan,inf\n")
    message = experiment._divergence_message(str(out))
    assert "at epoch 2" in message and "loss, val_robust_accuracy not finite" in message
    assert "--overwrite" in message and "--lr" in message
