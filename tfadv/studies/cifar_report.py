"""The real-CIFAR-10 study's Markdown (the rows table beside the papers' numbers, the claims table, Co-SSAT's
detector and protocols) and its figures, from the rows' finished runs (cifar.Study.load)."""

import csv
import json
import os
import textwrap

from tfadv.studies.claims import claims as verdicts, cossat_numbers, numbers, pct, se


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
               title="Paper 001 on real CIFAR-10 (subset, WRN-16-2):\nrobust overfitting and its remedy")
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
    references = {"cifar10_ssat.png": {"pgd"}}  # drawn beside the figure's own rows, never alone
    for name, (title, keys) in groups.items():
        keys = [k for k in keys if rows.get(k)]
        if not set(keys) - references.get(name, set()):
            continue
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(keys)), 4))
        width = 0.27
        for i, (field, n_field, label) in enumerate((("clean", "n", "clean"), ("pgd20", "n", "PGD-20"),
                                                     ("aa", "aa_n", "AutoAttack"))):
            values = [100 * rows[k][field] for k in keys]
            errors = [100 * se(rows[k][field], rows[k][n_field]) for k in keys]
            ax.bar([j + (i - 1) * width for j in range(len(keys))], values, width, yerr=errors, capsize=2, label=label)
        ax.set_xticks(range(len(keys)), [labels[k] for k in keys], rotation=25, ha="right", fontsize=7)
        ax.set_ylabel("test accuracy (%), ± 1 SE")
        ax.set_title(textwrap.fill(title, 60), fontsize=10)  # a narrow figure (few rows) must not clip it
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        written.append(os.path.join(plots_dir, name))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def cossat_results(cossat_dir):
    """(metrics.json, eval.json) of the Co-SSAT build in `cossat_dir`, or None before its evaluation finished."""
    metrics_path, eval_path = os.path.join(cossat_dir, "metrics.json"), os.path.join(cossat_dir, "eval.json")
    if not os.path.exists(eval_path):
        return None
    with open(metrics_path) as metrics, open(eval_path) as report:
        return json.load(metrics), json.load(report)


def cossat_lines(results):
    """The detector line and the protocols table from `cossat_results`' (metrics, report), or pending (None)."""
    if results is None:
        return ["Co-SSAT(PGD-AT): pending (needs the SSAT and PGD-AT rows)."]
    metrics, report = results
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


def report(row_specs, paper, results, cossat_dir, plots_dir=None, links_from=".", preset_precision=None):
    """The study's Markdown: the rows table ({key: (label, flags)}, each beside `paper`[key], the paper's own
    numbers), the claims table, Co-SSAT's lines and the figures, linked relative to `links_from` (the directory
    of the Markdown file). `results`: {key: cifar.Study.load(key)}, None for a row not finished. A row trained
    in another --mixed_precision than `preset_precision` (the preset's) shows it among its flags."""
    labels = {key: label for key, (label, _) in row_specs.items()}
    rows = {key: numbers(r) for key, r in results.items() if r}
    lines = ["| row | flags (on flags/cifar10_cpu.cfg) | clean | PGD-20 | AutoAttack | AA n | RA best / final | "
             "audit warnings | train min | the paper, CIFAR-10 (for scale) |", "|" + " --- |" * 10]
    for key, (label, args) in row_specs.items():
        r = rows.get(key)
        paper_numbers = paper.get(key, "—")
        requested = ((results.get(key) or {}).get("metrics") or {}).get("precision", {}).get("requested")
        if requested and requested != preset_precision:  # a row trained off the preset's precision says so
            args += f" --mixed_precision={requested}"
        if not r:
            lines.append(f"| {label} | `{args}` | pending | | | | | | | {paper_numbers} |")
            continue
        lines.append(f"| {label} | `{args}` | {pct(r['clean'], r['n'])} | {pct(r['pgd20'], r['n'])} | "
                     f"{pct(r['aa'], r['aa_n'])} | {r['aa_n']} | {pct(r['best_ra'])} / {pct(r['pgd20'])} | "
                     f"{', '.join(r['warned']) or 'none'} | {r['minutes']:.0f} | {paper_numbers} |")
    lines += ["", "| claim | evidence (ours) | verdict |", "| --- | --- | --- |"]
    cossat = cossat_results(cossat_dir)
    lines += [f"| {claim} | {evidence} | {v} |"
              for claim, evidence, v in verdicts(rows, labels, cossat and cossat_numbers(*cossat))]
    lines += [""] + cossat_lines(cossat)
    if plots_dir:
        lines += ["", *[f"![{os.path.basename(p)}]({os.path.relpath(p, links_from)})"
                        for p in plots(rows, results, labels, plots_dir)]]
    return "\n".join(lines)
