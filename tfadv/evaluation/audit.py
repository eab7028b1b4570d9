"""Gradient-masking audit: the sanity checks of Athalye et al. / Carlini et al. that tell a user when robust
accuracy numbers look masked rather than real (paper 004 §5 and Table 9 run several of them).

Each check returns a verdict ("pass", "warn" or "n/a") with the numbers behind it:
  one_step_vs_multi_step  FGSM should not beat PGD (one step stronger than many = masked gradients)
  more_steps_help         accuracy must not rise with more PGD steps or restarts
  black_box_vs_white_box  a black-box attack (square, transfer) should not beat the white-box ones
  loss_dependence         cross-entropy attacks should not leave many more points robust than margin / DLR
                          attacks (the signature of label smoothing and logit squeezing, papers 003-004)
  unbounded_eps           with eps = the whole pixel range and many steps, accuracy should be ~0
  random_noise            uniform +-eps noise should not hurt more than the attack
  vanishing_gradients     the input gradient of the loss should not vanish on many correctly classified points
"""

from __future__ import annotations

import re
from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tfadv import attacks

TOLERANCE = 0.02  # accuracy differences below 2 points are noise on small evaluation sets


def _verdict(name, ok, numbers, explanation):
    return {"check": name, "verdict": "pass" if ok else "warn", "numbers": numbers, "explanation": explanation}


def _not_applicable(name, why):
    return {"check": name, "verdict": "n/a", "numbers": {}, "explanation": why}


def _steps(name):
    match = re.match(r"^(pgd|cw|dlr|apgd_ce|apgd_t)(\d+)?", name)
    return int(match.group(2)) if match and match.group(2) else None


def _batched(fn, x, y, batch_size):
    parts = [fn(tf.constant(x[s:s + batch_size]), tf.constant(y[s:s + batch_size])).numpy()
             for s in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros([0])


def _linf(name):
    """An l-inf attack by its name (`_l2` / `_l1` mark the other norms)."""
    return "_l" not in name


def check_one_step(report: dict) -> dict:
    attacks_ = report["attacks"]
    multi = {k: v["robust_accuracy"] for k, v in attacks_.items() if k.startswith("pgd") and _linf(k)}
    if "fgsm" not in attacks_ or not multi:
        return _not_applicable("one_step_vs_multi_step", "needs fgsm and an l-inf pgdN attack")
    fgsm = attacks_["fgsm"]["robust_accuracy"]
    strongest = min(multi.values())
    return _verdict("one_step_vs_multi_step", fgsm >= strongest - TOLERANCE, {"fgsm": fgsm, "best_pgd": strongest},
                    "FGSM should not leave fewer examples robust than multi-step PGD")


def check_more_steps(report: dict) -> dict:
    linf_ce = sorted(((s, k, v["robust_accuracy"]) for k, v in report["attacks"].items()
                      if k.startswith("pgd") and _linf(k) and (s := _steps(k))), key=lambda t: t[0])
    if len(linf_ce) < 2:
        return _not_applicable("more_steps_help", "needs two l-inf pgdN attacks with different N")
    rises = [(a[1], b[1]) for a, b in zip(linf_ce, linf_ce[1:]) if b[2] > a[2] + TOLERANCE]
    return _verdict("more_steps_help", not rises, {k: acc for _, k, acc in linf_ce},
                    "robust accuracy must not rise with more PGD steps" + (f" (rises: {rises})" if rises else ""))


def check_black_box(report: dict) -> dict:
    # l-inf only: an l2 attack at its own radius is another threat model, not a stronger white-box attack
    attacks_ = {k: v for k, v in report["attacks"].items() if _linf(k)}
    black = {k: v["robust_accuracy"] for k, v in attacks_.items() if k.startswith(("square", "transfer"))}
    white = {k: v["robust_accuracy"] for k, v in attacks_.items() if not k.startswith(("square", "transfer"))}
    if not black or not white:
        return _not_applicable("black_box_vs_white_box", "needs a black-box (square, transfer) and a white-box attack")
    return _verdict("black_box_vs_white_box", min(black.values()) >= min(white.values()) - TOLERANCE,
                    {"best_black_box": min(black.values()), "best_white_box": min(white.values())},
                    "a black-box attack should not beat the white-box ones")


LOSS_GAP = 0.05  # CE-based robust accuracy this far above the margin/DLR-based one is not noise
_CE_ATTACK = re.compile(r"^(pgd\d+|apgd_ce)")
_MARGIN_ATTACK = re.compile(r"^(cw\d+|dlr\d+|apgd_dlr|apgd_t)")


def check_loss_dependence(report: dict) -> dict:
    attacks_ = report["attacks"]
    ce = {k: v["robust_accuracy"] for k, v in attacks_.items() if _linf(k) and _CE_ATTACK.match(k)}
    margin = {k: v["robust_accuracy"] for k, v in attacks_.items() if _linf(k) and _MARGIN_ATTACK.match(k)}
    if not ce or not margin:
        return _not_applicable("loss_dependence", "needs an l-inf cross-entropy attack (pgdN, apgd_ce) and a "
                                                  "margin / DLR one (cwN, dlrN, apgd_dlr, apgd_t)")
    best_ce, best_margin = min(ce.values()), min(margin.values())
    return _verdict("loss_dependence", best_ce <= best_margin + LOSS_GAP,
                    {"best_ce": best_ce, "best_ce_attack": min(ce, key=ce.get), "best_margin": best_margin,
                     "best_margin_attack": min(margin, key=margin.get), "gap": round(best_ce - best_margin, 4)},
                    "cross-entropy attacks leave many more points robust than margin / DLR attacks: the loss "
                    "surface of CE is flattened (label smoothing, logit squeezing, saturated softmax); report "
                    "the margin / DLR / AutoAttack numbers, not the CE ones")


def _probes(logits_fn, x, y, report, eps, batch_size, square_queries, seed):
    """The attacks the report-based checks need but the report lacks (FGSM, PGD-10/50, CW-50, Square), run
    here so that every suite gets every verdict; returns a report of the probes (named in the verdicts)."""
    from tfadv.evaluation import runner

    names = report["attacks"]
    plain = [k for k in names if not report["attacks"][k].get("group")]
    wanted = []
    if "fgsm" not in plain:
        wanted.append("fgsm")
    pgd_steps = {_steps(k) for k in plain if k.startswith("pgd") and _linf(k)}
    if len(pgd_steps - {None}) < 2:
        wanted += [n for n in ("pgd10", "pgd50") if n not in plain]
    if not any(_linf(k) and _MARGIN_ATTACK.match(k) for k in names):
        wanted.append("cw50")
    if square_queries and not any(k.startswith(("square", "transfer")) for k in names):
        wanted.append(f"square{square_queries}")
    if not wanted:
        return {"attacks": {}}
    specs = [runner.parse_attack(n, {"linf": eps}) for n in wanted]
    return runner.Evaluator(logits_fn, specs, batch_size, seed)(x, y)


def audit(logits_fn: Callable, x, y, report: dict, eps: float, batch_size: int = 256,
          unbounded_steps: int = 100, seed: int = 0, square_queries: int = 0) -> Dict[str, dict]:
    """Runs every check; `report` is an evaluation report of the same examples (tfadv.evaluation.evaluate).

    Checks that compare attacks use the report's attacks; when it lacks FGSM, two l-inf PGD step counts
    (e.g. an AutoAttack-only suite) or a margin / DLR attack, the audit runs FGSM / PGD-10 / PGD-50 / CW-50
    itself, and with `square_queries`
    a Square attack when the report has no black-box attack. Cascaded attacks (AutoAttack) enter the
    black-box check with their cumulative accuracy: Square breaking more than the tolerance of the points
    the white-box attacks left robust is the warning sign.
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    probes = _probes(logits_fn, x, y, report, eps, batch_size, square_queries, seed)
    combined = {"attacks": {**{k: v for k, v in report["attacks"].items()},
                            **{k: v for k, v in probes["attacks"].items() if k not in report["attacks"]}}}
    checks = [check_one_step(combined), check_more_steps(combined), check_black_box(combined),
              check_loss_dependence(combined)]
    for check in checks:
        if probes["attacks"] and check["verdict"] != "n/a":
            check["numbers"]["probes_run_by_the_audit"] = ",".join(sorted(probes["attacks"]))

    def correct(images, labels):
        return tf.equal(tf.argmax(logits_fn(images), -1, output_type=tf.int32), labels)

    unbounded = tf.function(lambda images, labels: correct(
        attacks.pgd(logits_fn, images, labels, eps=1.0, step_size=0.1, steps=unbounded_steps), labels),
        reduce_retracing=True)
    acc_unbounded = float(_batched(unbounded, x, y, batch_size).mean()) if len(y) else 0.0
    checks.append(_verdict("unbounded_eps", acc_unbounded <= 0.05, {"accuracy_eps_1": acc_unbounded,
                                                                    "steps": unbounded_steps},
                           "with eps = 1 (any image reachable) an attack that works drives accuracy to ~0"))

    rng = np.random.default_rng(seed)
    noisy = np.clip(x + rng.choice([-eps, eps], size=x.shape).astype(np.float32), 0, 1)
    acc_noise = float(_batched(tf.function(correct, reduce_retracing=True), noisy, y, batch_size).mean())
    attacked = [v["robust_accuracy"] for k, v in report["attacks"].items() if _linf(k)]
    if attacked:
        checks.append(_verdict("random_noise", acc_noise >= min(attacked) - TOLERANCE,
                               {"random_sign_noise": acc_noise, "best_attack": min(attacked)},
                               "random +-eps noise should not hurt more than an attack"))
    else:
        checks.append(_not_applicable("random_noise", "needs an l-inf attack in the report"))

    def gradient_norms(loss):
        def norms(images, labels):
            _, gradient = attacks.input_gradient(logits_fn, images, labels, loss)
            return tf.reduce_sum(tf.abs(tf.reshape(gradient, [tf.shape(images)[0], -1])), axis=-1)
        return tf.function(norms, reduce_retracing=True)

    # The CW margin's gradient does not saturate the way cross-entropy's does on confident points, so a
    # vanishing margin gradient means the model hides its gradient (the CE share is reported alongside).
    margin = _batched(gradient_norms("cw"), x, y, batch_size)
    ce = _batched(gradient_norms("ce"), x, y, batch_size)
    ok = _batched(tf.function(correct, reduce_retracing=True), x, y, batch_size).astype(bool)
    vanishing = float(np.mean(margin[ok] < 1e-8)) if ok.any() else 0.0
    checks.append(_verdict("vanishing_gradients", vanishing <= 0.1, {
        "share_margin_gradient_below_1e-8": vanishing,
        "share_ce_gradient_below_1e-8": float(np.mean(ce[ok] < 1e-8)) if ok.any() else 0.0,
        "median_margin_gradient_l1": float(np.median(margin)) if len(margin) else 0.0},
        "the margin's input gradient should not vanish on correctly classified points (cross-entropy's may "
        "saturate on confident points: prefer CW/DLR losses then)"))
    return {c["check"]: c for c in checks}


def format_audit(checks: Dict[str, dict]) -> str:
    lines = ["gradient-masking audit:"]
    for name, c in checks.items():
        numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in c["numbers"].items())
        lines.append(f"  [{c['verdict']:>4}] {name}: {numbers}" + ("" if c["verdict"] == "pass" else
                                                                   f" — {c['explanation']}"))
    return "\n".join(lines)


def summary(checks: Dict[str, dict]) -> Optional[str]:
    warned = [name for name, c in checks.items() if c["verdict"] == "warn"]
    return f"possible gradient masking: {', '.join(warned)}" if warned else None
