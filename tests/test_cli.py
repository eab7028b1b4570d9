"""Bad input fails fast: one line naming the flag, exit code 2, nothing written."""

import os

import pytest

import script_server
from helpers import ROOT

from tfadv import experiment
from tfadv.config import ConfigError, TrainConfig


def run_script(script, *args, timeout=300):
    """`python scripts/<script> args` (a CompletedProcess), forked from a server that has imported TensorFlow
    once (tests/script_server.py: the same argv, environment, exit code and output, ~0.1 s instead of ~5 s)."""
    return script_server.run_script(script, *args, timeout=timeout)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("args,flag,hint", [
    (["--defense=magic"], "--defense", "natural, pgd, fgsm_rs, free, trades"),
    (["--model=resnet50"], "--model", "preact_resnet18"),
    (["--eps=-1"], "--eps", "negative"),
    (["--eps=40"], "--eps", "pixel range"),
    (["--step_size=0"], "--step_size", "positive"),
    (["--attack_steps=0"], "--attack_steps", "positive"),
    (["--batch_size=0"], "--batch_size", "positive"),
    (["--val_fraction=1.0"], "--val_fraction", "[0, 1)"),
    (["--dataset=cifar10", "--data_dir=/nonexistent/tfds"], "--data_dir", "not a readable directory"),
    (["--model=wide_resnet", "--wrn_depth=27"], "--model", "6n+4"),
    (["--epochs=abc"], "--epochs", "int"),
    (["--no_such_flag=1"], "no_such_flag", "Unknown"),
])
def test_bad_flags_exit_2_with_one_line_and_write_nothing(tmp_path, args, flag, hint):
    out = tmp_path / "run"
    result = run_script("train.py", "--flagfile=flags/digits.cfg", f"--output_dir={out}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and flag in lines[0] and hint in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_missing_tfds_dataset_is_one_clear_message_and_nothing_is_written(tmp_path):
    out = tmp_path / "run"
    empty = tmp_path / "tfds"
    empty.mkdir()
    result = run_script("train.py", "--flagfile=flags/cifar10.cfg", f"--data_dir={empty}", f"--output_dir={out}",
                        "--epochs=1")
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and "cifar10" in lines[0] and str(empty) in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def _config(tmp_path, **overrides):
    return TrainConfig.from_flags(output_dir=str(tmp_path / "run"), epochs=1).replace(**overrides)


def test_config_validation_names_the_flag(tmp_path):
    cases = {
        "free_replays": {"defense": "free", "free_replays": 0},
        "norm": {"norm": "l7"},
        "attack_bn_mode": {"attack_bn_mode": "frozen"},
        "jit_compile": {"jit_compile": "maybe"},
        "mixed_precision": {"mixed_precision": "int8"},
        "lr": {"lr": 0.0},
        "num_cpu_devices": {"num_cpu_devices": 2},  # without --distribute=mirrored
        "output_dir": {"output_dir": ""},
        "lr_decay_epochs": {"lr_decay_epochs": [0]},
    }
    for flag, overrides in cases.items():
        with pytest.raises(ConfigError) as info:
            _config(tmp_path, **overrides).validate()
        assert info.value.flag == flag


def test_a_finished_run_is_refused_without_overwrite(tmp_path):
    config = _config(tmp_path, defense="natural", epochs=1, eval_examples=50)
    experiment.train(config, log=lambda *_: None)
    metrics = os.path.join(config.runtime.output_dir, "metrics.json")
    stamp = os.path.getmtime(metrics)
    with pytest.raises(experiment.RunError, match="finished run.*--overwrite"):
        experiment.train(config, log=lambda *_: None)
    assert os.path.getmtime(metrics) == stamp
    other = config.replace(lr=0.01)
    os.remove(metrics)  # now it looks interrupted: other flags must not resume it
    with pytest.raises(experiment.RunError, match="different flags"):
        experiment.train(other, log=lambda *_: None)
    experiment.train(other.replace(overwrite=True), log=lambda *_: None)
    assert os.path.exists(metrics)


def test_label_smoothing_flags_are_validated(tmp_path):
    cases = {
        "ls_method": {"defense": "label_smoothing"},
        "squeeze_beta": {"defense": "logit_squeeze"},
        "ls_alpha": {"defense": "label_smoothing", "ls_method": "als", "ls_alpha": 1.5},
        "noise_sigma": {"noise_sigma": 17.0},
        "bls_temperature": {"ls_method": "bls", "ls_alpha": 0.1, "bls_temperature": 0.0},
        "squeeze_reduction": {"squeeze_beta": 1.0, "squeeze_reduction": "max"},
    }
    for flag, overrides in cases.items():
        with pytest.raises(ConfigError) as info:
            _config(tmp_path, **overrides).validate()
        assert info.value.flag == flag, (flag, str(info.value))
    _config(tmp_path, defense="label_smoothing", ls_method="als", ls_alpha=0.1, eps=0.0).validate()


@pytest.mark.parametrize("flagfile", ["flags/cifar10.cfg", "flags/bat_cifar10.cfg"])
def test_bat_on_absent_cifar10_stops_with_the_missing_data_message(tmp_path, flagfile):
    out = tmp_path / "run"
    empty = tmp_path / "tfds"
    empty.mkdir()
    result = run_script("train.py", "--defense=bat", f"--flagfile={flagfile}", f"--data_dir={empty}",
                        f"--output_dir={out}")
    assert result.returncode == 1, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and "cifar10" in lines[0] and "--download" in lines[0]
    assert "Traceback" not in result.stderr and not out.exists()


def test_bat_flags_are_validated(tmp_path):
    cases = {
        "bat_attack": {"defense": "bat", "bat_attack": "pgd"},
        "bat_labels": {"defense": "bat", "bat_labels": "soft"},
        "pgd_labels": {"defense": "trades", "pgd_labels": "bat"},
        "ls_method": {"defense": "bat", "ls_method": "als", "ls_alpha": 0.1},
        "bat_top_k": {"defense": "bat", "bat_top_k": 10},
        "bat_eps_y": {"defense": "bat", "bat_labels": "uniform", "bat_eps_y": 1.0},
    }
    for flag, overrides in cases.items():
        with pytest.raises(ConfigError) as info:
            _config(tmp_path, **overrides).validate()
        assert info.value.flag == flag, (flag, str(info.value))


@pytest.mark.parametrize("script", sorted(name for name in os.listdir(os.path.join(ROOT, "scripts"))
                                          if name.endswith(".py")))
def test_help_exits_0_and_names_the_scripts_flags(script):
    """`--help` is not an error: absl printed the help and exited 1; precision_table.py ignored it and ran the whole
    table; benchmark_torch.py without PyTorch died on its import (Boundary II)."""
    result = run_script(script, "--help", timeout=120)
    assert result.returncode == 0, (script, result.returncode, result.stderr[-500:])
    assert "--" in result.stdout or script in ("precision_table.py", "benchmark_torch.py"), result.stdout[-500:]
    assert len(result.stdout) > 100
