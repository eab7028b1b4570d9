"""The attack registry (tfadv.evaluation.specs): one entry per family, one name grammar, metadata read by the
runner and the audit; the shared attack parts (tfadv.attacks.ops); evaluate_model and the thin evaluate.py."""

import dataclasses
import json
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT
from tfadv import attacks, evaluation
from tfadv.attacks import ops, rng
from tfadv.evaluation import audit, runner, specs

EPS = {"linf": 0.125, "l2": 0.5, "l1": 3.0}


def _noise(spec, logits_fn, x, y, keys):
    """A toy score-free attack: a random sign perturbation of size eps per pixel, drawn from the example keys."""
    return tf.clip_by_value(x + spec.eps * rng.sign(keys, tf.shape(x)[1:], stream=7), 0.0, 1.0)


@pytest.fixture
def noise_attack(monkeypatch):
    entry = evaluation.register_attack("noise", _noise, kind="score_based", loss="none", default_steps=1,
                                       step_count=False, restarts=False, norms=("linf",))
    monkeypatch.setitem(specs.SUITES, "with_noise", ["noise", "fgsm"])
    yield entry
    evaluation.unregister_attack("noise")


def test_a_registered_attack_runs_in_a_suite_and_the_audit_classifies_it_by_its_metadata(noise_attack, natural_mlp,
                                                                                         digits):
    x, y = digits.test[0][:120], digits.test[1][:120].astype(np.int32)
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    chosen = evaluation.resolve_attacks(None, "with_noise", EPS, log=None)
    assert [s.name for s in chosen] == ["noise", "fgsm"]
    noise = chosen[0]
    assert (noise.kind, noise.category, noise.targeted, noise.min_classes) == ("noise", "score_based", False, 2)
    report = evaluation.evaluate(fn, x, y, chosen, batch_size=50, seed=4)
    entry = report["attacks"]["noise"]
    assert (entry["attack"], entry["kind"], entry["norm"], entry["eps"]) == ("noise", "score_based", "linf", 0.125)
    # the same numbers by hand: the Evaluator's keys are (example index, seed, crc32 of the canonical name)
    keys = rng.example_keys(tf.range(len(y), dtype=tf.int64), 4, zlib.crc32(b"noise") & 0x7FFFFFFF)
    signs = rng.sign(keys, [8, 8, 1], stream=7).numpy()
    adversarial = np.clip(x + 0.125 * signs, 0.0, 1.0)
    clean = np.argmax(fn(x).numpy(), -1) == y
    robust = clean & (np.argmax(fn(adversarial).numpy(), -1) == y)
    assert entry["robust_accuracy"] == float(robust.mean())
    assert entry["attacked"] == int(clean.sum())
    # the audit: score-based by the entry's metadata, so it is the black-box attack and no Square probe is needed
    classes = audit.attack_classes(report)
    assert classes["noise"]["kind"] == "score_based" and classes["noise"]["classified_from"] == audit.FROM_METADATA
    check = audit.check_black_box(report)
    assert check["numbers"]["best_black_box_attack"] == "noise"
    assert check["numbers"]["best_black_box"] == entry["robust_accuracy"]
    assert check["numbers"]["best_white_box_attack"] == "fgsm"
    assert check["classification"]["noise"]["kind"] == "score_based"
    # the grammar applies to it: no step count, no restarts, l-inf only
    for bad in ("noise5", "noise_r2", "noise_l2", "noise_eot3"):
        with pytest.raises(ValueError):
            evaluation.parse_attack(bad, EPS)
    with pytest.raises(ValueError, match="already registered"):
        evaluation.register_attack("noise", _noise, kind="score_based", loss="none", default_steps=1)


def test_an_unregistered_attack_is_unknown_again():
    evaluation.register_attack("noise", _noise, kind="score_based", loss="none", default_steps=1)
    assert evaluation.parse_attack("noise3", EPS).steps == 3
    evaluation.unregister_attack("noise")
    assert "noise" not in evaluation.registered_attacks()
    with pytest.raises(ValueError, match="unknown attack 'noise3'"):
        evaluation.parse_attack("noise3", EPS)
    with pytest.raises(ValueError, match="kind must be one of"):
        evaluation.register_attack("noise", _noise, kind="magic", loss="none")


def test_the_registry_carries_each_familys_metadata():
    built_in = ("fgsm", "pgd", "cw", "dlr", "apgd_ce", "apgd_dlr", "apgd_t", "fab_t", "square", "deepfool", "cwl2")
    assert set(evaluation.registered_attacks()) >= set(built_in)
    # the built-in families' metadata (a family added later has its own, checked by tests/test_attack_families.py)
    entries = {f: e for f, e in evaluation.registered_attacks().items() if f in built_in}
    assert {f for f, e in entries.items() if e.eot} == {"apgd_ce", "apgd_dlr", "apgd_t"}
    assert {f for f, e in entries.items() if e.targeted} == {"apgd_t", "fab_t"}
    assert {f for f, e in entries.items() if e.minimum_norm} == {"deepfool", "fab_t", "cwl2"}
    assert {f for f, e in entries.items() if e.kind == "score_based"} == {"square"}
    assert {f: e.min_classes for f, e in entries.items() if e.min_classes > 2} == {"dlr": 3, "apgd_dlr": 3,
                                                                                  "apgd_t": 4}
    assert entries["cwl2"].norms == ("l2",) and entries["square"].default_steps == 5000


@pytest.mark.parametrize("suite", sorted(specs.SUITES))
def test_every_canonical_name_of_the_suites_round_trips(suite):
    for spec in evaluation.suite_specs(suite, EPS):
        assert spec.name == spec.canonical_name
        again = evaluation.parse_attack(spec.name, EPS)
        assert dataclasses.replace(again, group=spec.group) == spec
        assert again.metadata() == spec.metadata() and runner._salt(again) == runner._salt(spec)


def _described(spec):
    d = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "source"}
    d["has_source"] = spec.source is not None
    d.update(canonical=spec.canonical_name, category=spec.category, targeted=spec.targeted,
             min_classes=spec.min_classes, family=spec.family, metadata=spec.metadata(), salt=runner._salt(spec))
    return json.loads(json.dumps(d))


def name_of(key):
    return key.split("|")[0]


def test_the_registry_parser_gives_the_old_regex_parsers_specs():
    """tests/data/attack_specs_before.json was written by the two-regex parser before the registry: every name
    gives the same spec, canonical name, metadata and salt, and every name it refused is still refused, except
    `cwl2_l2`, which the one grammar now reads as cwl2 (its only norm) instead of refusing."""
    before = json.load(open(os.path.join(ROOT, "tests", "data", "attack_specs_before.json")))
    compared = 0
    for key, want in before.items():
        parts = key.split("|")
        if parts[0] == "autoattack":
            got = [dict(name=s.name, group=s.group, eot_iter=s.eot_iter, kind=s.kind, loss=s.loss, steps=s.steps,
                        norm=s.norm, eps=s.eps, step_size=s.step_size, restarts=s.restarts)
                   for s in evaluation.autoattack_specs(EPS, parts[2], parts[1])]
        elif parts[0] == "with_eot":
            spec = evaluation.with_eot(evaluation.parse_attack(parts[1], EPS), 20)
            got = {"name": spec.name, "eot_iter": spec.eot_iter}
        else:
            name, step = parts
            source = (lambda images: images) if "transfer" in name and step != "nosource" else None
            try:
                got = _described(evaluation.parse_attack(name, EPS, None if step in ("None", "nosource") else
                                                         float(step), source))
            except ValueError as error:
                got = {"error": str(error)}
        if name_of(key) == "cwl2_l2":
            assert "error" in want and got == _described(evaluation.parse_attack("cwl2", EPS))
            continue
        if "error" in want:
            assert "error" in got, key
        else:
            assert got == want, key
        compared += 1
    assert compared >= 140


def test_shared_ops_match_numpy():
    logits = tf.constant([[5.0, 4.0, 1.0, 3.0], [0.0, 1.0, 2.0, 9.0], [-1.0, -3.0, -2.0, -4.0]])
    labels = tf.constant([0, 3, 1])
    z, y = logits.numpy(), labels.numpy()
    others = [np.delete(row, label) for row, label in zip(z, y)]
    np.testing.assert_array_equal(ops.top_wrong_logit(logits, labels).numpy(), [o.max() for o in others])
    assert attacks.most_confusing(logits, labels).numpy().tolist() == [1, 2, 0]
    assert attacks.least_likely(logits, labels).numpy().tolist() == [2, 0, 3]  # never the label (row 3: -3)
    assert ops.top_wrong_classes(logits, labels, 2).numpy().tolist() == [[1, 3], [2, 1], [0, 2]]
    delta = tf.constant(np.random.default_rng(0).normal(size=[3, 4, 4, 2]).astype(np.float32))
    flat = delta.numpy().reshape(3, -1)
    np.testing.assert_allclose(ops.perturbation_norm(delta, "l2").numpy(), np.linalg.norm(flat, axis=1), rtol=1e-6)
    np.testing.assert_allclose(ops.flat_norm(delta, "l1").numpy(), np.abs(flat).sum(1), rtol=1e-6)
    projected = ops.project(delta, 0.5, "l2").numpy().reshape(3, -1)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 0.5, rtol=1e-5)
    assert ops.per_example(tf.constant([1.0, 2.0, 3.0]), delta).shape == (3, 1, 1, 1)
    assert attacks.project is ops.project and attacks.clip_to_box is ops.clip_to_box


def test_evaluate_model_on_a_keras_model_writes_the_report(natural_mlp, digits, tmp_path):
    from tfadv import config, data

    x, y = digits.test[0][:80], digits.test[1][:80]
    budget = config.budget(data.get_spec("digits"), eps=2)
    lines = []
    report = evaluation.evaluate_model(natural_mlp, x, y, ["fgsm", "pgd10_linf"], budget=budget, audit=False,
                                       output_dir=str(tmp_path / "eval"), log=lines.append, seed=2)
    direct = evaluation.evaluate(lambda images: natural_mlp(images, training=False), x, y,
                                 [evaluation.parse_attack(n, {"linf": 0.125}) for n in ("fgsm", "pgd10")], seed=2)
    assert list(report["attacks"]) == ["fgsm", "pgd10"]
    for name in ("fgsm", "pgd10"):
        assert report["attacks"][name]["robust_accuracy"] == direct["attacks"][name]["robust_accuracy"]
    assert report["eps"] == 0.125 and report["budget"]["eps"] == {"levels": 2.0, "fraction": 0.125}
    written = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert written["attacks"]["pgd10"]["robust_accuracy"] == report["attacks"]["pgd10"]["robust_accuracy"]
    assert "pgd10" in (tmp_path / "eval" / "report.md").read_text()
    assert (tmp_path / "eval" / "plots" / "robust_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert any(line.startswith("evaluating") for line in lines)
    with pytest.raises(evaluation.EvaluationError, match="asked for both alone"):
        evaluation.evaluate_model(natural_mlp, x, y, ["apgd_ce"], suite="autoattack", budget=budget)
    with pytest.raises(evaluation.EvaluationError, match="--eot_iter applies to APGD"):
        evaluation.evaluate_model(natural_mlp, x, y, ["fgsm"], budget=budget, eot_iter=4)


def test_the_budget_comes_from_the_models_metadata(digits):
    from tfadv.evaluation import api

    _, recorded = api.evaluation_budget({"dataset": "digits", "budget": {"pixel_max": 16.0,
                                                                         "eps": {"levels": 3.0, "fraction": 0.1875}}})
    assert (recorded.level("eps"), recorded.eps) == (3.0, 0.1875)
    # tfadv.json before levels were recorded: a fraction is never converted back to levels; --eps is asked for
    with pytest.raises(api.EvaluationError, match="--eps: .*0.125 of the pixel range"):
        api.evaluation_budget({"dataset": "digits", "eps": 0.125})
    _, flagged = api.evaluation_budget({"dataset": "digits", "eps": 0.125}, eps=4, eps_l2=8)
    assert (flagged.eps, flagged.radius("l2")) == (0.25, 0.5)
    with pytest.raises(api.EvaluationError, match="--dataset"):
        api.evaluation_budget({})
    with pytest.raises(api.EvaluationError, match="--eps"):
        api.evaluation_budget({"dataset": "digits"})
    with pytest.raises(api.EvaluationError, match="--eps_l2"):
        api.evaluation_budget({"dataset": "digits", "eps": 0.125}, eps=2, eps_l2=-1)


TRAINING_ONLY = ("--ssat_lambda0", "--defense", "--bat_beta", "--lr", "--epochs", "--batch_size", "--model",
                 "--trades_beta", "--step_size")


def test_evaluate_help_lists_no_training_flag():
    from test_cli import run_script

    result = run_script("evaluate.py", "--helpfull")  # absl prints the help and exits with 1
    listed = {line.split(":")[0].strip().replace("--[no]", "--") for line in result.stdout.splitlines()
              if line.strip().startswith("--")}
    assert {"--model_dir", "--suite", "--eps", "--eot_iter", "--dataset", "--attack_step_size"} <= listed
    assert not listed & set(TRAINING_ONLY), listed & set(TRAINING_ONLY)


def test_evaluate_takes_a_training_flagfile_for_a_foreign_saved_model(natural_mlp, tmp_path):
    """A SavedModel without tfadv metadata: refused with one line naming --dataset, and evaluated with the
    dataset and eps of flags/digits.cfg (its training-only flags skipped)."""
    from test_cli import error_lines, run_script

    from tfadv import export

    path = export.export(natural_mlp, str(tmp_path / "foreign"))  # no metadata
    refused = run_script("evaluate.py", f"--model_dir={path}", "--attacks=fgsm", "--noaudit", "--noprogress")
    assert refused.returncode == 2 and len(error_lines(refused)) == 1 and "--dataset" in error_lines(refused)[0]
    output = tmp_path / "eval.json"
    result = run_script("evaluate.py", "--flagfile=flags/digits.cfg", f"--model_dir={path}", "--attacks=fgsm,pgd10",
                        "--num_examples=60", "--noaudit", "--noprogress", f"--output={output}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    assert report["dataset"] == "digits" and report["eps"] == 0.125 and report["budget"]["eps"]["levels"] == 2.0
    assert list(report["attacks"]) == ["fgsm", "pgd10"] and report["num_examples"] == 60
    # a later --eps overrides the flagfile's
    wider = run_script("evaluate.py", "--flagfile=flags/digits.cfg", "--eps=4", f"--model_dir={path}",
                       "--attacks=fgsm", "--num_examples=60", "--noaudit", "--noprogress",
                       f"--output={tmp_path / 'wider.json'}")
    assert wider.returncode == 0, wider.stderr[-3000:]
    assert json.loads((tmp_path / "wider.json").read_text())["eps"] == 0.25
