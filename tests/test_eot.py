"""EOT (expectation over transformation) for randomised models: the eot_iter of APGD attacks, AutoAttack's rand
version and evaluate.py's --eot_iter."""

import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, evaluation

EPS = {"linf": 0.125, "l2": 1.0}


def test_eot_specs_and_autoattacks_rand_version():
    spec = evaluation.parse_attack("apgd_ce_eot20", EPS)
    assert (spec.kind, spec.loss, spec.eot_iter, spec.name) == ("apgd", "ce", 20, "apgd_ce_eot20")
    assert spec.metadata()["eot_iter"] == 20 and evaluation.parse_attack("apgd_ce", EPS).eot_iter == 1
    assert evaluation.with_eot(evaluation.parse_attack("apgd_t", EPS), 5).name == "apgd_t_eot5"
    assert evaluation.with_eot(spec, 1) == evaluation.parse_attack("apgd_ce", EPS)
    for bad in ("pgd20_eot5", "square_eot2", "apgd_ce_eot0"):
        with pytest.raises(ValueError):
            evaluation.parse_attack(bad, EPS)
    with pytest.raises(ValueError, match="APGD"):
        evaluation.with_eot(evaluation.parse_attack("pgd20", EPS), 5)
    # fra31/auto-attack version='rand': APGD-CE then APGD-DLR, 100 iterations, 1 restart, eot_iter 20, cascaded
    rand = evaluation.autoattack_specs(EPS, version="rand")
    assert [(s.kind, s.loss, s.steps, s.restarts, s.eot_iter) for s in rand] == [("apgd", "ce", 100, 1, 20),
                                                                                 ("apgd", "dlr", 100, 1, 20)]
    assert [s.name for s in rand] == ["apgd_ce_eot20", "apgd_dlr_eot20"]
    assert {s.group for s in rand} == {"autoattack_rand"}
    assert [s.name for s in evaluation.autoattack_specs(EPS, "l2", "rand")] == ["apgd_ce_l2_eot20", "apgd_dlr_l2_eot20"]


def test_the_runner_passes_eot_iter_to_apgd(monkeypatch):
    calls = []

    def fake(name):
        def attack(logits_fn, x, y, **kwargs):
            calls.append((name, kwargs.get("eot_iter", 1)))
            return x
        return attack

    monkeypatch.setattr(attacks, "apgd", fake("apgd"))
    monkeypatch.setattr(attacks, "apgd_targeted", fake("apgd_targeted"))
    x, y = tf.zeros([2, 8, 8, 1]), tf.zeros([2], tf.int32)
    for name in ("apgd_ce_eot20", "apgd_dlr_eot3", "apgd_t_eot7", "apgd_ce"):
        evaluation.parse_attack(name, EPS).run(lambda images: tf.zeros([2, 10]), x, y)
    assert calls == [("apgd", 20), ("apgd", 3), ("apgd_targeted", 7), ("apgd", 1)]


def test_eot_averages_over_forward_passes_end_to_end(natural_mlp, digits):
    """With eot_iter = k the evaluation's APGD runs k forward/backward passes per gradient (counted on the model),
    and on a deterministic model the mean of k equal gradients has the gradient's signs (and the objective is the
    last pass's, the same value), so the l-inf attack is plain APGD from the same random starts: the same images,
    the same verdicts. The runner salts each attack's keys with its canonical name, so apgd_ce10 and
    apgd_ce10_eot4 start from different points and may break different borderline examples (3 of 40 on an
    AVX2-only AMD EPYC); the reference is plain APGD with the keys the runner gives apgd_ce10_eot4."""
    from tfadv.attacks import rng
    from tfadv.evaluation.runner import _salt

    steps = 10
    x, y = digits.test[0][:40], digits.test[1][:40].astype(np.int32)
    passes = tf.Variable(0, dtype=tf.int64)

    def counted(images):
        passes.assign_add(1)
        return natural_mlp(images, training=False)

    counts, reports, specs = {}, {}, {}
    for eot in (1, 4):
        passes.assign(0)
        specs[eot] = evaluation.with_eot(evaluation.parse_attack(f"apgd_ce{steps}", EPS), eot)
        reports[eot] = evaluation.Evaluator(counted, [specs[eot]])(x, y, keep_adversarial=True)
        counts[eot] = int(passes.numpy())
    # one batch: the start's gradient and each step's take 4 passes instead of 1; the clean pass, APGD's check of
    # the clean points and the verdict are one pass each either way
    assert counts[4] - counts[1] == (4 - 1) * (1 + steps), counts
    assert reports[4]["attacks"]["apgd_ce10_eot4"]["eot_iter"] == 4

    attacked = reports[4]["adversarial"]["apgd_ce10_eot4"]
    indices = attacked["indices"]
    keys = rng.example_keys(tf.constant(indices), 0, _salt(specs[4]))
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    plain = tf.function(lambda a, b, k: attacks.apgd(fn, a, b, eps=EPS["linf"], steps=steps, keys=k))(
        x[indices], y[indices], keys).numpy()
    np.testing.assert_array_equal(attacked["images"], plain)
    fooled = np.argmax(fn(plain).numpy(), -1) != y[indices]
    np.testing.assert_array_equal(attacked["broken"], fooled)
    np.testing.assert_array_equal(reports[4]["per_example_robust"][indices], ~fooled)
    assert 0 < fooled.sum() < len(indices)  # the attack breaks some points, not all: the verdicts say something


def test_evaluate_refuses_eot_iter_without_an_apgd_attack(natural_mlp, tmp_path):
    from test_cli import error_lines, run_script

    from tfadv import export

    budget = {"pixel_max": 16.0, "eps": {"levels": 2.0, "fraction": 0.125}}
    path = export.export(natural_mlp, str(tmp_path / "model"), {"dataset": "digits", "eps": 0.125, "budget": budget})
    result = run_script("evaluate.py", f"--model_dir={path}", "--attacks=fgsm,pgd20", "--eot_iter=20",
                        "--noprogress")
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(error_lines(result)) == 1 and "--eot_iter applies to APGD attacks" in error_lines(result)[0]
