"""Boundary II, in-process: a flag the run will not use is refused when typed (recorded, unused from a flagfile);
a flag typed before a --flagfile that overrides it, and a flagfile that includes itself, is not UTF-8 text or
holds a line that is no flag, is one line and exit code 2; TF_CONFIG without --distribute=multi_worker is
refused; the Python API names its arguments; a run directory being written by another run is refused."""

import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, parse_training_flags
from test_first_run import refusal_of
from tfadv import assembly, data, distribute, experiment, runs, training
from tfadv import config as config_lib
from tfadv.config import ConfigError, TrainConfig

DIGITS = ["--flagfile=flags/digits.cfg", "--output_dir=x"]

# (typed flags, the flag refused): each is accepted and has no effect in the run it belongs to
UNUSED = [
    (["--val_examples=50"], "val_examples"),  # digits.cfg validates on a held-out 0.1 of the training split
    (["--wrn_depth=34"], "wrn_depth"),
    (["--wrn_width=4"], "wrn_width"),
    (["--lr_peak_fraction=0.3"], "lr_peak_fraction"),
    (["--lr_warmup_epochs=2"], "lr_warmup_epochs"),
    (["--lr_schedule=cosine", "--lr_decay_factor=0.5"], "lr_decay_factor"),
    (["--lr_schedule=cyclic", "--lr_decay_epochs=3"], "lr_decay_epochs"),
    (["--weight_decay=0", "--weight_decay_scope=kernels"], "weight_decay_scope"),
    (["--crop_padding=2"], "crop_padding"),  # digits are not cropped
    (["--data_dir=/tmp"], "data_dir"),  # digits ship with tfadv
    (["--download"], "download"),
    (["--bat_gamma=0.1"], "bat_gamma"),  # pgd with hard labels
    (["--bat_beta=5"], "bat_beta"),
    (["--defense=bat", "--bat_eps_y=0.3"], "bat_eps_y"),  # adversarial labels, not uniform
    (["--defense=bat", "--bat_labels=hard", "--bat_top_k=3"], "bat_top_k"),
    (["--ls_alpha=0.1"], "ls_alpha"),  # no --ls_method
    (["--ls_method=als", "--ls_alpha=0.1", "--bls_temperature=0.01"], "bls_temperature"),
    (["--squeeze_reduction=mean_l2"], "squeeze_reduction"),
    (["--kd_temperature=4"], "kd_temperature"),
    (["--kd_weights=0.3,0.6,0.1"], "kd_weights"),
    (["--swa_mode=iswa"], "swa_mode"),
    (["--swa_start_epoch=3"], "swa_start_epoch"),
    (["--swa_bn_data=augmented"], "swa_bn_data"),
    (["--defense=ssat", "--nossat_adaptive", "--ssat_lambda0=0.9"], "ssat_lambda0"),  # constant lambda1
    # typed at the default value: as unused as any other value (they used to pass)
    (["--kd_temperature=2"], "kd_temperature"),
    (["--swa_mode=swa"], "swa_mode"),
    (["--wrn_depth=28"], "wrn_depth"),
    (["--squeeze_reduction=frobenius"], "squeeze_reduction"),
]


@pytest.mark.parametrize("typed,flag", UNUSED, ids=[case[1] for case in UNUSED])
def test_a_typed_flag_the_run_does_not_use_is_refused(typed, flag, tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_training_flags([*DIGITS, *typed]).validate()
    assert info.value.flag == flag and "not used by this run" in str(info.value)
    # the same value from a flagfile (a preset for several settings) is recorded, unused
    preset = tmp_path / "preset.cfg"
    preset.write_text(f"--flagfile={os.path.join(ROOT, 'flags', 'digits.cfg')}\n" + "\n".join(typed) + "\n")
    config = parse_training_flags([f"--flagfile={preset}", "--output_dir=x"]).validate()
    assert f"--{flag}=" in config.to_flagfile() or f"--{flag}\n" in config.to_flagfile()


def test_the_same_flags_are_used_with_the_flag_they_need():
    for typed in (["--val_fraction=0", "--val_examples=50"], ["--model=wide_resnet", "--wrn_depth=16",
                                                               "--wrn_width=1"],
                  ["--lr_schedule=cyclic", "--lr_peak_fraction=0.3"], ["--lr_schedule=cosine", "--lr_warmup_epochs=2"],
                  ["--augmentation=crop", "--crop_padding=2"], ["--pgd_labels=bat", "--bat_gamma=0.1"],
                  ["--defense=bat", "--bat_labels=uniform", "--bat_eps_y=0.3"], ["--ls_method=bls", "--ls_alpha=0.1",
                                                                                  "--bls_temperature=0.01"],
                  ["--squeeze_beta=0.1", "--squeeze_reduction=mean_l2"], ["--swa", "--swa_mode=iswa"],
                  ["--defense=ssat", "--ssat_lambda0=0.9"]):
        parse_training_flags([*DIGITS, *typed]).validate()
    parse_training_flags(["--flagfile=flags/cifar10.cfg", "--val_fraction=0.1", "--output_dir=x"]).validate()


def test_the_python_api_refuses_val_examples_with_a_held_out_split():
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_flags(defense="natural", val_examples=50, output_dir="x").validate()
    assert info.value.flag == "val_examples" and "--val_fraction=0" in str(info.value)
    TrainConfig.from_flags(defense="natural", val_examples=50, val_fraction=0.0, output_dir="x").validate()


# ---------------------------------------------------------------------------------------------------------------
# flagfiles


def test_circular_and_undecodable_flagfiles_are_one_line(tmp_path, capsys, training_flags):
    itself = tmp_path / "itself.cfg"
    itself.write_text(f"--lr=0.1\n--flagfile={itself}\n")
    first, second = tmp_path / "first.cfg", tmp_path / "second.cfg"
    first.write_text(f"--epochs=2\n--flagfile={second}\n")
    second.write_text(f"--flagfile={first}\n")
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"\xff\xfe\x00\x01--lr=0.1\n")
    latin1 = tmp_path / "latin1.cfg"
    latin1.write_bytes("# r\xe9glages\n--lr=0.1\n".encode("latin-1"))
    garbage = tmp_path / "garbage.cfg"
    garbage.write_text("--lr=0.1\nlr 0.2\n")
    assert refusal_of(capsys, [f"--flagfile={itself}"], training_flags) == (
        f"error: --flagfile: {itself} includes itself ({itself} -> {itself}); absl would ignore it")
    assert refusal_of(capsys, [f"--flagfile={first}"], training_flags) == (
        f"error: --flagfile: {first} includes itself ({first} -> {second} -> {first}); absl would ignore it")
    assert refusal_of(capsys, [f"--flagfile={binary}"], training_flags) == (
        f"error: --flagfile: {binary} is not a text flagfile (not UTF-8: byte 0xff at offset 0)")
    assert refusal_of(capsys, [f"--flagfile={latin1}"], training_flags).startswith(
        f"error: --flagfile: {latin1} is not a text flagfile")
    assert refusal_of(capsys, [f"--flagfile={garbage}"], training_flags) == (
        f"error: --flagfile: {garbage}:2: not a flag line: 'lr 0.2' (one --name=value per line; comments start "
        "with #)")
    assert refusal_of(capsys, [f"--flagfile={tmp_path / 'missing.cfg'}"], training_flags).startswith(
        f"error: --flagfile: cannot read {tmp_path / 'missing.cfg'}: No such file")
    # the same file twice side by side is no cycle (absl reads it twice)
    shared = tmp_path / "shared.cfg"
    shared.write_text("--lr=0.2\n")
    twice = tmp_path / "twice.cfg"
    twice.write_text(f"# comment\n\n// another\n--flagfile={shared}\n--flagfile={shared}\n-epochs=3\n")
    assert refusal_of(capsys, [f"--flagfile={twice}"], training_flags) is None
    assert config_lib.read_flag_values(str(twice)) == {"lr": "0.2", "epochs": "3"}


def test_train_and_evaluate_refuse_a_bad_flagfile_through_their_parsers(tmp_path):
    """The scripts' parsers (train.py: `cli.parse_flags_or_exit`; evaluate.py and build_cossat.py:
    `cli.training_flagfile_parser`) refuse before absl reads the file: absl warned "Ignoring" a circular one and
    trained, crashed with a UnicodeDecodeError on a binary one, and evaluate.py skipped a garbage line."""
    from test_cli import error_lines, run_script

    itself = tmp_path / "itself.cfg"
    itself.write_text(f"--flagfile={itself}\n")
    garbage = tmp_path / "garbage.cfg"
    garbage.write_text("--dataset=digits\neps 3\n")
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    out = tmp_path / "out"
    for script, flagfile in (("train.py", itself), ("train.py", binary), ("evaluate.py", garbage),
                             ("evaluate.py", itself), ("build_cossat.py", binary)):
        result = run_script(script, f"--flagfile={flagfile}", f"--output_dir={out}")
        assert result.returncode == 2, (script, flagfile, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and len(error_lines(result)) == 1, result.stderr[-2000:]
        assert error_lines(result)[0].startswith(f"error: --flagfile: {flagfile}"), result.stderr[-2000:]
        assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------
# TF_CONFIG


@pytest.mark.parametrize("mode", ["none", "mirrored"])
def test_tf_config_without_multi_worker_is_refused(monkeypatch, mode):
    monkeypatch.setenv(distribute.TF_CONFIG, '{"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, '
                                             '"task": {"type": "worker", "index": 1}}')
    with pytest.raises(ConfigError) as info:  # the environment is assembly's to read, before anything is written
        assembly.check(TrainConfig.from_flags(distribute=mode, output_dir="x").validate())
    assert info.value.flag == "distribute" and "TF_CONFIG" in str(info.value)
    assert "--distribute=multi_worker" in str(info.value)
    assembly.check(TrainConfig.from_flags(distribute="multi_worker", output_dir="x").validate())
    monkeypatch.setenv(distribute.TF_CONFIG, "")
    assembly.check(TrainConfig.from_flags(distribute=mode, output_dir="x").validate())


# ---------------------------------------------------------------------------------------------------------------
# the Python API names its arguments


def test_training_make_names_the_argument_and_the_known_methods():
    import keras

    with pytest.raises(ValueError) as info:
        training.make("foo", None, training.AttackConfig(0.1, 0.025, 2))
    assert str(info.value).startswith("name: unknown training method 'foo'; registered: natural, pgd")
    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError) as info:
        training.make("free", network, training.AttackConfig(0.1, 0.025, 2), replays=0)
    assert str(info.value).startswith("replays: ") and "--free" not in str(info.value)


def test_data_take_refuses_a_count_that_is_no_count():
    arrays = (np.zeros((5, 2)), np.arange(5))
    for bad in (-5, 0, -2, 2.5):
        with pytest.raises(ValueError, match=r"^num_examples: must be a positive number of examples or -1"):
            data.take(arrays, bad)
    assert len(data.take(arrays, -1)[1]) == 5 and len(data.take(arrays, None)[1]) == 5
    assert list(data.take(arrays, np.int64(2))[1]) == [0, 1]
    with pytest.raises(ValueError, match=r"^val_fraction: must be in \[0, 1\)"):
        data.split_validation(arrays, 1.5)


# ---------------------------------------------------------------------------------------------------------------
# a run directory being written


def _live_pid():
    return os.getppid()  # the test runner's parent: alive for the whole test


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_run_lock_is_exclusive_replaces_a_stale_lock_and_is_removed_on_exit(tmp_path):
    run = tmp_path / "run"
    with runs.run_lock(str(run)) as path:
        assert open(path).read().split()[0] == str(os.getpid())
        with pytest.raises(runs.RunLocked, match=f"--output_dir={run} is being written by another training run"):
            with runs.run_lock(str(run)):
                pass
    assert not run.exists()  # created for the lock, nothing else written: removed
    run.mkdir()
    (run / runs.LOCK_FILE).write_text(f"{_dead_pid()} {os.uname().nodename}\n")
    with runs.run_lock(str(run)):
        pass
    assert os.listdir(run) == []


def test_a_second_training_into_a_directory_being_written_is_refused_and_touches_nothing(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.FLAGS_FILE).write_text("--defense=natural\n")
    (run / runs.LOCK_FILE).write_text(f"{_live_pid()} {os.uname().nodename}\n")
    before = {name: (run / name).read_text() for name in os.listdir(run)}
    config = TrainConfig.from_flags(dataset="digits", model="linear", defense="natural", epochs=1,
                                    output_dir=str(run), overwrite=True)
    with pytest.raises(experiment.RunError) as info:
        experiment.train(config, log=lambda *_: None)
    assert f"PID {_live_pid()}" in str(info.value) and "another training run" in str(info.value)
    assert {name: (run / name).read_text() for name in os.listdir(run)} == before


def test_a_non_chief_worker_does_not_take_the_chiefs_lock_for_another_run(tmp_path, monkeypatch):
    """Every worker of a multi-worker job runs the same command into the same --output_dir; only the chief writes
    it and holds its lock (the others write temporary directories). A slow worker that checks the directory after
    the chief took the lock must not be refused: that killed the whole job under load."""
    run = tmp_path / "run"
    run.mkdir()
    (run / runs.LOCK_FILE).write_text(f"{_live_pid()} {os.uname().nodename}\n")  # the chief, already running
    two = distribute.local_cluster(2)
    config = TrainConfig.from_flags(dataset="digits", model="linear", defense="natural", epochs=1,
                                    distribute="multi_worker", output_dir=str(run))
    monkeypatch.setenv(distribute.TF_CONFIG, two[1])  # worker 1: not the chief
    experiment._check_output_dir(config)
    monkeypatch.setenv(distribute.TF_CONFIG, two[0])  # a second chief into a locked directory is refused
    with pytest.raises(experiment.RunError, match="another training run"):
        experiment._check_output_dir(config)
