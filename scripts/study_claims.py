"""Tables, claims and figures of the real-CIFAR-10 study (scripts/cifar_study.py) from its finished runs.

A claim is "reproduced" when the difference it predicts has the predicted sign and is larger than two standard
errors of that difference (independent binomial errors, sqrt(p1 q1 / n + p2 q2 / n)); "not reproduced" when
the difference is larger than two standard errors the other way, or within them ("no measurable effect" is a
failure to reproduce a claimed improvement); "mixed" when a claim's parts disagree; "pending" while a run is
missing. A "matches or beats" claim (BAT against PGD-AT) is reproduced unless ours is worse by more than two
standard errors. The best-vs-final gap compares two checkpoints on the same images, so its error is taken as
sqrt(2) standard errors (an upper bound for positively correlated outcomes). Papers' own CIFAR-10 numbers stand
beside ours for scale only (10x less data, a smaller network,
fewer epochs)."""

import csv
import json
import math
import os

# The papers' own CIFAR-10 numbers, for scale (clean / attack, %; full training set, their network and schedule),
# read from ../shared/papers: paper, table, row. "—" where the paper reports none.
PAPER = {
    "natural": "88.6 clean, ResNet-18 (003 Tab. 2)",
    "pgd": "final 82.4 / PGD-20 41.4 / AA 40.0, best-RA ckpt 80.8 / 50.7 / 47.0; ResNet-18, 200 ep (001 Tab. 1, 4)",
    "bat": "90.7 / PGD-20 55.3 (PGD-100 53.8); Madry* 88.0 / 47.6; WRN-28-10, 100 ep (002 Tab. 5, 10)",
    "trades": "final 81.8 / PGD-20 47.3, best 79.7 / 51.1; ResNet-18 (001 Tab. 2)",
    "fgsm_rs": "final 86.5 / PGD-20 37.1, best 85.8 / 43.1; ResNet-18 (001 Tab. 2)",
    "free": "81.4 / PGD-20 48.1 (m 4); WRN-34-10 (000 Tab. 1)",
    "ssat": "88.5 / PGD-20 84.2 / AA 23.7 (m 4); WRN-34-10 (000 Tab. 1, 10)",
    "pgd_kd_swa": "final 85.4 / PGD-20 51.5 / AA 49.4, best 84.7 / 52.1; ResNet-18 (001 Tab. 1, 4)",
    "pgd_kd": "final 85.3 / PGD-20 48.3, best 83.7 / 50.9; ResNet-18 (001 Tab. 1)",
    "pgd_swa": "final 84.1 / PGD-20 48.2, best 83.4 / 51.7; ResNet-18 (001 Tab. 5)",
    "ls_sls": "89.4 / FGSM 34.5 / BIM 14.2 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_als": "89.0 / FGSM 36.5 / BIM 16.7 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_bls": "88.9 / FGSM 34.6 / BIM 14.2 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_sbls": "88.1 / FGSM 15.9 / BIM 2.1 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_uniform_noise": "92.9 / PGD-20 43.0 (CE), 41.3 (CW); WRN-28-10 (004 Tab. 3, 7)",
    "squeeze_noise": "92.7 / PGD-20 52.6 (CE), 48.8 (CW); WRN-28-10 (004 Tab. 3, 7)",
    "pgd_ls_sls": "PGD-AT + label smoothing (alpha not given): final 83.5 / 44.7, best 81.3 / 50.8 (001 Tab. 6)",
}


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


def claims(rows, labels):
    """(claim, evidence, verdict) for each paper's claim, from the finished rows' numbers (`labels`: every row's)."""
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
    return out


def curves(path):
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    epochs = [int(r["epoch"]) + 1 for r in rows if r.get("val_robust_accuracy")]
    robust = [float(r["val_robust_accuracy"]) for r in rows if r.get("val_robust_accuracy")]
    clean = [float(r["val_clean_accuracy"]) for r in rows if r.get("val_robust_accuracy")]
    return epochs, robust, clean


def plots(rows, results, labels, plots_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(plots_dir, exist_ok=True)
    written = []
    smooth = [k for k in ("pgd", "pgd_kd", "pgd_swa", "pgd_kd_swa") if results.get(k)]
    if smooth:
        fig, ax = plt.subplots(figsize=(7, 4))
        for key in smooth:
            epochs, robust, clean = curves(results[key]["history"])
            line, = ax.plot(epochs, [100 * v for v in robust], label=f"{labels[key]}: robust (PGD-10)")
            ax.plot(epochs, [100 * v for v in clean], "--", color=line.get_color(), alpha=0.6,
                    label=f"{labels[key]}: clean")
        ax.set(xlabel="epoch", ylabel="held-out validation accuracy (%)",
               title="Paper 001 on real CIFAR-10 (subset, WRN-16-2): robust overfitting and its remedy")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        written.append(os.path.join(plots_dir, "cifar10_robust_overfitting.png"))
        fig.tight_layout()
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    groups = {"cifar10_baselines.png": ("Baselines and paper 002 (BAT)",
                                        ["natural", "pgd", "fgsm_rs", "free", "trades", "bat"]),
              "cifar10_label_smoothing.png": (
                  "Papers 003/004: label smoothing and logit squeezing, alone and on PGD-AT",
                  [k for k in labels if k.startswith(("ls_", "squeeze", "pgd_ls", "pgd_squeeze"))]),
              "cifar10_ssat.png": ("Paper 000: SSAT vs Free-AT (same replays)", ["free", "ssat", "pgd"])}
    for name, (title, keys) in groups.items():
        keys = [k for k in keys if rows.get(k)]
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 4))
        width = 0.27
        for i, (field, n_field, label) in enumerate((("clean", "n", "clean"), ("pgd20", "n", "PGD-20"),
                                                     ("aa", "aa_n", "AutoAttack"))):
            values = [100 * rows[k][field] for k in keys]
            errors = [100 * se(rows[k][field], rows[k][n_field]) for k in keys]
            ax.bar([j + (i - 1) * width for j in range(len(keys))], values, width, yerr=errors, capsize=2, label=label)
        ax.set_xticks(range(len(keys)), [labels[k] for k in keys], rotation=25, ha="right", fontsize=7)
        ax.set(ylabel="test accuracy (%), ± 1 SE", title=title)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(os.path.join(plots_dir, name))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def cossat_lines(cossat_dir):
    metrics_path, eval_path = os.path.join(cossat_dir, "metrics.json"), os.path.join(cossat_dir, "eval.json")
    if not os.path.exists(eval_path):
        return ["Co-SSAT(PGD-AT): pending (needs the SSAT and PGD-AT rows)."]
    metrics, report = json.load(open(metrics_path)), json.load(open(eval_path))
    chosen = metrics["detector_calibration"].get("dlr", {})
    lines = [f"Co-SSAT(PGD-AT) detector (DLR, calibrated on training images): ROC AUC "
             f"{metrics['detector_auc'].get('dlr', float('nan')):.3f}, balanced accuracy "
             f"{chosen.get('balanced_accuracy', float('nan')):.3f} (TPR {chosen.get('tpr', float('nan')):.3f}, "
             f"FPR {chosen.get('fpr', float('nan')):.3f}).", "",
             "| protocol | clean | PGD-20 | AutoAttack (worst case) | n |", "| --- | --- | --- | --- | --- |"]
    for protocol, result in report.get("cossat", {}).items():
        n = result["num_examples"]
        pgd = result["attacks"].get("pgd20", {}).get("robust_accuracy")
        lines.append(f"| {protocol} | {pct(result['clean_accuracy'], n)} | {pct(pgd, n)} | "
                     f"{pct(result['worst_case_accuracy'], n)} | {n} |")
    return lines


def report(row_specs, results, cossat_dir, plots_dir=None, links_from="."):
    """The study's Markdown: the rows table, the claims table, Co-SSAT's lines and the figures, linked relative to
    `links_from` (the directory of the Markdown file)."""
    labels = {key: label for key, (label, _) in row_specs.items()}
    rows = {key: numbers(r) for key, r in results.items() if r}
    lines = ["| row | flags (on flags/cifar10_cpu.cfg) | clean | PGD-20 | AutoAttack | AA n | RA best / final | "
             "audit warnings | train min | the paper, CIFAR-10 (for scale) |", "|" + " --- |" * 10]
    for key, (label, args) in row_specs.items():
        r = rows.get(key)
        paper = PAPER.get(key, "—")
        if not r:
            lines.append(f"| {label} | `{args}` | pending | | | | | | | {paper} |")
            continue
        lines.append(f"| {label} | `{args}` | {pct(r['clean'], r['n'])} | {pct(r['pgd20'], r['n'])} | "
                     f"{pct(r['aa'], r['aa_n'])} | {r['aa_n']} | {pct(r['best_ra'])} / {pct(r['pgd20'])} | "
                     f"{', '.join(r['warned']) or 'none'} | {r['minutes']:.0f} | {paper} |")
    lines += ["", "| claim | evidence (ours) | verdict |", "| --- | --- | --- |"]
    lines += [f"| {claim} | {evidence} | {v} |" for claim, evidence, v in claims(rows, labels)]
    lines += [""] + cossat_lines(cossat_dir)
    if plots_dir:
        lines += ["", *[f"![{os.path.basename(p)}]({os.path.relpath(p, links_from)})"
                        for p in plots(rows, results, labels, plots_dir)]]
    return "\n".join(lines)
