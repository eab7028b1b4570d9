"""Faults of the file system (issue 25, item 6): write-permission and free-space problems are found before the work;
an export or report that fails leaves the run resumable with its finished epochs and no partial files.

Tests run as root here (permission bits do not stop root), so an unwritable place is a path under an existing
file, and a full disk is a write that raises ENOSPC."""

import errno
import os

import pytest

from tfadv import data, evaluation, experiment, export, runs
from tfadv.config import ConfigError, TrainConfig
from tfadv.errors import EvaluationError
from tfadv.experiment import RunError

QUIET = dict(log=lambda *_: None)
VALUES = dict(dataset="digits", model="linear", defense="natural", epochs=1, batch_size=64, val_fraction=0.0,
              val_examples=50, eval_examples=50)
BUDGET = {"linf": 0.125, "l2": 1.0, "l1": 8.0}
FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _files(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names)


def _partials(path):
    return [name for name in _files(path) if ".tmp" in name or ".partial" in name]


class _FullDisk:
    """open() whose files take 10 bytes, then raise ENOSPC (the file exists, partly written: a real full disk)."""

    def __init__(self):
        self.opened = []

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        self.opened.append(path)
        if "w" not in mode:
            return handle
        write = handle.write

        def full(text):
            write(text[:10])
            handle.flush()
            raise FULL

        handle.write = full
        return handle


def test_atomic_write_to_a_full_disk_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    fake = _FullDisk()
    monkeypatch.setattr(runs, "open", fake, raising=False)
    with pytest.raises(OSError) as info:
        runs.atomic_write(str(target), "new text, longer than ten bytes")
    assert info.value.errno == errno.ENOSPC
    assert fake.opened  # the write went through the patched open
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]  # no 0-byte or half-written metrics.json.tmp<pid>


def test_a_failed_export_leaves_no_partial_saved_model(tmp_path, monkeypatch, digits):
    import keras

    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    path = str(tmp_path / "saved_model" / "1")

    def dump(obj, handle, **kwargs):  # the metadata file, written after the SavedModel itself: the disk fills up
        handle.write("{")
        raise FULL

    monkeypatch.setattr(export.json, "dump", dump)
    with pytest.raises(OSError):
        export.export(network, path, metadata={"dataset": "digits"})
    assert _files(tmp_path) == []


def test_an_export_on_a_full_disk_keeps_the_trained_epochs_and_the_rerun_finishes(tmp_path, monkeypatch):
    """A full disk at export used to end the trained epochs in a traceback; now one line says what failed and that
    the same command finishes the run, nothing half-written stays, and the rerun finishes without retraining."""
    out = tmp_path / "run"
    config = TrainConfig.from_flags(**VALUES, output_dir=str(out))

    def full_export(*args, **kwargs):
        raise FULL

    monkeypatch.setattr(export, "export", full_export)
    with pytest.raises(RunError) as info:
        experiment.train(config, **QUIET)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message and "rerun" in message
    assert not os.path.exists(runs.metrics_path(str(out)))
    assert os.path.isdir(runs.resume_dir(str(out)))
    assert _partials(str(out)) == []
    monkeypatch.undo()
    lines = []
    metrics = experiment.train(config, log=lines.append)
    assert any("already trained" in line for line in lines)
    assert metrics["final"]["num_examples"] == 50
    assert runs.find_saved_model(str(out)) is not None


@pytest.mark.parametrize("overwrite", [False, True])
def test_too_little_free_space_is_refused_before_anything_is_written_or_removed(tmp_path, monkeypatch, overwrite):
    out = tmp_path / "run"
    if overwrite:
        experiment.train(TrainConfig.from_flags(**VALUES, output_dir=str(out)), **QUIET)
    before = _files(str(out)) if overwrite else None
    usage = experiment.shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(experiment.shutil, "disk_usage", lambda path: usage._replace(free=100_000))
    with pytest.raises(ConfigError) as info:
        experiment.train(TrainConfig.from_flags(**VALUES, output_dir=str(out), overwrite=overwrite), **QUIET)
    assert info.value.flag == "output_dir"
    assert "free" in str(info.value) and "\n" not in str(info.value)
    if overwrite:
        assert _files(str(out)) == before
    else:
        assert not out.exists()


def test_diagnostics_into_an_unwritable_default_plots_dir_are_refused_before_any_attack(tmp_path, monkeypatch,
                                                                                       natural_mlp, digits):
    """The default plots directory (./eval_plots without --output) was not checked: the diagnostics crashed
    after every attack had run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "eval_plots").write_text("a file where the plots directory would go")
    x, y = data.take(digits.test, 20)
    lines = []
    with pytest.raises(EvaluationError) as info:
        evaluation.evaluate_model(natural_mlp, x, y, attacks=["fgsm"], diagnostics=["linearity"], audit=False,
                                  budget=BUDGET, log=lines.append)
    assert "--plots_dir" in str(info.value) and "eval_plots" in str(info.value)
    assert lines == []  # refused in the plan: no attack ran


def test_a_report_that_cannot_be_written_is_one_line_and_leaves_no_temporary_file(tmp_path, monkeypatch,
                                                                                  natural_mlp, digits):
    x, y = data.take(digits.test, 20)
    monkeypatch.setattr(runs, "open", _FullDisk(), raising=False)
    lines = []
    with pytest.raises(EvaluationError) as info:
        evaluation.evaluate_model(natural_mlp, x, y, attacks=["fgsm"], audit=False, output=str(tmp_path / "r.json"),
                                  budget=BUDGET, log=lines.append)
    message = str(info.value)
    assert "--output" in message and "No space left on device" in message and "\n" not in message
    assert "the results are in the log above" in message
    assert any(line.startswith("fgsm:") for line in lines)  # the attack ran and its number was logged
    assert os.listdir(tmp_path) == []
