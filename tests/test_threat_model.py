"""The runner enforces the threat model (issue 23, item 3): every attack's output is checked per example against
its spec's ε-ball, the [0, 1] box and finiteness; an invalid output does not break its example (the clean
prediction stands) and the report counts it by reason and warns, in the log and in report.json / report.md.
Each attack records its max perturbation (in its norm; in pixel levels with a Budget), shard merges sum the
counts and take the max of the maxima, the Co-SSAT protocols apply the same check, and
`save_adversarial` keeps each attack's images, example indices and verdicts in an .npz.

The toy attacks are FGSM (deterministic, so the expected numbers are computed by hand from the same function run
eagerly) made invalid for the examples with an even label: twice ε, no clipping to [0, 1], or a NaN pixel.
"""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_dense_network
from script_server import run_script
from tfadv import attacks, config, data, evaluation
from tfadv.evaluation import api, runner, shards

EPS = {"linf": 0.125, "l2": 1.0, "l1": 4.0}
COUNT = 120


def _fgsm(logits_fn, x, y, eps):
    return attacks.fgsm(logits_fn, x, y, eps=eps, loss="ce", norm="linf")


def _even(y, x):
    return tf.reshape(tf.equal(y % 2, 0), [-1, 1, 1, 1]) & tf.ones_like(x, tf.bool)


def _overshoot(spec, logits_fn, x, y, keys):
    """FGSM at 2 eps for even labels (outside the ball, inside [0, 1]), at eps for odd ones (valid)."""
    return tf.where(_even(y, x), _fgsm(logits_fn, x, y, 2 * spec.eps), _fgsm(logits_fn, x, y, spec.eps))


def _unclipped(spec, logits_fn, x, y, keys):
    """x + eps sign(gradient) without clipping to [0, 1] for even labels (inside the ball, outside the box)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, logits_fn(x), from_logits=True)
    raw = x + spec.eps * tf.sign(tape.gradient(loss, x))
    return tf.where(_even(y, x), raw, _fgsm(logits_fn, x, y, spec.eps))


def _nan(spec, logits_fn, x, y, keys):
    """FGSM at eps with a NaN first pixel for even labels."""
    adversarial = _fgsm(logits_fn, x, y, spec.eps)
    first = tf.one_hot(0, int(np.prod(x.shape[1:])), on_value=True, off_value=False, dtype=tf.bool)
    first = tf.reshape(first, [1, *x.shape[1:]]) & _even(y, x)
    return tf.where(first, tf.fill(tf.shape(x), float("nan")), adversarial)


TOYS = {"overshoot": (_overshoot, "outside_ball"), "unclipped": (_unclipped, "outside_box"),
        "nan": (_nan, "non_finite")}


@pytest.fixture(scope="module")
def toys():
    for family, (run, _) in TOYS.items():
        evaluation.register_attack(family, run, kind="gradient", loss="ce", default_steps=1, step_count=False,
                                   restarts=False, norms=("linf",))
    yield {family: evaluation.parse_attack(family, EPS) for family in TOYS}
    for family in TOYS:
        evaluation.unregister_attack(family)


@pytest.fixture(scope="module")
def setting(digits):
    net = small_dense_network(digits, seed=2)
    x, y = digits.test[0][:COUNT], digits.test[1][:COUNT].astype(np.int32)
    return (lambda images: net(images, training=False)), x, y


def _by_hand(fn, run, spec, x, y):
    """(clean correct, adversarial images, correct on them) of a toy attack run eagerly on all of (x, y)."""
    clean = np.argmax(fn(x).numpy(), -1) == y
    adversarial = run(spec, fn, tf.constant(x), tf.constant(y), None).numpy()
    with np.errstate(invalid="ignore"):
        correct_on = np.argmax(fn(adversarial).numpy(), -1) == y
    return clean, adversarial, correct_on


@pytest.mark.parametrize("family", sorted(TOYS))
def test_an_invalid_output_does_not_break_its_example_and_is_counted_and_warned(toys, setting, family):
    fn, x, y = setting
    spec = toys[family]
    run, reason = TOYS[family]
    clean, adversarial, correct_on = _by_hand(fn, run, spec, x, y)
    even = y % 2 == 0
    # the toy attack is not harmless: where it is invalid it breaks examples the old runner counted as broken
    assert np.sum(clean & even & ~correct_on) >= 3
    lines = []
    report = evaluation.evaluate(fn, x, y, [spec], batch_size=32, log=lines.append)
    entry = report["attacks"][family]
    # even labels: the clean prediction stands; odd labels: the valid FGSM output counts as always
    expected = clean & np.where(even, True, correct_on)
    np.testing.assert_array_equal(report["per_example_correct"]["attacks"][family], expected)
    assert entry["robust_accuracy"] == float(expected.mean())
    invalid = int(np.sum(clean & even))
    assert entry["invalid_outputs"] == invalid > 0
    assert entry["invalid_reasons"] == {r: invalid if r == reason else 0 for r in runner.INVALID_REASONS}
    warnings = [w for w in report["warnings"] if family in w]
    assert len(warnings) == 1 and f"{invalid} of {entry['attacked']}" in warnings[0] and reason in warnings[0]
    assert any(line.startswith("WARNING:") and warnings[0] in line for line in lines)
    table = evaluation.format_table(report)
    assert f"WARNING: {warnings[0]}" in table
    assert warnings[0] in evaluation.format_markdown(report)
    # the max perturbation is measured on every finite output, the invalid ones included (2 eps shows)
    attacked = adversarial[clean]
    finite = np.all(np.isfinite(attacked), axis=(1, 2, 3))
    measured = np.abs(attacked[finite].astype(np.float64) - x[clean][finite]).max()
    assert entry["max_perturbation"] == measured
    if family == "overshoot":
        assert entry["max_perturbation"] > 1.9 * spec.eps


def test_the_tolerance_is_float32_rounding_of_the_radius_and_the_pixels():
    """At least one float32 rounding per pixel (in the norm's sum), growing with the radius; at the default radii of
    digits and CIFAR-10 (tfadv.config.budget) below 0.1 % of the radius: an output at 1.001 eps is refused."""
    for name in ("digits", "cifar10"):
        spec = data.get_spec(name)
        budget = config.budget(spec, eps=2 if name == "digits" else 8)
        features = int(np.prod(spec.image_shape))
        for norm, root in (("linf", math.inf), ("l2", 2), ("l1", 1)):
            radius = budget.radius(norm)
            tolerance = runner.threat_model_tolerance(norm, radius, features)
            assert runner.FLOAT32_EPS * features ** (1 / root) <= tolerance < 1e-3 * radius, (name, norm)
            assert runner.threat_model_tolerance(norm, 2 * radius, features) > tolerance
    assert runner.threat_model_tolerance("linf", 0.5, 64) == runner.threat_model_tolerance("linf", 0.5, 3072)


def test_an_honest_attack_reports_its_max_perturbation_within_eps_and_nothing_invalid(setting, tmp_path, digits):
    """PGD-20 in each norm: max perturbation at most eps (plus float32 rounding), 0 invalid, no warning; in pixel
    levels too with a Budget; the number equals the one measured on the saved images."""
    fn, x, y = setting
    budget = config.budget(digits.spec, eps=2)
    names = ["pgd20", "pgd20_l2", "pgd20_l1"]
    path = tmp_path / "adv.npz"
    report = evaluation.evaluate_model(fn, x, y, names, budget=budget, audit=False, log=None,
                                       save_adversarial=str(path))
    assert "warnings" not in report
    saved = np.load(path)
    features = int(np.prod(x.shape[1:]))
    for name in names:
        entry = report["attacks"][name]
        radius = budget.radius(entry["norm"])
        assert entry["invalid_outputs"] == 0 and set(entry["invalid_reasons"].values()) == {0}
        tolerance = runner.threat_model_tolerance(entry["norm"], radius, features)
        assert 0.5 * radius < entry["max_perturbation"] <= radius + tolerance
        assert entry["max_perturbation_levels"] == entry["max_perturbation"] * budget.pixel_max
        delta = (saved[f"{name}/images"].astype(np.float64) - x[saved[f"{name}/indices"]]).reshape(
            len(saved[f"{name}/indices"]), -1)
        order = {"linf": np.inf, "l2": 2, "l1": 1}[entry["norm"]]
        assert entry["max_perturbation"] == pytest.approx(np.linalg.norm(delta, order, axis=1).max(), rel=1e-12)


def test_saved_adversarial_examples_round_trip(toys, setting, tmp_path):
    """The .npz holds, per attack (a cascade's stages too), the images it returned for the examples it attacked,
    their indices in the evaluation set, whether each broke the model and whether it was valid; re-classifying the
    saved images gives the verdicts, and the verdicts give the report's robust accuracy."""
    import dataclasses

    fn, x, y = setting
    chosen = [toys["overshoot"], evaluation.parse_attack("pgd10", EPS)] + [
        dataclasses.replace(evaluation.parse_attack(n, EPS), group="g") for n in ("fgsm", "cw10")]
    path = tmp_path / "adv.npz"
    report = evaluation.evaluate_model(fn, x, y, chosen, budget=EPS, audit=False, log=None,
                                       save_adversarial=str(path))
    saved = np.load(path)
    assert list(saved["attacks"]) == [s.name for s in chosen]
    clean = np.argmax(fn(x).numpy(), -1) == y
    left = clean.copy()
    for spec in chosen:
        images, indices = saved[f"{spec.name}/images"], saved[f"{spec.name}/indices"]
        broken, valid = saved[f"{spec.name}/broken"], saved[f"{spec.name}/valid"]
        assert images.dtype == np.float32 and images.shape == (len(indices), *x.shape[1:])
        assert indices.dtype == np.int64 and broken.dtype == valid.dtype == np.bool_
        targets = left if spec.group else clean
        np.testing.assert_array_equal(indices, np.flatnonzero(targets))
        wrong = np.argmax(fn(images).numpy(), -1) != y[indices]
        np.testing.assert_array_equal(broken, wrong & valid)
        assert int(np.sum(~valid)) == report["attacks"][spec.name]["invalid_outputs"]
        robust = clean.copy()
        robust[indices[broken]] = False
        if spec.group:
            left = left & robust
            robust = left
        assert report["attacks"][spec.name]["robust_accuracy"] == float(robust.mean())
    assert not saved["overshoot/valid"].all() and saved["pgd10/valid"].all()


def test_a_shard_saves_global_indices_and_merged_shards_sum_invalid_counts(toys, setting, tmp_path):
    """Shards of an evaluation with an invalid attack merge into the single run's report exactly: invalid counts
    and reasons summed, the max of the max perturbations, the warnings rebuilt from the merged counts."""
    fn, x, y = setting
    chosen = [toys["overshoot"], toys["nan"], evaluation.parse_attack("pgd5", EPS)]
    evaluator = evaluation.Evaluator(fn, chosen, batch_size=16, seed=1)
    single = evaluator(x, y)
    single.pop("per_example_robust")
    single.pop("per_example_correct")
    parts = [json.loads(json.dumps(shards.evaluate_shard(evaluator, x, y, f"{i}/3"))) for i in range(3)]
    counts = [p["attacks"]["overshoot"]["invalid_outputs"] for p in parts]
    assert all(c > 0 for c in counts)  # every shard warns about its own count
    assert all(any(f"{c} of" in w for w in p["warnings"]) for c, p in zip(counts, parts))
    merged = shards.merge_reports(parts)
    for report in (merged, single):
        for entry in report["attacks"].values():
            entry.pop("seconds"), entry.pop("images_per_second")
    merged.pop(shards.MERGED_KEY)
    assert merged == single
    assert merged["attacks"]["overshoot"]["invalid_outputs"] == sum(counts)
    assert merged["attacks"]["pgd5"]["max_perturbation"] == max(p["attacks"]["pgd5"]["max_perturbation"]
                                                                for p in parts)
    # a shard's saved examples carry their indices in the whole set
    path = tmp_path / "shard.npz"
    evaluation.evaluate_model(fn, x, y, ["pgd5"], budget=EPS, log=None, shard=(2, 3), save_adversarial=str(path))
    indices = np.load(path)["pgd5/indices"]
    assert len(indices) and indices.min() >= 80 and indices.max() < COUNT


def test_the_cossat_protocols_reject_invalid_outputs_too(toys, setting):
    """A Co-SSAT-shaped model (composite = SSAT branch): an output outside the ball neither fools a cascade's
    source nor reaches the classifier; the protocol report counts it."""
    from tfadv.evaluation import cossat_protocols

    fn, x, y = setting

    def outputs(images):
        logits = fn(images)
        return {"logits": logits, "ssat_logits": logits, "base_logits": logits,
                "classes": tf.argmax(logits, -1, output_type=tf.int32)}

    clean, _, correct_on = _by_hand(fn, _overshoot, toys["overshoot"], x, y)
    expected = clean & np.where(y % 2 == 0, True, correct_on)
    report = cossat_protocols.evaluate(outputs, x, y, [toys["overshoot"]], "half_white_box", batch_size=32)
    entry = report["attacks"]["overshoot"]
    assert entry["robust_accuracy"] == float(expected.mean())
    assert entry["invalid_outputs"] == int(np.sum(y % 2 == 0))  # the protocol attacks every example
    assert entry["invalid_reasons"]["outside_ball"] == entry["invalid_outputs"]
    assert any("overshoot" in w for w in report["warnings"])


def test_save_adversarial_is_refused_before_any_attack(setting, tmp_path):
    fn, x, y = setting
    calls = []

    def counting(images):
        calls.append(1)
        return fn(images)

    for bad, why in ((tmp_path / "missing" / "a.npz", "does not exist"), (tmp_path, "is a directory")):
        with pytest.raises(api.EvaluationError, match=f"^--save_adversarial: .*{why}"):
            evaluation.evaluate_model(counting, x, y, ["pgd5"], budget=EPS, log=None, save_adversarial=str(bad))
    assert calls == [] and not (tmp_path / "missing").exists()


def test_evaluate_script_refuses_an_unwritable_save_adversarial_path_before_loading_the_model(tmp_path):
    """Through scripts/evaluate.py: the model directory holds an empty saved_model.pb, so any refusal after
    loading it would be another error."""
    fake = tmp_path / "model"
    fake.mkdir()
    (fake / "saved_model.pb").write_bytes(b"")
    for bad in (tmp_path / "missing" / "adv.npz", tmp_path):
        result = run_script("evaluate.py", f"--model_dir={fake}", f"--save_adversarial={bad}", "--noprogress",
                            f"--output={tmp_path / 'r.json'}")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --save_adversarial: "), \
            result.stderr
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "missing").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_evaluate_script_writes_the_adversarial_examples(setting, tmp_path, digits):
    """evaluate.py --save_adversarial=PATH.npz on a digits SavedModel: the file has each attack's images and
    indices, report.json the max perturbation in both units."""
    from tfadv import export

    net = small_dense_network(digits, seed=2)
    path = export.export(net, str(tmp_path / "model"), {"dataset": "digits", "eps": 0.125, "budget": {
        "pixel_max": 16.0, "eps": {"levels": 2.0, "fraction": 0.125}}})
    saved, output = tmp_path / "adv.npz", tmp_path / "eval.json"
    result = run_script("evaluate.py", f"--model_dir={path}", "--attacks=fgsm", "--num_examples=30", "--noprogress",
                        "--noaudit", f"--output={output}", f"--save_adversarial={saved}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    entry = report["attacks"]["fgsm"]
    assert entry["invalid_outputs"] == 0 and entry["max_perturbation"] == 0.125
    assert entry["max_perturbation_levels"] == 2.0
    archive = np.load(saved)
    assert archive["fgsm/images"].shape == (entry["attacked"], 8, 8, 1)
    x, _ = data.take(digits.test, 30)
    assert np.abs(archive["fgsm/images"] - x[archive["fgsm/indices"]]).max() == np.float32(0.125)
