"""The gradient-masking audit passes an honest model and flags a masked one."""

import numpy as np
import tensorflow as tf

from tfadv import evaluation
from tfadv.evaluation import audit


def _specs(eps):
    return [evaluation.parse_attack(n, {"linf": eps}) for n in ("fgsm", "pgd10", "pgd40", "cw40")]


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
    assert audit.check_loss_dependence(report)["verdict"] == "n/a"  # no margin / DLR attack
    report["attacks"]["cw20"] = {"robust_accuracy": 0.44}
    report["attacks"]["pgd20_l2"] = {"robust_accuracy": 0.1}  # l2 attacks do not enter the l-inf comparison
    check = audit.check_loss_dependence(report)
    assert check["verdict"] == "warn" and check["numbers"]["gap"] == 0.06
    assert check["numbers"]["best_ce_attack"] == "pgd20" and check["numbers"]["best_margin_attack"] == "cw20"
    report["attacks"]["apgd_t"] = {"robust_accuracy": 0.48, "group": "autoattack"}
    assert audit.check_loss_dependence(report)["verdict"] == "warn"
    report["attacks"]["apgd_ce"] = {"robust_accuracy": 0.45, "group": "autoattack"}
    assert audit.check_loss_dependence(report)["verdict"] == "pass"  # 0.45 vs 0.44


def test_a_pgd_at_model_passes_and_missing_probes_are_run_by_the_audit(pgd_at_mlp, digits):
    import dataclasses

    x, y = digits.test[0][:200], digits.test[1][:200]
    fn = lambda images: pgd_at_mlp(images, training=False)  # noqa: E731
    # an AutoAttack-style report (one cascaded attack) has no FGSM / PGD pair: the audit runs them
    specs = [dataclasses.replace(evaluation.parse_attack("apgd_ce50", {"linf": 0.125}), group="autoattack")]
    report = evaluation.evaluate(fn, x, y, specs)
    checks = audit.audit(fn, x, y, report, 0.125, unbounded_steps=50, square_queries=300)
    assert {c["verdict"] for c in checks.values()} == {"pass"}, audit.format_audit(checks)
    assert checks["one_step_vs_multi_step"]["numbers"]["probes_run_by_the_audit"] == "cw50,fgsm,pgd10,pgd50,square300"
    assert checks["loss_dependence"]["numbers"]["gap"] <= 0.05
    assert checks["black_box_vs_white_box"]["numbers"]["best_black_box"] > 0.5  # square is weaker here
    assert checks["unbounded_eps"]["numbers"]["accuracy_eps_1"] <= 0.05


def test_a_label_smoothed_model_is_flagged_by_the_loss_dependence_check(tmp_path):
    """Uniform label smoothing (a = 0.5, trained by train.py as in the README's table) flattens cross-entropy:
    PGD-CE overstates its robustness and CW does not (papers 003/004); the audit says so."""
    import json

    from test_cli import run_script

    run = tmp_path / "ls"
    result = run_script("train.py", "--flagfile=flags/digits.cfg", "--defense=label_smoothing", "--ls_method=uniform",
                        "--ls_alpha=0.5", f"--output_dir={run}", "--val_examples=0", "--eval_examples=100")
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script("evaluate.py", f"--model_dir={run}", "--attacks=fgsm,pgd20,cw20", "--num_examples=200",
                        "--noprogress", "--audit_square_queries=0", f"--output={tmp_path / 'eval.json'}")
    assert result.returncode == 0, result.stderr[-3000:]
    check = json.loads((tmp_path / "eval.json").read_text())["audit"]["loss_dependence"]
    assert check["verdict"] == "warn", check
    assert check["numbers"]["best_ce"] > check["numbers"]["best_margin"] + 0.05
    assert "possible gradient masking: loss_dependence" in result.stdout
