"""The evaluation protocol: batch-size independence, AutoAttack cascade, class checks, reports."""

import numpy as np
import pytest
import tensorflow as tf

from tfadv import evaluation
from tfadv.attacks import rng

EPS = {"linf": 0.125, "l2": 1.0, "l1": 4.0}


def _fn(network):
    return lambda images: network(images, training=False)  # noqa: E731


def test_keys_are_per_example_and_independent_of_the_batch():
    keys = rng.example_keys(tf.range(100), seed=3, salt=7)
    part = rng.example_keys(tf.range(40, 60), seed=3, salt=7)
    full = rng.uniform(keys, [8, 8, 1], stream=2).numpy()
    np.testing.assert_array_equal(rng.uniform(part, [8, 8, 1], stream=2).numpy(), full[40:60])
    assert 0.0 <= full.min() and full.max() < 1.0
    assert abs(full.mean() - 0.5) < 0.01 and abs(full.var() - 1 / 12) < 0.005
    # different examples and seeds give unrelated numbers (6400 pairs: the sd of a null correlation is 0.0125)
    assert abs(np.corrcoef(full[:-1].ravel(), full[1:].ravel())[0, 1]) < 0.05
    other = rng.uniform(rng.example_keys(tf.range(100), seed=4, salt=7), [8, 8, 1], stream=2).numpy()
    assert abs(np.corrcoef(full.ravel(), other.ravel())[0, 1]) < 0.05
    normal = rng.normal(keys, [64]).numpy()
    assert abs(normal.mean()) < 0.03 and abs(normal.std() - 1) < 0.03
    counts = np.bincount(rng.randint(rng.example_keys(tf.range(7000)), [], 7).numpy(), minlength=7)
    assert counts.min() > 900 and counts.max() < 1100


@pytest.mark.parametrize("names", [["pgd10", "pgd10_l2", "apgd_ce20"], ["pgd5_r3"]])
def test_robust_accuracy_does_not_change_with_batch_size(natural_mlp, digits, names):
    x, y = digits.test[0][:150], digits.test[1][:150]
    specs = [evaluation.parse_attack(n, EPS) for n in names]
    reports = [evaluation.evaluate(_fn(natural_mlp), x, y, specs, batch_size=b) for b in (150, 64, 7)]
    for name in names:
        values = {r["attacks"][name]["robust_accuracy"] for r in reports}
        assert len(values) == 1, (name, values)
    masks = [r["per_example_robust"] for r in reports]
    assert all(np.array_equal(masks[0], m) for m in masks[1:])


def test_apgd_is_at_least_as_strong_as_pgd20_on_a_pgd_at_model(pgd_at_mlp, natural_mlp, digits):
    x, y = digits.test
    specs = [evaluation.parse_attack(n, EPS) for n in ("pgd20", "apgd_ce", "apgd_t")]
    report = evaluation.evaluate(_fn(pgd_at_mlp), x, y, specs)
    natural = evaluation.evaluate(_fn(natural_mlp), x, y, specs[:1])
    acc = {k: v["robust_accuracy"] for k, v in report["attacks"].items()}
    # measured: clean 98.9, PGD-20 75.6, APGD-CE 74.7, APGD-T 73.3; natural MLP under PGD-20 ~ 45
    assert acc["pgd20"] >= natural["attacks"]["pgd20"]["robust_accuracy"] + 0.2  # the fixture is robust
    assert acc["apgd_ce"] <= acc["pgd20"] + 1e-9
    assert acc["apgd_t"] <= acc["pgd20"] + 1e-9


def test_a_cascade_attacks_only_the_points_still_robust(natural_mlp, digits):
    x, y = digits.test[0][:120], digits.test[1][:120]
    import dataclasses
    specs = [dataclasses.replace(evaluation.parse_attack(n, EPS), group="g") for n in ("fgsm", "pgd10", "pgd20")]
    report = evaluation.evaluate(_fn(natural_mlp), x, y, specs)
    attacks = report["attacks"]
    assert attacks["fgsm"]["attacked"] == round(report["clean_accuracy"] * 120)
    assert attacks["pgd10"]["attacked"] == round(attacks["fgsm"]["robust_accuracy"] * 120)
    assert attacks["pgd20"]["attacked"] == round(attacks["pgd10"]["robust_accuracy"] * 120)
    accuracies = [attacks[n]["robust_accuracy"] for n in ("fgsm", "pgd10", "pgd20")]
    assert accuracies == sorted(accuracies, reverse=True)
    assert report["groups"]["g"]["robust_accuracy"] == accuracies[-1] == report["worst_case_accuracy"]
    independent = evaluation.evaluate(_fn(natural_mlp), x, y, [evaluation.parse_attack(n, EPS)
                                                              for n in ("fgsm", "pgd10", "pgd20")])
    assert independent["worst_case_accuracy"] == report["worst_case_accuracy"]
    table = evaluation.format_table(report)
    assert " + pgd20" in table and "g (all)" in table
    markdown = evaluation.format_markdown(report)
    assert "| pgd20 (cumulative, g) |" in markdown


def test_attack_names_and_class_checks():
    specs = evaluation.autoattack_specs(EPS)
    assert [s.name for s in specs] == ["apgd_ce", "apgd_t", "fab_t", "square"]
    assert {s.group for s in specs} == {"autoattack"}
    assert [s.name for s in evaluation.autoattack_specs(EPS, "l2")] == ["apgd_ce_l2", "apgd_t_l2", "fab_t_l2",
                                                                        "square_l2"]
    assert evaluation.parse_attack("square1000", EPS).steps == 1000
    assert evaluation.parse_attack("fab_t", EPS).steps == 100
    cw = evaluation.parse_attack("cwl2", EPS)
    assert (cw.kind, cw.norm, cw.eps, cw.steps, cw.search_steps) == ("cwl2", "l2", 1.0, 1000, 9)
    for bad in ("square_l1", "fab_t_l1", "square100_r2", "cwl2_0"):
        with pytest.raises(ValueError):
            evaluation.parse_attack(bad, EPS)
    with pytest.raises(ValueError, match="4"):
        evaluation.check_classes(specs, 3)
    with pytest.raises(ValueError, match="3"):
        evaluation.check_classes([evaluation.parse_attack("dlr20", EPS)], 2)
    evaluation.check_classes(specs, 4)


@pytest.mark.parametrize("given, canonical", [
    ("pgd20_linf", "pgd20"), ("pgd20_r1", "pgd20"), ("pgd20_linf_r1", "pgd20"), ("pgd50_r5", "pgd50_r5"),
    ("pgd20_l2", "pgd20_l2"), ("fgsm_linf", "fgsm"), ("apgd_ce100", "apgd_ce"), ("apgd_ce50", "apgd_ce50"),
    ("apgd_t100_linf_r1", "apgd_t"), ("square5000", "square"), ("square1000_l2", "square1000_l2"),
    ("fab_t100", "fab_t"), ("deepfool50_linf", "deepfool"), ("cwl2_1000_b9", "cwl2"), ("cwl2_200", "cwl2_200"),
    ("cwl2_1000_b5", "cwl2_b5"), ("cw20_linf", "cw20")])
def test_one_attack_has_one_name(given, canonical):
    spec = evaluation.parse_attack(given, EPS)
    assert spec.name == canonical
    assert spec == evaluation.parse_attack(canonical, EPS)
    assert evaluation.parse_attack(canonical, EPS).name == canonical


def test_equal_attacks_give_equal_numbers_whatever_their_name(natural_mlp, digits):
    """train.py measured `pgd20_linf`, evaluate.py `pgd20`: the same attack with differently salted random
    starts gave different robust accuracies on the same model and examples."""
    x, y = digits.test[0][:300], digits.test[1][:300]
    assert evaluation.canonical_attack_name("pgd", 20, "linf") == "pgd20"
    assert evaluation.canonical_attack_name("pgd", 20, "l2", restarts=3) == "pgd20_l2_r3"
    long, short = (evaluation.parse_attack(n, EPS) for n in ("pgd20_linf", "pgd20"))
    assert long == short
    a = evaluation.evaluate(_fn(natural_mlp), x, y, [long])
    b = evaluation.evaluate(_fn(natural_mlp), x, y, [short])
    assert a["attacks"]["pgd20"]["robust_accuracy"] == b["attacks"]["pgd20"]["robust_accuracy"]
    np.testing.assert_array_equal(a["per_example_robust"], b["per_example_robust"])
    # a spec built by hand under another name draws the same random numbers as the parsed one
    import dataclasses
    renamed = dataclasses.replace(short, name="my_pgd")
    c = evaluation.evaluate(_fn(natural_mlp), x, y, [renamed])
    np.testing.assert_array_equal(c["per_example_robust"], a["per_example_robust"])


def _light_autoattack():
    """AutoAttack-standard's cascade with fewer iterations (the cascade logic is what is tested)."""
    import dataclasses
    return [dataclasses.replace(s, steps={"apgd": 10, "apgd_t": 5, "fab_t": 5, "square": 100}[s.kind])
            for s in evaluation.autoattack_specs(EPS)]


def test_the_autoattack_cascade_runs_every_stage_on_a_remainder_of_one(natural_mlp, digits):
    x_all, y_all = digits.test
    fn = _fn(natural_mlp)
    specs = _light_autoattack()
    # 7 examples: 6 that APGD-CE breaks and 1 it does not (found on the full test set, then checked in place)
    first_stage = evaluation.Evaluator(fn, specs[:1])
    full = first_stage(x_all[:200], y_all[:200])
    robust = np.flatnonzero(full["per_example_robust"])
    broken = np.flatnonzero(~full["per_example_robust"])
    chosen = None
    for candidate in robust:
        indices = np.concatenate([broken[:3], [candidate], broken[3:6]])
        if first_stage(x_all[indices], y_all[indices])["per_example_robust"].sum() == 1:
            chosen = indices
            break
    assert chosen is not None
    x, y = x_all[chosen], y_all[chosen]
    evaluator = evaluation.Evaluator(fn, specs)  # one compiled graph per attack serves every batch size
    reports = {}
    for b in (64, 3, 1):
        evaluator.batch_size = b
        reports[b] = evaluator(x, y)
    reference = reports[64]
    assert reference["attacks"]["apgd_t"]["attacked"] == 1  # exactly one point left after APGD-CE
    for b, report in reports.items():
        for name in ("apgd_ce", "apgd_t", "fab_t", "square"):
            assert name in report["attacks"], (b, name)
            assert report["attacks"][name]["attacked"] == reference["attacks"][name]["attacked"], (b, name)
            assert report["attacks"][name]["robust_accuracy"] == reference["attacks"][name]["robust_accuracy"]
        np.testing.assert_array_equal(report["per_example_robust"], reference["per_example_robust"])


def test_evaluate_script_runs_one_attack_once_whatever_its_spelling(natural_mlp, tmp_path):
    import json

    from test_cli import run_script

    from tfadv import export

    budget = {"pixel_max": 16.0, "eps": {"levels": 2.0, "fraction": 0.125}}
    path = export.export(natural_mlp, str(tmp_path / "model"), {"dataset": "digits", "eps": 0.125, "budget": budget})
    output = tmp_path / "eval.json"
    result = run_script("evaluate.py", f"--model_dir={path}", "--attacks=pgd10,pgd10_linf_r1,fgsm_linf",
                        "--num_examples=30", "--noprogress", "--noaudit", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert list(report["attacks"]) == ["pgd10", "fgsm"]
    assert report["attacks"]["pgd10"]["kind"] == "gradient" and report["attacks"]["pgd10"]["targeted"] is False
    # an attack typed alone that a requested cascade also runs is refused with one line, before any work
    both = run_script("evaluate.py", f"--model_dir={path}", "--attacks=apgd_ce", "--suite=autoattack",
                      "--num_examples=30", "--noprogress", "--noaudit", f"--output={tmp_path / 'both.json'}")
    assert both.returncode == 2 and "error: --attacks: apgd_ce is asked for both alone" in both.stderr
    assert not (tmp_path / "both.json").exists()


def test_labels_the_model_gets_at_chance_are_a_loud_warning(natural_mlp, digits):
    """Labels rolled by one gave 3.3 % clean accuracy and robust numbers with no word: the report now warns that
    the labels may not be the model's; the model's own labels do not."""
    x, y = digits.test[0][:150], digits.test[1][:150]
    budget = EPS
    rolled = evaluation.evaluate_model(natural_mlp, x, (y + 1) % 10, ["fgsm"], budget=budget, audit=False,
                                       progress=False, log=lambda *_: None)
    assert rolled["clean_accuracy"] < 0.15
    assert any("chance level" in w and "labels" in w for w in rolled["warnings"])
    honest = evaluation.evaluate_model(natural_mlp, x, y, ["fgsm"], budget=budget, audit=False, progress=False,
                                       log=lambda *_: None)
    assert "warnings" not in honest


def test_a_model_without_metadata_gets_one_refusal_listing_what_it_needs():
    """A SavedModel exported from the Python API records no dataset and no eps: the refusal names both at once
    (it used to name --dataset, then on the corrected command --eps)."""
    from tfadv.evaluation import pipeline

    with pytest.raises(evaluation.EvaluationError) as info:
        pipeline.budget_of({})
    assert str(info.value).startswith("--dataset:") and "--dataset and --eps" in str(info.value)
    with pytest.raises(evaluation.EvaluationError) as info:
        pipeline.budget_of({}, eps=2.0)  # eps given: only the dataset is missing
    assert "--dataset, or a training --flagfile" in str(info.value) and "--eps (" not in str(info.value)
    spec, budget = pipeline.budget_of({}, "digits", 2.0)  # both given: accepted
    assert spec.name == "digits" and budget.eps == 2.0 / 16
