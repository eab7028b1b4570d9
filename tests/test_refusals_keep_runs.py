"""A refused command never costs a finished run and never writes: a value that can only be checked once the data
is loaded (--batch_size larger than the training split, --train_examples smaller than a batch) is refused before
--overwrite removes anything and before flags.txt is written (Boundary II: it deleted a finished run's 31 files,
rewrote flags.txt, then exited 2; the corrected rerun was then refused as "an interrupted run with other flags")."""

import os

import pytest

from tfadv import experiment
from tfadv.config import ConfigError, TrainConfig

QUIET = dict(log=lambda *_: None)
VALUES = dict(dataset="digits", model="linear", defense="natural", epochs=1, batch_size=64, val_fraction=0.0,
              val_examples=50, eval_examples=50)


def _files(path):
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getmtime(os.path.join(d, f)))
                  for d, _, names in os.walk(path) for f in names)


@pytest.mark.parametrize("bad", [dict(batch_size=5000), dict(train_examples=5)])
def test_overwrite_with_a_value_refused_after_loading_keeps_the_finished_run(tmp_path, bad):
    out = tmp_path / "run"
    experiment.train(TrainConfig.from_flags(**VALUES, output_dir=str(out)), **QUIET)
    before = _files(out)
    assert any(name == "metrics.json" for name, _ in before)
    with pytest.raises(ConfigError) as info:
        experiment.train(TrainConfig.from_flags(**{**VALUES, **bad}, output_dir=str(out), overwrite=True), **QUIET)
    assert info.value.flag == "batch_size"
    assert _files(out) == before  # every file still there, none rewritten (flags.txt included)


def test_a_refused_first_run_writes_nothing_and_the_corrected_one_starts_cleanly(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        experiment.train(TrainConfig.from_flags(**{**VALUES, "batch_size": 5000}, output_dir=str(out)), **QUIET)
    assert not out.exists()
    metrics = experiment.train(TrainConfig.from_flags(**VALUES, output_dir=str(out)), **QUIET)
    assert metrics["final"]["num_examples"] == 50


def test_a_diverged_run_never_ships(tmp_path):
    """--lr=1e6: every rerun of the same command (what the README says to do after an interruption) refuses
    again; the NaN epoch is never checkpointed as completed, so no rerun "finishes" the run and exports NaN
    weights (it did after three reruns: exit 0, a SavedModel with NaN weights and a metrics.json)."""
    from tfadv import runs
    from tfadv.experiment import RunError

    out = tmp_path / "run"
    config = TrainConfig.from_flags(**{**VALUES, "epochs": 3, "lr": 1e6}, output_dir=str(out))
    for _ in range(4):
        with pytest.raises(RunError, match="diverged"):
            experiment.train(config, **QUIET)
        assert not os.path.exists(runs.metrics_path(str(out)))
        assert runs.find_saved_model(str(out)) is None


def _history(robust):
    return [{"epoch": str(i), "accuracy": "0.9", "val_robust_accuracy": str(r)} for i, r in enumerate(robust)]


def test_a_collapse_of_robust_accuracy_is_a_loud_warning():
    """BAT (one step) at MNIST's eps 0.3 reached 14.5 % robust validation accuracy at epoch 5, then about 2 % for
    50 epochs, exit 0 and no word. Catastrophic overfitting now warns; an ordinary plateau or wobble does not."""
    collapsed = experiment._collapse_warnings(_history([0.05, 0.10, 0.145, 0.03, 0.02, 0.02]))
    assert len(collapsed) == 1 and "0.145 at epoch 3" in collapsed[0] and "0.020 at epoch 6" in collapsed[0]
    assert experiment._collapse_warnings(_history([0.20, 0.30, 0.34, 0.31, 0.30])) == []  # robust overfitting
    assert experiment._collapse_warnings(_history([0.05, 0.06, 0.02])) == []  # under 10 points: noise
    assert experiment._collapse_warnings(_history([0.30])) == []
