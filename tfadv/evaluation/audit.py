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

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from tfadv import attacks, graphs

TOLERANCE = 0.02  # accuracy differences below 2 points are noise on small evaluation sets
# AutoAttack's check_square_sr (fra31/auto-attack, autoattack/checks.py): Square ending more than 0.2 points of
# robust accuracy below the best other attack means the white-box attacks were fooled.
SQUARE_TOLERANCE = 0.002
# AutoAttack's check_randomized: logits (each scaled to unit l2 norm) of repeated forward passes differing by more
# than this, or a different number of correct predictions, mean a randomised defense.
RANDOMIZED_TOLERANCE = 1e-4
RANDOMIZED_RUNS = 5
# AutoAttack's check_range_output: outputs within this of a probability distribution are not logits.
RANGE_TOLERANCE = 1e-5
FROM_METADATA = "report metadata"
FROM_NAME = "attack name parsed by tfadv.evaluation.parse_attack (the report has no per-attack metadata)"
_FIELDS = ("attack", "kind", "norm", "loss", "eps", "steps", "restarts", "targeted", "eot_iter")


def _verdict(name, ok, numbers, explanation):
    return {"check": name, "verdict": "pass" if ok else "warn", "numbers": numbers, "explanation": explanation}


def _not_applicable(name, why):
    return {"check": name, "verdict": "n/a", "numbers": {}, "explanation": why}


def _batched(fn, x, y, batch_size):
    parts = [fn(tf.constant(x[s:s + batch_size]), tf.constant(y[s:s + batch_size])).numpy()
             for s in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros([0])


def attack_classes(report: dict) -> Dict[str, dict]:
    """How each attack of `report` is classified: {name: {attack, kind, norm, loss, eps, steps, restarts,
    targeted, eot_iter, group, robust_accuracy, classified_from}}.

    The checks use this and nothing else. It is the metadata the runner records per attack ("kind" is
    gradient, score_based, minimum_norm or transfer). An entry without metadata (a report written before
    tfadv recorded it) is classified once by the runner's own parser, `parse_attack`, and says so in
    `classified_from`; a name the parser does not know is an error.
    """
    from tfadv.evaluation import specs

    classes = {}
    for name, entry in report["attacks"].items():
        if "kind" in entry and "norm" in entry:
            meta, source = {k: entry.get(k) for k in _FIELDS}, FROM_METADATA
        else:
            radius = float(entry.get("eps", 1.0))
            try:
                # a source is needed only by transfer attacks (the parser ignores it for the others)
                spec = specs.parse_attack(name, {"linf": radius, "l2": radius, "l1": radius},
                                          source=lambda images: images)
            except ValueError as error:
                raise ValueError(f"attack {name!r} in the report has no metadata (kind, norm, loss, ...) and its name "
                                 f"is not one tfadv.evaluation.parse_attack knows ({error}); re-run the evaluation "
                                 f"with this tfadv to record it") from None
            meta, source = {k: spec.metadata()[k] for k in _FIELDS}, FROM_NAME
        classes[name] = {**meta, "group": entry.get("group"), "robust_accuracy": entry["robust_accuracy"],
                         "classified_from": source}
    return classes


def _classified_from(classes, names) -> str:
    return ", ".join(sorted({classes[n]["classified_from"] for n in names}))


def _with_classes(check, classes, names):
    """The check with the classification of the attacks it compared (JSON: where each came from)."""
    check["classification"] = {n: classes[n] for n in names}
    return check


def _select(classes, **wanted):
    """{name: robust accuracy} of the attacks whose metadata matches; a tuple value matches any of its items."""
    def matches(meta):
        return all(meta[k] in v if isinstance(v, tuple) else meta[k] == v for k, v in wanted.items())

    return {n: c["robust_accuracy"] for n, c in classes.items() if matches(c)}


def check_one_step(report: dict) -> dict:
    classes = attack_classes(report)
    fgsm = _select(classes, attack="fgsm", kind="gradient", norm="linf")
    multi = _select(classes, attack="pgd", kind="gradient", norm="linf")
    if not fgsm or not multi:
        return _not_applicable("one_step_vs_multi_step", "needs fgsm and an l-inf pgdN attack")
    one, strongest = min(fgsm.values()), min(multi.values())
    return _with_classes(_verdict("one_step_vs_multi_step", one >= strongest - TOLERANCE,
                    {"fgsm": one, "best_pgd": strongest, "best_pgd_attack": min(multi, key=multi.get),
                     "classified_from": _classified_from(classes, [*fgsm, *multi])},
                    "FGSM should not leave fewer examples robust than multi-step PGD"), classes, [*fgsm, *multi])


def check_more_steps(report: dict) -> dict:
    """More steps at the same or more restarts (or more restarts at the same or more steps) must not leave more
    points robust. Attacks that trade steps for restarts (pgd50_r5 vs pgd100) are not compared: neither is
    stronger by construction."""
    classes = attack_classes(report)
    chosen = _select(classes, attack="pgd", kind="gradient", norm="linf")
    linf_ce = sorted(((classes[k]["steps"], classes[k]["restarts"], k, acc) for k, acc in chosen.items()))
    if len({(s, r) for s, r, _, _ in linf_ce}) < 2:
        return _not_applicable("more_steps_help", "needs two l-inf pgdN attacks with different N (or restarts)")
    rises = [(a[2], b[2]) for a in linf_ce for b in linf_ce
             if (b[0], b[1]) != (a[0], a[1]) and b[0] >= a[0] and b[1] >= a[1] and b[3] > a[3] + TOLERANCE]
    return _with_classes(_verdict("more_steps_help", not rises, {**{k: acc for _, _, k, acc in linf_ce},
                                                   "classified_from": _classified_from(classes, chosen)},
                    "robust accuracy must not rise with more PGD steps" + (f" (rises: {rises})" if rises else "")),
        classes, chosen)


def standalone_threshold(accuracy: float, num_examples: Optional[int]) -> float:
    """How far a stand-alone black-box attack may end below the best white-box one before it is more than noise:
    two binomial standard errors of the white-box accuracy, 2 sqrt(p (1 - p) / n), and at least AutoAttack's
    0.2 points (its threshold is for Square's cumulative gain inside its own cascade, where the attacks run on
    the same points in turn; two separate attacks a few examples apart are noise). Without n (an old report):
    0.2 points."""
    if not num_examples:
        return SQUARE_TOLERANCE
    return max(SQUARE_TOLERANCE, 2.0 * float(np.sqrt(accuracy * (1.0 - accuracy) / num_examples)))


def check_black_box(report: dict) -> dict:
    """AutoAttack's check_square_sr, for every norm separately (an l2 attack is compared with l2 attacks): warns
    when, in a cascade, a black-box stage ends more than SQUARE_TOLERANCE (0.2 points) below the white-box
    stages of its own cascade (cumulative accuracies: Square broke points APGD / FAB left robust), or when a
    black-box attack ends below the best white-box attack of its norm by more than `standalone_threshold`."""
    classes = attack_classes(report)
    num_examples = report.get("num_examples")
    norms = sorted({classes[n]["norm"] for n in _select(classes, kind=("score_based", "transfer"))})
    numbers, compared, ok = {}, [], True
    worst_gap = 0.0
    for norm in norms:
        black = _select(classes, kind=("score_based", "transfer"), norm=norm)
        white = _select(classes, kind=("gradient", "minimum_norm"), norm=norm)
        if not white:
            continue
        compared += [*black, *white]
        best_black, best_white = min(black.values()), min(white.values())
        threshold = standalone_threshold(best_white, num_examples)
        # strictly more than the threshold below; 1e-9 absorbs float noise in the fractions
        ok = ok and best_black >= best_white - threshold - 1e-9
        gap = 0.0
        for name, accuracy in black.items():
            group = classes[name]["group"]
            own = [a for n, a in white.items() if group and classes[n]["group"] == group]
            if own:
                gap = max(gap, min(own) - accuracy)
        ok = ok and gap <= SQUARE_TOLERANCE + 1e-9
        worst_gap = max(worst_gap, gap)
        suffix = "" if norm == "linf" else f"_{norm}"
        numbers.update({f"best_black_box{suffix}": best_black,
                        f"best_black_box_attack{suffix}": min(black, key=black.get),
                        f"best_white_box{suffix}": best_white,
                        f"best_white_box_attack{suffix}": min(white, key=white.get),
                        f"standalone_threshold_points{suffix}": round(threshold * 100, 4)})
    if not compared:
        return _not_applicable("black_box_vs_white_box", "needs a black-box (score-based such as square, or "
                                                         "transfer) and a white-box attack of the same norm")
    numbers.update({"worst_cascade_gap_points": round(worst_gap * 100, 4), "threshold_points": SQUARE_TOLERANCE * 100,
                    "num_examples": num_examples, "classified_from": _classified_from(classes, compared)})
    return _with_classes(_verdict("black_box_vs_white_box", ok, numbers,
                    f"a black-box attack should not end below the white-box ones of its norm: more than "
                    f"{SQUARE_TOLERANCE * 100:g} points inside a cascade (AutoAttack's Square check), or more than two "
                    f"standard errors of the accuracy for separate attacks: the gradients mislead the white-box "
                    f"attacks; run Square with more queries / restarts or an adaptive attack"), classes, compared)


LOSS_GAP = 0.05  # CE-based robust accuracy this far above the margin/DLR-based one is not noise


def check_loss_dependence(report: dict) -> dict:
    classes = attack_classes(report)
    ce = _select(classes, kind="gradient", norm="linf", loss="ce", attack=("pgd", "apgd_ce"))
    margin = _select(classes, kind="gradient", norm="linf", loss=("cw", "dlr"))
    if not ce or not margin:
        return _not_applicable("loss_dependence", "needs an l-inf cross-entropy attack (pgdN, apgd_ce) and a "
                                                  "margin / DLR one (cwN, dlrN, apgd_dlr, apgd_t)")
    best_ce, best_margin = min(ce.values()), min(margin.values())
    return _with_classes(_verdict("loss_dependence", best_ce <= best_margin + LOSS_GAP,
                    {"best_ce": best_ce, "best_ce_attack": min(ce, key=ce.get), "best_margin": best_margin,
                     "best_margin_attack": min(margin, key=margin.get), "gap": round(best_ce - best_margin, 4),
                     "classified_from": _classified_from(classes, [*ce, *margin])},
                    "cross-entropy attacks leave many more points robust than margin / DLR attacks: the loss "
                    "surface of CE is flattened (label smoothing, logit squeezing, saturated softmax); report "
                    "the margin / DLR / AutoAttack numbers, not the CE ones"), classes, [*ce, *margin])


def check_randomized(logits_fn: Callable, x, y, runs: int = RANDOMIZED_RUNS, eot_iter: int = 1) -> dict:
    """AutoAttack's check_randomized: `runs` forward passes on the same inputs (AutoAttack: the first batch);
    a randomised defense gives different logits (each scaled to unit l2 norm, compared pairwise) or a
    different number of correct predictions. With `eot_iter` > 1 (the report's APGD attacks averaged
    gradients over EOT draws) a randomised model passes."""
    x = tf.constant(np.asarray(x, np.float32))
    y = np.asarray(y)
    outputs, correct = [], []
    for _ in range(runs):
        logits = np.asarray(logits_fn(x), np.float64)
        correct.append(int(np.sum(np.argmax(logits, -1) == y)))
        outputs.append(logits / (np.linalg.norm(logits, axis=-1, keepdims=True) + 1e-10))
    difference = max((float(np.linalg.norm(a - b, axis=-1).max()) for i, a in enumerate(outputs)
                      for b in outputs[i + 1:]), default=0.0)
    randomised = difference > RANDOMIZED_TOLERANCE or len(set(correct)) > 1
    numbers = {"max_logit_difference": difference, "correct_per_run": ",".join(map(str, correct)),
               "runs": runs, "randomised": randomised, "eot_iter": eot_iter}
    return _verdict("randomized_defense", not randomised or eot_iter > 1, numbers,
                    "the forward pass is not deterministic (a randomised defense): attacks on one draw of the "
                    "randomness overstate robustness; average the gradient over draws with --eot_iter=20 (APGD "
                    "attacks) or use --suite=autoattack_rand (AutoAttack's rand version)")


def check_range(logits_fn: Callable, x) -> dict:
    """AutoAttack's check_range_output: outputs that are a probability distribution are not logits."""
    output = np.asarray(logits_fn(tf.constant(np.asarray(x, np.float32))), np.float64)
    probabilities = bool(output.max() < 1 + RANGE_TOLERANCE and output.min() > -RANGE_TOLERANCE and
                         np.all(np.abs(output.sum(-1) - 1) < RANGE_TOLERANCE))
    return _verdict("logits_not_probabilities", not probabilities,
                    {"min_output": float(output.min()), "max_output": float(output.max())},
                    "the model outputs a probability distribution: attacks need its logits (softmax saturates "
                    "and its cross-entropy gradients vanish)")


def gradient_statistics(logits_fn: Callable, x, y, batch_size: int = 256) -> dict:
    """Input-gradient statistics: paper 002's Table 2 (min / mean / max of the squared l2 norm of the
    cross-entropy gradient w.r.t. the input, ||grad_x L(x, y)||_2^2, over all, correctly and wrongly
    classified images; inputs in [0, 1]), the l1 norms of the CE and CW-margin gradients, correctness."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)

    def norms(loss):
        def fn(images, labels):
            _, gradient = attacks.input_gradient(logits_fn, images, labels, loss)
            flat = tf.reshape(gradient, [tf.shape(images)[0], -1])
            return tf.stack([tf.reduce_sum(tf.abs(flat), -1), tf.reduce_sum(tf.square(flat), -1)], -1)
        return graphs.function(fn, reduce_retracing=True)

    def correct(images, labels):
        return tf.equal(tf.argmax(logits_fn(images), -1, output_type=tf.int32), labels)

    ce = _batched(norms("ce"), x, y, batch_size).reshape(-1, 2)
    margin = _batched(norms("cw"), x, y, batch_size).reshape(-1, 2)
    ok = _batched(graphs.function(correct, reduce_retracing=True), x, y, batch_size).astype(bool).reshape(-1)
    squared = ce[:, 1]
    table = {}
    for subset, mask in (("all", np.ones_like(ok)), ("correct", ok), ("wrong", ~ok)):
        values = squared[mask]
        table[subset] = ({"min": float(values.min()), "mean": float(values.mean()), "max": float(values.max()),
                          "count": int(mask.sum())} if mask.any() else {"count": 0})
    return {"paper_002_table_2": table, "ce_l1": ce[:, 0], "margin_l1": margin[:, 0], "ce_l2_squared": squared,
            "correct": ok}


def check_vanishing_gradients(logits_fn: Callable, x, y, batch_size: int = 256, stats: Optional[dict] = None):
    """Warns when the input gradient vanishes: any correctly classified point (the points an attack works on)
    with an all-zero CE or margin gradient (AutoAttack's check_zero_gradients), or more than 10 % of them with
    a CW-margin gradient below 1e-8 in l1. Reports paper 002's statistic (||grad_x CE||_2^2, Table 2)."""
    stats = stats or gradient_statistics(logits_fn, x, y, batch_size)
    ok, margin, ce = stats["correct"], stats["margin_l1"], stats["ce_l1"]
    vanishing = float(np.mean(margin[ok] < 1e-8)) if ok.any() else 0.0
    zero = int(np.sum((margin[ok] == 0) | (ce[ok] == 0)))
    table = stats["paper_002_table_2"]
    check = _verdict("vanishing_gradients", vanishing <= 0.1 and zero == 0, {
        "points_with_zero_gradient": zero,
        "share_margin_gradient_below_1e-8": vanishing,
        "share_ce_gradient_below_1e-8": float(np.mean(ce[ok] < 1e-8)) if ok.any() else 0.0,
        "paper002_ce_gradient_l2_squared_mean": table["all"].get("mean", 0.0),
        "paper002_ce_gradient_l2_squared_mean_correct": table["correct"].get("mean", 0.0),
        "median_margin_gradient_l1": float(np.median(margin)) if len(margin) else 0.0},
        "the input gradient should not vanish on correctly classified points: an all-zero CE or margin gradient "
        "on any of them (AutoAttack's zero-gradient check) or a margin gradient below 1e-8 on more than 10 % "
        "(cross-entropy's may saturate on confident points: prefer CW/DLR losses then)")
    check["paper_002_table_2"] = table
    return check


def _probes(logits_fn, x, y, report, eps, batch_size, square_queries, seed):
    """The attacks the report-based checks need but the report lacks (FGSM, PGD-10/50, CW-50, Square), run
    here so that every suite gets every verdict; returns a report of the probes (named in the verdicts)."""
    from tfadv.evaluation import runner, specs

    classes = attack_classes(report)
    plain = {n: c for n, c in classes.items() if not c["group"]}
    wanted = []
    if not _select(plain, attack="fgsm", kind="gradient", norm="linf"):
        wanted.append("fgsm")
    white_pgd = _select(plain, attack="pgd", kind="gradient", norm="linf")
    if len({(plain[n]["steps"], plain[n]["restarts"]) for n in white_pgd}) < 2:
        wanted += [n for n in ("pgd10", "pgd50") if n not in plain]
    if not _select(classes, kind="gradient", norm="linf", loss=("cw", "dlr")):
        wanted.append("cw50")
    if square_queries and not _select(classes, kind=("score_based", "transfer"), norm="linf"):
        wanted.append(specs.canonical_attack_name("square", square_queries))
    if not wanted:
        return {"attacks": {}}
    probes = [specs.parse_attack(n, {"linf": eps}) for n in wanted]
    return runner.Evaluator(logits_fn, probes, batch_size, seed)(x, y)


def audit(logits_fn: Callable, x, y, report: dict, eps: float, batch_size: int = 256,
          unbounded_steps: int = 100, seed: int = 0, square_queries: int = 0) -> Dict[str, dict]:
    """Runs every check; `report` is an evaluation report of the same examples (tfadv.evaluation.evaluate).

    Attacks are classified by the metadata the runner records per attack (`attack_classes`; each comparing
    check names its source in `classified_from`). Checks that compare attacks use the report's attacks; when
    it lacks FGSM, two l-inf PGD step counts (e.g. an AutoAttack-only suite) or a margin / DLR attack, the
    audit runs FGSM / PGD-10 / PGD-50 / CW-50 itself, and with `square_queries` a Square attack when the
    report has no l-inf black-box attack. Cascaded attacks (AutoAttack) enter the black-box check with their
    cumulative accuracy: Square breaking more than 0.2 points beyond the white-box attacks is the warning
    sign (AutoAttack's own check). AutoAttack's randomised-defense, logits-range and zero-gradient checks
    run on the model; its dynamic-defense check has no TensorFlow form (AutoAttack skips it for TF too).
    """
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    probes = _probes(logits_fn, x, y, report, eps, batch_size, square_queries, seed)
    combined = {"num_examples": report.get("num_examples", len(y)),
                "attacks": {**{k: v for k, v in report["attacks"].items()},
                            **{k: v for k, v in probes["attacks"].items() if k not in report["attacks"]}}}
    checks = [check_one_step(combined), check_more_steps(combined), check_black_box(combined),
              check_loss_dependence(combined)]
    for check in checks:
        if probes["attacks"] and check["verdict"] != "n/a":
            check["numbers"]["probes_run_by_the_audit"] = ",".join(sorted(probes["attacks"]))

    def correct(images, labels):
        return tf.equal(tf.argmax(logits_fn(images), -1, output_type=tf.int32), labels)

    unbounded = graphs.function(lambda images, labels: correct(
        attacks.pgd(logits_fn, images, labels, eps=1.0, step_size=0.1, steps=unbounded_steps), labels),
        reduce_retracing=True)
    acc_unbounded = float(_batched(unbounded, x, y, batch_size).mean()) if len(y) else 0.0
    checks.append(_verdict("unbounded_eps", acc_unbounded <= 0.05, {"accuracy_eps_1": acc_unbounded,
                                                                    "steps": unbounded_steps},
                           "with eps = 1 (any image reachable) an attack that works drives accuracy to ~0"))

    rng = np.random.default_rng(seed)
    noisy = np.clip(x + rng.choice([-eps, eps], size=x.shape).astype(np.float32), 0, 1)
    acc_noise = float(_batched(graphs.function(correct, reduce_retracing=True), noisy, y, batch_size).mean())
    attacked = _select(attack_classes(report), norm="linf")
    if attacked:
        checks.append(_verdict("random_noise", acc_noise >= min(attacked.values()) - TOLERANCE,
                               {"random_sign_noise": acc_noise, "best_attack": min(attacked.values())},
                               "random +-eps noise should not hurt more than an attack"))
    else:
        checks.append(_not_applicable("random_noise", "needs an l-inf attack in the report"))

    checks.append(check_vanishing_gradients(logits_fn, x, y, batch_size))
    if len(y):
        # the most EOT draws any attack of the report averaged over (attacks without EOT record 1)
        eot = max([c["eot_iter"] or 1 for c in attack_classes(report).values()], default=1)
        checks.append(check_randomized(logits_fn, x[:batch_size], y[:batch_size], eot_iter=eot))
        checks.append(check_range(logits_fn, x[:batch_size]))
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
