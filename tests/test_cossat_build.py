"""tfadv.cossat_build.build: the library call is what scripts/build_cossat.py does; bad arguments fail before any
work, naming the flag; the script defines only its own flags."""

import concurrent.futures
import json
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from test_cli import error_lines, run_script
from tfadv import config, cossat, cossat_build, data, runs

SCRIPT_FLAGS = {"ssat", "base", "output_dir", "overwrite", "data_dir", "download", "detector_mode", "min_recall",
                "calibration_balance", "calibration_examples", "calibration_steps", "routing_examples"}
# small enough for a few seconds per build
BUILD = {"calibration_examples": 120, "calibration_steps": 4, "routing_examples": 150}
BUILD_FLAGS = [f"--{name}={value}" for name, value in BUILD.items()]
OUTPUT_FILES = (runs.METRICS_FILE, runs.CALIBRATION_JSON, runs.CALIBRATION_MD, runs.DETECTOR_FILE)


def train_in_parallel(runs_args, timeout=300):
    """Trains several runs with scripts/train.py at once (one process each); asserts they all finished."""
    with concurrent.futures.ThreadPoolExecutor(len(runs_args)) as pool:
        results = list(pool.map(lambda args: run_script("train.py", *args, timeout=timeout), runs_args))
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """Two tiny digits runs (SSAT and PGD-AT, one epoch on 300 examples) and the script's build from them."""
    base = tmp_path_factory.mktemp("cossat_build")
    common = ["--flagfile=flags/digits.cfg", "--epochs=1", "--train_examples=300", "--eval_examples=100",
              "--val_attack_steps=3", "--eval_attack_steps=3"]
    train_in_parallel([[*common, "--defense=ssat", "--ssat_replays=2", f"--output_dir={base / 'ssat'}"],
                       [*common, "--defense=pgd", "--attack_steps=3", f"--output_dir={base / 'pgd'}"]])
    built = run_script("build_cossat.py", f"--ssat={base / 'ssat'}", f"--base={base / 'pgd'}",
                       "--flagfile=flags/digits.cfg", f"--output_dir={base / 'script'}", *BUILD_FLAGS)
    assert built.returncode == 0, built.stderr[-3000:]
    return base, built.stdout


def test_the_library_call_writes_exactly_what_the_script_writes(tiny_runs):
    base, stdout = tiny_runs
    lines = []
    metrics = cossat_build.build(str(base / "ssat"), str(base / "pgd"), str(base / "library"), log=lines.append,
                                 **BUILD)
    for name in OUTPUT_FILES:
        assert (base / "library" / name).read_bytes() == (base / "script" / name).read_bytes(), name
    for name in ("plots/detector_roc.png", "saved_model/1/saved_model.pb"):
        assert (base / "library" / name).exists(), name
    assert metrics == json.loads((base / "library" / runs.METRICS_FILE).read_text())
    # the same progress lines (the last one names the output directory)
    printed = [line for line in stdout.splitlines() if line]
    logged = "\n".join(lines).replace(str(base / "library"), str(base / "script")).splitlines()
    assert [line for line in logged if line] == printed

    # eps from the SSAT run's flags: --eps=2 on 16-level digits, in both units
    assert metrics["eps"] == 2 / 16
    assert metrics["budget"]["eps"] == {"levels": 2.0, "fraction": 2 / 16}
    # the detector is the calibration's chosen DLR threshold, and the routing is DLR(SSAT logits) <= tau
    report = json.loads((base / "library" / runs.CALIBRATION_JSON).read_text())
    tau = metrics["detector"]["thresholds"]["dlr"]
    assert (tau["value"], tau["direction"]) == (report["metrics"]["dlr"]["chosen"]["threshold"],
                                                report["metrics"]["dlr"]["chosen"]["direction"])
    assert (report["num_positive"], report["num_negative"]) == (240, 120)
    x_test, _ = data.take(data.load("digits").test, BUILD["routing_examples"])
    ssat = runs.load_run(str(base / "ssat")).network()
    dlr = cossat.detector_metrics(ssat(x_test, training=False))["dlr"].numpy()
    flagged = dlr <= tau["value"] if tau["direction"] == "le" else dlr >= tau["value"]
    assert metrics["clean_routing"]["routed_to_base"] == pytest.approx(np.mean(flagged), abs=1e-9)
    metadata = json.loads((base / "library" / "saved_model/1/assets.extra/tfadv.json").read_text())
    assert metadata["budget"] == metrics["budget"] and metadata["eps"] == metrics["eps"]


def test_overwrite_replaces_a_previous_build_with_the_same_result(tiny_runs, tmp_path):
    base, _ = tiny_runs
    out = tmp_path / "cossat"
    shutil.copytree(base / "script", out)
    (out / "stale.txt").write_text("from an older build")
    cossat_build.build(str(base / "ssat"), str(base / "pgd"), str(out), overwrite=True, log=lambda line: None,
                       **BUILD)
    assert not (out / "stale.txt").exists()
    for name in OUTPUT_FILES:
        assert (out / name).read_bytes() == (base / "script" / name).read_bytes(), name


def test_calibration_random_starts_are_keyed_on_the_seed(digits):
    import keras

    keras.utils.set_random_seed(0)
    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4)])
    x, y = digits.train[0][:40], digits.train[1][:40] % 4

    def attack(seed):
        return cossat.calibration_examples(network, x, y, 0.125, 3, seed=seed)

    first = attack(0)
    tf.random.uniform([1000])  # TensorFlow's global random state does not matter
    again, other = attack(0), attack(1)
    assert first[0].shape == (80, 4) and first[1].shape == (40, 4)  # CW-PGD + APGD-T per PGD-CE example
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[1], other[1])
    assert not np.array_equal(first[1], network(x).numpy())  # the negatives are attacked inputs' logits


def test_helpfull_lists_only_the_scripts_own_flags():
    result = run_script("build_cossat.py", "--helpfull")  # asking for help is not an error: exit 0
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    section = result.stdout.split("build_cossat.py:")[1].split("\n\n")[0]
    assert set(re.findall(r"^\s+--(?:\[no\])?(\w+):", section, re.MULTILINE)) == SCRIPT_FLAGS
    shown = set(re.findall(r"^\s+--(?:\[no\])?(\w+):", result.stdout, re.MULTILINE))
    training_only = config.flag_names() - SCRIPT_FLAGS - {"flagfile"}
    assert {"defense", "ssat_lambda0", "lr", "eps"} <= training_only
    assert not shown & training_only


@pytest.mark.parametrize("args,flag,hint", [
    (["--min_recall=2"], "--min_recall", "(0, 1]"),
    (["--detector_mode=x"], "--detector_mode", "dlr, vote"),
    (["--eps=4"], "eps", "Unknown"),  # a training flag is not one of this script's flags
])
def test_a_bad_value_exits_2_with_one_line_naming_the_flag(tiny_runs, tmp_path, args, flag, hint):
    base, _ = tiny_runs
    out = tmp_path / "cossat"
    result = run_script("build_cossat.py", f"--ssat={base / 'ssat'}", f"--base={base / 'pgd'}",
                        "--flagfile=flags/digits.cfg", f"--output_dir={out}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result)
    assert len(lines) == 1 and flag in lines[0] and hint in lines[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "calibrating" not in result.stdout
    assert not out.exists()


@pytest.mark.parametrize("arguments,flag", [
    ({"min_recall": 0.0}, "min_recall"),
    ({"min_recall": float("nan")}, "min_recall"),
    ({"detector_mode": "majority"}, "detector_mode"),
    ({"calibration_balance": "weighted"}, "calibration_balance"),
    ({"calibration_examples": 0}, "calibration_examples"),
    ({"calibration_steps": 0}, "calibration_steps"),
    ({"routing_examples": -2}, "routing_examples"),
    ({"ssat_run": ""}, "ssat"),
    ({"ssat_run": "missing"}, "ssat"),
    ({"base_run": "missing"}, "base"),
    ({"output_dir": "a_file"}, "output_dir"),
    ({"output_dir": "ssat"}, "output_dir"),  # a training run is never a build's directory
    ({"output_dir": "script"}, "output_dir"),  # a finished build, without overwrite
])
def test_the_library_refuses_bad_arguments_before_any_work(tiny_runs, tmp_path, arguments, flag):
    base, _ = tiny_runs
    (tmp_path / "a_file").write_text("")
    values = {"ssat_run": str(base / "ssat"), "base_run": str(base / "pgd"), "output_dir": str(tmp_path / "out")}
    for key in ("ssat_run", "base_run", "output_dir"):
        if arguments.get(key):
            name = arguments[key]
            values[key] = str((base if (base / name).exists() else tmp_path) / name)
        elif key in arguments:
            values[key] = arguments[key]
    options = {k: v for k, v in arguments.items() if k not in values}
    before = sorted(p.name for p in tmp_path.iterdir()), (base / "script" / runs.METRICS_FILE).read_bytes()
    lines = []
    with pytest.raises(config.ConfigError) as error:
        cossat_build.build(values["ssat_run"], values["base_run"], values["output_dir"], log=lines.append, **options)
    assert error.value.flag == flag and str(error.value).startswith(f"--{flag}: ")
    assert lines == []  # nothing was calibrated
    assert (sorted(p.name for p in tmp_path.iterdir()), (base / "script" / runs.METRICS_FILE).read_bytes()) == before


def test_base_trained_on_another_dataset_is_refused(tiny_runs, tmp_path):
    base, _ = tiny_runs
    other = tmp_path / "other"
    other.mkdir()
    flags_text = (base / "pgd" / runs.FLAGS_FILE).read_text().replace("--dataset=digits", "--dataset=mnist")
    (other / runs.FLAGS_FILE).write_text(flags_text)
    (other / runs.CHECKPOINTS_DIR).mkdir()
    (other / runs.checkpoint_relpath("final")).write_text("")
    with pytest.raises(config.ConfigError, match="--base: was trained on mnist but --ssat on digits"):
        cossat_build.build(str(base / "ssat"), str(other), str(tmp_path / "out"), log=lambda line: None)
    assert not (tmp_path / "out").exists()
