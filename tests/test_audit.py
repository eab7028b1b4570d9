"""The gradient-masking audit passes an honest model and flags a masked one."""

import numpy as np
import tensorflow as tf

from tfadv import evaluation
from tfadv.evaluation import audit


def _specs(eps):
    return [evaluation.parse_attack(n, {"linf": eps}) for n in ("fgsm", "pgd10", "pgd40")]


def test_an_undefended_model_passes(natural_mlp, digits):
    x, y = digits.test[0][:200], digits.test[1][:200]
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    report = evaluation.evaluate(fn, x, y, _specs(0.125))
    checks = audit.audit(fn, x, y, report, 0.125, unbounded_steps=50)
    assert {c["verdict"] for c in checks.values()} <= {"pass", "n/a"}, audit.format_audit(checks)
    assert checks["unbounded_eps"]["numbers"]["accuracy_eps_1"] <= 0.05
    assert audit.summary(checks) is None


def test_a_masked_model_is_flagged(natural_mlp, digits):
    x, y = digits.test[0][:200], digits.test[1][:200]

    def masked(images):
        # quantising the input without a gradient: the classic shattered-gradient "defense"
        return natural_mlp(tf.stop_gradient(tf.round(images * 4) / 4), training=False)

    report = evaluation.evaluate(masked, x, y, _specs(0.125))
    checks = audit.audit(masked, x, y, report, 0.125, unbounded_steps=50)
    assert checks["vanishing_gradients"]["verdict"] == "warn"
    assert checks["unbounded_eps"]["verdict"] == "warn"
    assert "vanishing_gradients" in audit.summary(checks)


def test_report_only_checks():
    report = {"attacks": {"fgsm": {"robust_accuracy": 0.3}, "pgd20": {"robust_accuracy": 0.5},
                          "pgd100": {"robust_accuracy": 0.6}, "square": {"robust_accuracy": 0.2}}}
    assert audit.check_one_step(report)["verdict"] == "warn"
    assert audit.check_more_steps(report)["verdict"] == "warn"
    assert audit.check_black_box(report)["verdict"] == "warn"
    assert audit.check_black_box({"attacks": {"fgsm": {"robust_accuracy": 0.3}}})["verdict"] == "n/a"


def test_a_pgd_at_model_passes_and_missing_probes_are_run_by_the_audit(pgd_at_mlp, digits):
    import dataclasses

    x, y = digits.test[0][:200], digits.test[1][:200]
    fn = lambda images: pgd_at_mlp(images, training=False)  # noqa: E731
    # an AutoAttack-style report (one cascaded attack) has no FGSM / PGD pair: the audit runs them
    specs = [dataclasses.replace(evaluation.parse_attack("apgd_ce50", {"linf": 0.125}), group="autoattack")]
    report = evaluation.evaluate(fn, x, y, specs)
    checks = audit.audit(fn, x, y, report, 0.125, unbounded_steps=50, square_queries=300)
    assert {c["verdict"] for c in checks.values()} == {"pass"}, audit.format_audit(checks)
    assert checks["one_step_vs_multi_step"]["numbers"]["probes_run_by_the_audit"] == "fgsm,pgd10,pgd50,square300"
    assert checks["black_box_vs_white_box"]["numbers"]["best_black_box"] > 0.5  # square is weaker here
    assert checks["unbounded_eps"]["numbers"]["accuracy_eps_1"] <= 0.05
