"""The claim verdicts of the real-CIFAR-10 study (scripts/cifar_study.py), from its finished rows' numbers.

A claim is "reproduced" when the difference it predicts has the predicted sign and is larger than two standard
errors of that difference (independent binomial errors, sqrt(p1 q1 / n + p2 q2 / n)); "not reproduced" when
the difference is larger than two standard errors the other way, or within them ("no measurable effect" is a
failure to reproduce a claimed improvement); "mixed" when a claim's parts disagree; "pending" while a run is
missing. A "matches or beats" claim (BAT against PGD-AT) is reproduced unless ours is worse by more than two
standard errors. The best-vs-final gap compares two checkpoints on the same images, so its error is taken as
sqrt(2) standard errors (an upper bound for positively correlated outcomes).

A row's numbers (`numbers`): clean, pgd20 (on its n test images), aa (AutoAttack on its aa_n), best_ra,
best_epoch, warned (the audit's warnings), minutes, epochs.

Co-SSAT's numbers (`cossat`, from `cossat_numbers`): the DLR detector's ROC AUC and chosen TPR / FPR on the
calibration set (num_positive targeted, num_negative untargeted adversarial examples), and each protocol's
worst-case accuracy with its n. The detector claim compares our balanced accuracy with the one paper 000's chosen
threshold gives (App. G, Table 7: TPR 0.8606, FPR 0.0651, balanced accuracy 0.898): reproduced unless ours is
lower by more than two of its standard errors (the paper's n is not given, so its own error is left out)."""

import math


def se(p, n):
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def pct(p, n=None):
    return "—" if p is None else (f"{100 * p:.1f}" + (f" ± {100 * se(p, n):.1f}" if n else ""))


def numbers(result):
    """clean, PGD-20 (all test images), AutoAttack (its n), best/final RA, audit warnings, training minutes."""
    m, r = result["metrics"], result["report"]
    final = m["final"]
    warned = [name for name, check in r.get("audit", {}).items() if check.get("verdict") == "warn"]
    return {"clean": final["clean_accuracy"], "pgd20": final["robust_accuracy"], "n": final["num_examples"],
            "aa": r["worst_case_accuracy"], "aa_n": r["num_examples"],
            "best_ra": m.get("best", {}).get("robust_accuracy"), "best_epoch": m.get("best", {}).get("epoch"),
            "warned": warned, "minutes": m["train_seconds"] / 60, "epochs": m["epochs"]}


def compare(a, b, key, n_key="n"):
    """(difference a - b, its standard error) of a rate measured on independent samples."""
    return a[key] - b[key], math.sqrt(se(a[key], a[n_key]) ** 2 + se(b[key], b[n_key]) ** 2)


def verdict(diff, error, sign=+1):
    if diff * sign > 2 * error:
        return "reproduced"
    return "not reproduced" + (" (opposite)" if diff * sign < -2 * error else " (within 2 SE)")


def at_least(diff, error):
    """A "matches or beats" claim: reproduced unless worse by more than two standard errors."""
    return "reproduced" if diff >= -2 * error else "not reproduced (worse by more than 2 SE)"


def combine(verdicts):
    if any(v == "pending" for v in verdicts):
        return "pending"
    if all(v == "reproduced" for v in verdicts):
        return "reproduced"
    return "not reproduced" if all(v.startswith("not") for v in verdicts) else "mixed"


def gain(better, base):
    """(evidence, [PGD-20 verdict, AutoAttack verdict]) of the claim that `better` beats `base` under both."""
    d20, e20 = compare(better, base, "pgd20")
    daa, eaa = compare(better, base, "aa", "aa_n")
    return (f"PGD-20 {100 * d20:+.1f} ± {100 * e20:.1f}, AA {100 * daa:+.1f} ± {100 * eaa:.1f}",
            [verdict(d20, e20), verdict(daa, eaa)])


BASE_NAMES = {"pgd": "PGD-AT", "ssat": "SSAT"}
PAPER_DETECTOR = {"tpr": 0.8606, "fpr": 0.0651}  # paper 000, App. G, Table 7: the threshold it chose
COSSAT_CLAIMS = {
    "detector": "000: the DLR detector tells targeted from untargeted attacks (App. G Tab. 7: TPR 0.86, FPR 0.07)",
    "white_box": "000: Co-SSAT(PGD-AT) beats PGD-AT alone under white-box AutoAttack (Tab. 10: 46.65 vs 43.36)",
    "half_white_box": "000: Co-SSAT(PGD-AT) under the half-white-box protocol beats both models under white-box "
                      "AutoAttack (Tab. 10: 65.74)"}


def cossat_numbers(metrics, report):
    """`cossat` for `claims` from a Co-SSAT build's metrics.json and its `evaluate.py --cossat_protocol=all`
    report (eval.json)."""
    chosen, calibration = metrics["detector_calibration"].get("dlr", {}), metrics.get("calibration", {})
    return {"auc": metrics["detector_auc"].get("dlr"), "tpr": chosen.get("tpr"), "fpr": chosen.get("fpr"),
            "num_positive": calibration.get("num_positive"), "num_negative": calibration.get("num_negative"),
            "protocols": {name: (result["worst_case_accuracy"], result["num_examples"])
                          for name, result in report.get("cossat", {}).items()}}


def cossat_claims(rows, cossat):
    """Paper 000's Co-SSAT claims: the detector's separation (App. G), Co-SSAT against PGD-AT under white-box
    AutoAttack and, half-white-box, against the better of PGD-AT and SSAT (Tables 2 and 10)."""
    if not cossat:
        return [(claim, "", "pending") for claim in COSSAT_CLAIMS.values()]
    out = []
    tpr, fpr, n_pos, n_neg = cossat["tpr"], cossat["fpr"], cossat["num_positive"], cossat["num_negative"]
    ours = (tpr + 1 - fpr) / 2
    paper = (PAPER_DETECTOR["tpr"] + 1 - PAPER_DETECTOR["fpr"]) / 2
    error = 0.5 * math.sqrt(se(tpr, n_pos) ** 2 + se(fpr, n_neg) ** 2)
    out.append((COSSAT_CLAIMS["detector"],
                f"ROC AUC {cossat['auc']:.3f}; TPR {tpr:.3f}, FPR {fpr:.3f}, balanced accuracy {ours:.3f} ± "
                f"{error:.3f} (paper {paper:.3f}); {n_pos} targeted / {n_neg} untargeted",
                "reproduced" if ours >= paper - 2 * error else "not reproduced"))
    # each protocol's worst case against the white-box AutoAttack of the single model(s) the paper compares with
    for protocol, label, bases in (("white_box", "AA", ("pgd",)),
                                   ("half_white_box", "half-white-box", ("pgd", "ssat"))):
        if protocol not in cossat["protocols"] or not all(rows.get(key) for key in bases):
            out.append((COSSAT_CLAIMS[protocol], "", "pending"))
            continue
        accuracy, n = cossat["protocols"][protocol]
        base = max(bases, key=lambda key: rows[key]["aa"])
        diff, error = compare({"aa": accuracy, "aa_n": n}, rows[base], "aa", "aa_n")
        out.append((COSSAT_CLAIMS[protocol], f"{label} {pct(accuracy, n)} vs {BASE_NAMES[base]}"
                    f"{' white-box AA' if len(bases) > 1 else ''} {pct(rows[base]['aa'], rows[base]['aa_n'])} "
                    f"({100 * diff:+.1f} ± {100 * error:.1f})", verdict(diff, error)))
    return out


def claims(rows, labels, cossat=None):
    """(claim, evidence, verdict) for each paper's claim, from the finished rows' numbers (`labels`: every row's)
    and Co-SSAT's (`cossat_numbers`, None while it is not evaluated)."""
    out = []

    def need(*keys):
        return all(rows.get(k) for k in keys)

    if need("pgd"):
        p = rows["pgd"]
        gap = (p["best_ra"] or 0) - p["pgd20"]
        error = math.sqrt(2) * se(p["pgd20"], p["n"])
        out.append(("001: PGD-AT overfits robustly (best-checkpoint RA > final RA)",
                    f"best {pct(p['best_ra'])} (epoch {p['best_epoch']}) vs final {pct(p['pgd20'])}: {100 * gap:+.1f}",
                    verdict(gap, error)))
    else:
        out.append(("001: PGD-AT overfits robustly (best-checkpoint RA > final RA)", "", "pending"))
    for key, name in (("pgd_kd_swa", "KD + SWA"), ("pgd_kd", "KD"), ("pgd_swa", "SWA")):
        if need("pgd", key):
            p, q = rows["pgd"], rows[key]
            diff, error = compare(q, p, "pgd20")
            gap_p, gap_q = (p["best_ra"] or 0) - p["pgd20"], (q["best_ra"] or 0) - q["pgd20"]
            shrink = gap_p - gap_q
            out.append((f"001: {name} raises the final PGD-20 RA and shrinks the best-final gap",
                        f"final RA {pct(q['pgd20'])} vs {pct(p['pgd20'])} ({100 * diff:+.1f} ± {100 * error:.1f}); "
                        f"gap {100 * gap_q:.1f} vs {100 * gap_p:.1f}",
                        combine([verdict(diff, error), verdict(shrink, math.sqrt(2) * error)])))
        else:
            out.append((f"001: {name} raises the final RA and shrinks the gap", "", "pending"))
    if need("pgd", "bat"):
        p, b = rows["pgd"], rows["bat"]
        d20, e20 = compare(b, p, "pgd20")
        daa, eaa = compare(b, p, "aa", "aa_n")
        cost = b["minutes"] / p["minutes"]
        out.append(("002: BAT (one step) matches or beats PGD-AT under PGD-20 and AutoAttack at about a third of the "
                    "cost", f"PGD-20 {100 * d20:+.1f} ± {100 * e20:.1f}, AA {100 * daa:+.1f} ± {100 * eaa:.1f}, "
                    f"time x{cost:.2f}",
                    combine([at_least(d20, e20), at_least(daa, eaa),
                             "reproduced" if cost < 0.5 else f"not reproduced (time x{cost:.2f})"])))
    else:
        out.append(("002: BAT matches PGD-AT at a third of the cost", "", "pending"))
    ls_keys = [k for k in labels if k.startswith(("ls_", "squeeze"))]
    for key in ls_keys:
        if need("natural", key):
            q, nat = rows[key], rows["natural"]
            d20, e20 = compare(q, nat, "pgd20")
            gap = q["pgd20"] - q["aa"]
            out.append((f"003/004: {labels[key]} alone gains PGD-20 robustness over natural training; does AutoAttack "
                        "confirm it?", f"PGD-20 {pct(q['pgd20'])} vs {pct(nat['pgd20'])}; AA {pct(q['aa'])}; "
                        f"audit: {', '.join(q['warned']) or 'silent'}",
                        combine([verdict(d20, e20), "reproduced" if q["aa"] > nat["aa"] + 2 * se(q["aa"], q["aa_n"])
                                 else f"not reproduced (AA {pct(q['aa'])}, PGD-AA gap {100 * gap:.1f})"])))
        else:
            out.append((f"003/004: {labels[key]} alone gains robustness", "", "pending"))
        top = "pgd_" + key
        if need("pgd", top):
            evidence, verdicts = gain(rows[top], rows["pgd"])
            out.append((f"003/004: {labels[key]} on top of PGD-AT raises robustness", evidence, combine(verdicts)))
        else:
            out.append((f"003/004: {labels[key]} on top of PGD-AT raises robustness", "", "pending"))
    if need("free", "ssat"):
        evidence, verdicts = gain(rows["ssat"], rows["free"])
        out.append(("000: SSAT beats Free-AT at the same replays", evidence, combine(verdicts)))
    else:
        out.append(("000: SSAT beats Free-AT at the same replays", "", "pending"))
    return out + cossat_claims(rows, cossat)
