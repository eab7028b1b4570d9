"""Sharded evaluation (tfadv.evaluation.shards, evaluate.py --shard=i/n, scripts/merge_reports.py).

Shards 0/3, 1/3 and 2/3 of 90 digits test examples, merged, give exactly the report of one run over the 90:
every per-attack robust accuracy (randomised attacks: PGD from a random start, APGD, Square, FAB), the
AutoAttack-style cascade, the worst case per norm and over all norms, the attacked counts. This holds only
because each example draws its random numbers by its index in the whole set (shown: a shard keyed by its own
positions gives other adversarial examples). Shards of different evaluations, overlapping or missing shards and
bad --shard values are refused with one line and exit code 2.
"""

import copy
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_dense_network
from script_server import run_script
from tfadv import evaluation
from tfadv.attacks import rng
from tfadv.evaluation import api, runner, shards

BUDGET = {"linf": 0.125, "l2": 1.0, "l1": 4.0}
COUNT = 90
TIMING = ("seconds", "images_per_second")


def _suite():
    """PGD from a random start (l-inf and l2), a plain Square and a short AutoAttack-style cascade (APGD-CE,
    APGD-DLR, Square, each on the points the earlier ones left robust): randomised attacks, two norms, one
    cascade. (APGD-T and FAB-T take 10-20 s each to trace on 2 cores; the merge does not look at what an attack
    is, and tests/test_attack_batches.py shows that their keys, like every attack's, are per example.)"""
    plain = [evaluation.parse_attack(n, BUDGET) for n in ("pgd5", "pgd5_l2", "square20")]
    cascade = [dataclasses.replace(evaluation.parse_attack(n, BUDGET), group="autoattack")
               for n in ("apgd_ce8", "apgd_dlr8", "square30")]
    return plain + cascade


@pytest.fixture(scope="module")
def setting(digits):
    net = small_dense_network(digits, seed=2)
    x, y = digits.test[0][:COUNT], digits.test[1][:COUNT].astype(np.int32)
    return net, x, y


@pytest.fixture(scope="module")
def runs(setting, tmp_path_factory):
    """(the single run's report, the three shard reports as read back from their JSON files, their paths, the
    Evaluator). One Evaluator serves all four runs, so each attack is traced once (APGD-T and FAB-T take
    seconds to trace, milliseconds to run here)."""
    net, x, y = setting
    evaluator = evaluation.Evaluator(lambda images: net(images, training=False), _suite(), batch_size=16, seed=7)
    single = evaluator(x, y)
    single.pop("per_example_robust")
    single.pop("per_example_correct")
    directory = tmp_path_factory.mktemp("shards")
    paths = [str(directory / f"shard{i}.json") for i in range(3)]
    for i, path in enumerate(paths):
        with open(path, "w") as handle:
            json.dump(shards.evaluate_shard(evaluator, x, y, f"{i}/3", model="tiny"), handle)
    return single, [json.loads(open(p).read()) for p in paths], paths, evaluator


def _without_timing(report):
    report = copy.deepcopy(report)
    report.pop(shards.MERGED_KEY, None)
    for entry in report["attacks"].values():
        for key in TIMING:
            entry.pop(key)
    for entry in report.get("groups", {}).values():
        entry.pop("seconds")
    return report


def test_merged_shards_equal_the_single_run(runs):
    single, parts, paths, _ = runs
    assert [p["shard"]["start"] for p in parts] == [0, 30, 60] and [p["num_examples"] for p in parts] == [30] * 3
    merged = shards.merge_reports(parts[::-1], paths[::-1])  # any order
    assert _without_timing(merged) == _without_timing(single)
    assert list(merged) == list(single) + [shards.MERGED_KEY]  # the same fields, in the same order
    assert merged[shards.MERGED_KEY] == {"count": 3, "reports": paths}
    # the numbers behind the equality: not trivial (some attacks break some points, the cascade breaks more)
    accuracies = {n: e["robust_accuracy"] for n, e in single["attacks"].items()}
    assert 0 < single["worst_case_accuracy"] < single["clean_accuracy"]
    assert accuracies["square30"] == single["groups"]["autoattack"]["robust_accuracy"] < accuracies["apgd_ce8"]
    assert set(single["worst_case_by_norm"]) == {"linf", "l2"}
    # each shard's own numbers are its examples' numbers, and the merged count is the sum of the shards'
    for name in single["attacks"]:
        bits = "".join(p["per_example"]["attacks"][name] for p in parts)
        assert single["attacks"][name]["robust_accuracy"] == float(np.mean([b == "1" for b in bits]))
        assert single["attacks"][name]["attacked"] == sum(p["attacks"][name]["attacked"] for p in parts)
        assert merged["attacks"][name]["seconds"] == pytest.approx(sum(p["attacks"][name]["seconds"] for p in parts),
                                                                   abs=2e-3)


def test_a_shard_draws_the_random_numbers_of_its_global_indices(setting, runs):
    """Shard 1 is examples 30..59 attacked with the keys of indices 30..59 (not its own positions 0..29)."""
    net, x, y = setting
    _, parts, _, evaluator = runs
    keyed_globally = evaluator(x[30:60], y[30:60], index_offset=30)
    for name, mask in keyed_globally["per_example_correct"]["attacks"].items():
        assert shards._bits(mask) == parts[1]["per_example"]["attacks"][name]
    spec = evaluation.parse_attack("pgd5", BUDGET)
    salt = runner._salt(spec)
    starts = {offset: rng.uniform(rng.example_keys(tf.range(30, dtype=tf.int64) + offset, 7, salt), [8, 8, 1]).numpy()
              for offset in (0, 30)}
    whole = rng.uniform(rng.example_keys(tf.range(COUNT, dtype=tf.int64), 7, salt), [8, 8, 1]).numpy()
    np.testing.assert_array_equal(starts[30], whole[30:60])
    assert not np.array_equal(starts[0], whole[30:60])


def test_the_merge_refuses_shards_of_different_evaluations(runs):
    _, parts, _, _ = runs

    def refused(reports, *expected):
        with pytest.raises(api.EvaluationError) as error:
            shards.merge_reports(reports, [f"r{i}.json" for i in range(len(reports))])
        message = str(error.value)
        assert all(e in message for e in expected), message
        assert "\n" not in message

    def changed(index, edit):
        reports = copy.deepcopy(parts)
        edit(reports[index])
        return reports

    refused(changed(1, lambda r: r.update(seed=8)), "differ in seed")
    refused(changed(2, lambda r: r.update(eps=0.25)), "differ in eps")
    refused(changed(2, lambda r: r["attacks"]["pgd5"].update(steps=6)), "differ in the attacks")
    refused(changed(1, lambda r: r["attacks"].pop("square20")), "differ in the attacks")
    refused(changed(1, lambda r: r["shard"].update(model="other")), "differ in shard.model")
    refused(changed(1, lambda r: r["shard"].update(examples_sha256="0" * 64)), "shard.examples_sha256")
    refused(changed(1, lambda r: r["shard"].update(jit_compile=True)), "shard.jit_compile")
    refused([parts[0], parts[1], parts[1]], "both shard 1/3", "overlapping")
    refused(parts[:2], "missing shards 2/3")
    refused([{k: v for k, v in parts[0].items() if k != "shard"}, parts[1], parts[2]], "r0.json: not a shard report")
    refused(changed(0, lambda r: r.update(audit={})), "r0.json: has audit")
    refused(changed(0, lambda r: r["per_example"].update(clean="01")), "r0.json clean")
    refused([], "no shard reports")


def test_evaluate_model_shards_merge_into_its_single_run(setting, tmp_path):
    """The library call behind evaluate.py: shards 0/2 and 1/2 of 40 examples (written with --output) merge
    into the single run's report, budget and report fields included; no audit runs under a shard."""
    net, x, y = setting
    kwargs = dict(budget=BUDGET, seed=7, batch_size=16, log=None, model_name="tiny", report_fields={"dataset": "d"})
    attacks = ["pgd5", "square20"]
    single = evaluation.evaluate_model(net, x[:40], y[:40], attacks, audit=False, **kwargs)
    paths = [str(tmp_path / f"{i}.json") for i in range(2)]
    lines = []
    for i, path in enumerate(paths):
        evaluation.evaluate_model(net, x[:40], y[:40], attacks, shard=(i, 2), output=path,
                                  **{**kwargs, "log": lines.append})
    parts = shards.load_reports(paths)
    assert [p["shard"]["start"] for p in parts] == [0, 20] and "audit" not in parts[0]
    assert any("no gradient-masking audit" in line for line in lines)
    assert _without_timing(shards.merge_reports(parts, paths)) == _without_timing(single)


def test_unmergeable_parts_are_refused_under_a_shard(setting):
    net, x, y = setting
    for kwargs, flag in (({"audit": True}, "--audit"), ({"diagnostics": ["eps_l"]}, "--diagnostics"),
                         ({"cossat_protocol": "white_box"}, "--cossat_protocol")):
        with pytest.raises(api.EvaluationError, match=f"^{flag}: .*cannot be merged from shards"):
            evaluation.evaluate_model(net, x, y, ["fgsm"], budget=BUDGET, log=None, shard="0/2", **kwargs)
    with pytest.raises(api.EvaluationError, match="^--shard: 3 shards need at least 3 examples, but --examples "
                                                  "gives 2"):
        evaluation.evaluate_model(net, x[:2], y[:2], ["fgsm"], budget=BUDGET, log=None, shard="1/3")


def test_evaluate_refuses_a_bad_shard_before_loading_the_model(tmp_path):
    """Through scripts/evaluate.py: the model directory holds an empty saved_model.pb, so any refusal after
    loading it would be another error."""
    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "saved_model.pb").write_bytes(b"")
    cases = [("0/0", [], "--shard: the number of shards must be at least 1"),
             ("3/3", [], "--shard: the shard index must be in 0..2"),
             ("-1/2", [], "--shard: the shard index must be in 0..1"),
             ("a/b", [], "--shard: expected i/n"),
             ("1/2", ["--num_examples=1"], "--shard: 2 shards need at least 2 examples, but --num_examples gives 1"),
             ("0/2", ["--audit"], "--audit: the gradient-masking audit cannot be merged from shards"),
             ("0/2", ["--diagnostics=eps_l"], "--diagnostics: eps_l cannot be merged from shards")]
    for shard, extra, expected in cases:
        result = run_script("evaluate.py", f"--model_dir={fake}", f"--shard={shard}", "--noprogress",
                            f"--output={tmp_path / 'r.json'}", *extra)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {expected}"), \
            (shard, extra, result.stderr)
    assert not (tmp_path / "r.json").exists()


def test_merge_reports_script_merges_and_refuses(runs, tmp_path):
    """scripts/merge_reports.py: all three shards -> the merged report (as JSON, with report.md); two of three
    -> one line naming the missing shard, exit code 2, nothing written."""
    single, parts, paths, _ = runs
    merged, refused = tmp_path / "all.json", tmp_path / "none.json"
    ok = run_script("merge_reports.py", *paths, f"--output={merged}", f"--output_dir={tmp_path / 'all'}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    rejected = run_script("merge_reports.py", *paths[:2], f"--output={refused}")
    code, stderr = rejected.returncode, rejected.stderr
    assert _without_timing(json.loads(merged.read_text())) == _without_timing(single)
    assert (tmp_path / "all" / "report.md").exists()
    assert code == 2 and stderr.strip().splitlines() == ["error: missing shards 2/3 (got 2 of 3)"]
    assert not refused.exists()
