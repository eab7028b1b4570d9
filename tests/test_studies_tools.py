"""The measuring tools' library code (tfadv/studies): the training-step benchmark's rows and cost limits, the
precision table's runs, AutoAttack's timing dispatch, the fading-Gaussian script's checks, and
benchmark_torch.py's one-line refusal without PyTorch."""

import importlib.util
import os
import re
import subprocess
import sys
import types

import pytest

from helpers import ROOT
from tfadv.errors import UsageError
from tfadv.studies import autoattack_timing, benchmark, fading, precision


def test_benchmark_limits_are_the_arithmetic_cost_model():
    assert benchmark.limit("natural") == 1.0 and benchmark.limit("bat") == 2.0
    assert benchmark.limit("pgd7") == pytest.approx(17 / 3)  # (2k + 3) / 3
    assert benchmark.limit("trades10") == pytest.approx(27 / 3)  # (2k + 7) / 3
    assert benchmark.limit("ssat") is None  # no cost model: the table prints "-"
    assert benchmark.limit("pgd") == benchmark.limit("pgd10")  # no step count: the run's default, 10 (it crashed)


def test_benchmark_refuses_a_method_it_cannot_time_before_timing_any():
    bench = benchmark.Benchmark()
    bench.check(["natural", "pgd", "trades3", "free", "ssat"])
    with pytest.raises(UsageError, match=r"^--methods: 'pgdd': unknown value 'pgdd'; valid: natural, pgd"):
        bench.check(["pgd7", "pgdd"])


def test_benchmark_rows_are_run_configs_at_eps_8_of_255():
    bench = benchmark.Benchmark(batch_size=32, free_replays=3)
    pgd = bench.run_config("pgd7")
    assert pgd.flat()["defense"] == "pgd" and pgd.flat()["attack_steps"] == 7 and pgd.flat()["batch_size"] == 32
    assert pgd.budget().eps == pytest.approx(8 / 255)
    assert bench.run_config("free").updates_per_batch() == 3  # timed per replay
    assert bench.network_name() == "preact_resnet18"
    assert benchmark.Benchmark(model="wide_resnet", wrn_depth=16, wrn_width=2).network_name() == "wide_resnet-16-2"


@pytest.mark.parametrize("method, step_levels", [("natural", None), ("pgd7", 2.0), ("trades10", 2.0),
                                                  ("fgsm_rs", 10.0), ("free", 8.0), ("bat", None), ("ssat", None)])
def test_every_benchmark_row_is_a_config_the_run_accepts_with_its_method_step(method, step_levels):
    """Each row is a run users could start (no flag the method does not read: --step_size with FGSM-RS was silently
    unused, with natural, BAT or SSAT it is refused) and steps as its method's source says (Wong: 1.25 eps = 10/255;
    Shafahi: eps)."""
    config = benchmark.Benchmark().run_config(method)
    config.validate()
    if step_levels is not None:
        assert config.budget().level("step_size") == pytest.approx(step_levels)


def test_benchmark_row_and_its_line():
    bench = benchmark.Benchmark(batch_size=100)
    row = bench.row("pgd10", 0.5, 0.1, "float32")
    assert row == {"seconds_per_step": 0.5, "images_per_second": 200.0, "ratio": 5.0, "limit": pytest.approx(7.667),
                   "precision": "float32"}
    line = benchmark.format_row("pgd10", 0.5, row)
    assert line.split() == ["pgd10", "0.500", "200.0", "5.00", "7.67", "0.65"]
    assert benchmark.format_row("ssat", 0.5, bench.row("ssat", 0.5, 0.1, "float32")).split()[-2:] == ["-", "-"]


def test_precision_run_reports_the_loss_scale_and_skipped_updates(digits):
    x, y = digits.train
    x, y = x.astype("float32"), y.astype("int32")
    loss, weights, scale = precision.run("natural", False, x, y, 2, "mixed_float16")
    assert scale == (2.0 ** 15, 0)  # Keras' initial scale, no overflow in 2 updates
    assert loss > 0 and len(weights) == len(precision.network().weights)
    _, _, none = precision.run("free", False, x, y, 1)
    assert none is None  # float32: no loss scale


def test_autoattack_timing_dispatches_each_family_with_compaction(monkeypatch):
    from tfadv import attacks
    from tfadv.attacks import fab, square

    calls = []

    def recorder(name, result):
        def attack(*args, **kwargs):
            calls.append((name, kwargs))
            return result
        return attack

    monkeypatch.setattr(attacks, "apgd", recorder("apgd", "x_ce"))
    monkeypatch.setattr(attacks, "apgd_targeted", recorder("apgd_t", "x_t"))
    monkeypatch.setattr(square, "square", recorder("square", "x_square"))
    spec = types.SimpleNamespace(family="apgd_t", eps=0.1, norm="linf", steps=7)
    assert autoattack_timing.attack_fn(spec, "fn", True)("x", "y", "k") == "x_t"
    assert calls[-1] == ("apgd_t", dict(eps=0.1, norm="linf", steps=7, keys="k", compact=True))
    spec.family = "apgd_ce"
    assert autoattack_timing.attack_fn(spec, "fn", False)("x", "y", "k") == "x_ce"
    spec.family = "square"
    assert autoattack_timing.attack_fn(spec, "fn", False)("x", "y", "k") == "x_square"
    assert calls[-1] == ("square", dict(eps=0.1, norm="linf", queries=7, keys="k", compact=False))
    monkeypatch.setattr(fab, "fab_targeted", recorder("fab_t", ("x_adv", "distances")))
    from tfadv.evaluation import specs

    monkeypatch.setattr(specs, "at_budget", lambda x, x_adv, distances, eps: (x_adv, eps))
    spec.family = "fab_t"
    assert autoattack_timing.attack_fn(spec, "fn", True)("x", "y", "k") == ("x_adv", 0.1)
    assert calls[-1][1]["stop_within"] == 0.1  # compacted FAB stops once within the budget
    autoattack_timing.attack_fn(spec, "fn", False)("x", "y", "k")
    assert calls[-1][1]["stop_within"] is None


OPTIONS = dict(d=10, num_train=100, num_test=100, eps_max=0.6, num_eps=5, steps=10, learning_rate=0.05,
               optimizer="adam", seed=0)


@pytest.mark.parametrize("alphas, message", [(["0.5"], "--alphas: each ALS mass must be in [0, 0.5)"),
                                             (["a"], "--alphas: expected comma-separated numbers, got a"),
                                             ([], "--alphas: each ALS mass must be in [0, 0.5), got nothing")])
def test_fading_refuses_bad_alphas(alphas, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        fading.parse_alphas(alphas)
    assert fading.parse_alphas(["0", "0.1"]) == [0.0, 0.1]


@pytest.mark.parametrize("name, value, message", [("d", 0, "--d: must be at least 1, got 0"),
                                                  ("num_eps", 1, "--num_eps: must be at least 2"),
                                                  ("eps_max", 0.0, "--eps_max: must be positive"),
                                                  ("learning_rate", -1.0, "--learning_rate: must be positive"),
                                                  ("optimizer", "rms", "--optimizer: must be one of adam, sgd")])
def test_fading_refuses_bad_options(name, value, message):
    with pytest.raises(UsageError, match=message):
        fading.check_options({**OPTIONS, name: value})
    fading.check_options(OPTIONS)


def test_fading_refuses_to_replace_results_without_overwrite(tmp_path):
    (tmp_path / "fading_gaussian.json").write_text("{}")
    with pytest.raises(UsageError, match="already holds fading_gaussian.json; pass --overwrite"):
        fading.write(str(tmp_path), False, ["0.1"], **OPTIONS)
    assert (tmp_path / "fading_gaussian.json").read_text() == "{}"


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed")
def test_benchmark_torch_names_its_missing_dependency_in_one_line():
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_torch.py"), "--steps=1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("error: benchmark_torch.py needs PyTorch, which tfadv does not install: "
                           "pip install torch==2.13.0\n")


def test_eval_batch_measures_each_attack_alone_and_the_accuracy_does_not_depend_on_the_batch_size(natural_mlp,
                                                                                                   tmp_path):
    """scripts/bench_eval_batch.py's library: every attack x batch size x XLA mode is one row, through the
    Evaluator; the per-example keys make robust accuracy independent of the batch size (FGSM and Square's keyed
    proposals alike). XLA may move an example whose gradient sign is a rounding away from zero (docs/scaling.md),
    so across XLA modes the table marks, in brackets, exactly the configurations that differ."""
    from tfadv import export
    from tfadv.studies import eval_batch

    path = export.export(natural_mlp, str(tmp_path / "saved_model" / "1"),
                         metadata={"dataset": "digits", "eps_levels": 2.0})
    rows = eval_batch.measure(str(tmp_path), None, 40, ["fgsm", "square20"], [7, 40], (False, True), log=None)
    assert os.path.isdir(path) and len(rows) == 2 * 2 * 2
    assert {(r["attack"], r["batch_size"], r["jit"]) for r in rows} == {
        (a, b, j) for a in ("fgsm", "square20") for b in (7, 40) for j in (False, True)}
    for attack in ("fgsm", "square20"):
        for jit in (False, True):
            same = [r for r in rows if (r["attack"], r["jit"]) == (attack, jit)]
            assert len({r["robust_accuracy"] for r in same}) == 1, same
            assert all(r["attacked"] > 0 and r["seconds"] >= 0 for r in same)
    table = eval_batch.markdown(rows, "digits MLP")
    assert "| fgsm | off |" in table and "| square20 | on |" in table and "batch 7" in table
    first = {a: next(r["robust_accuracy"] for r in rows if r["attack"] == a) for a in ("fgsm", "square20")}
    differing = sum(r["robust_accuracy"] != first[r["attack"]] for r in rows)
    assert len(re.findall(r"\(robust \d", table)) == differing
