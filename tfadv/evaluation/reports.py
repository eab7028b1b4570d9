"""Reports of an evaluation: a plain-text table, a Markdown summary and a bar chart."""

from __future__ import annotations

from typing import Optional

from tfadv import runs


def _perturbation(entry: dict) -> str:
    """An attack's max perturbation as the table shows it: fraction of [0, 1] (pixel levels), and its norm."""
    if "max_perturbation" not in entry:  # a report from before tfadv checked attack outputs
        return ""
    levels = f" ({entry['max_perturbation_levels']:.4g})" if "max_perturbation_levels" in entry else ""
    return f"{entry['max_perturbation']:.4g}{levels} {entry['norm']}"


def format_table(report: dict) -> str:
    """A plain-text table of a report (cascaded attacks show the accuracy after them, marked `+`): accuracy, time,
    images/s, each attack's max perturbation (fraction of [0, 1], pixel levels in brackets when known) and its
    invalid outputs; then a "WARNING:" line per warning of the report (invalid attack outputs, chance level)."""
    rows = [("clean", report["clean_accuracy"], "", "", "", "")]
    for name, entry in report["attacks"].items():
        rows.append(((" + " if entry.get("group") else "") + name, entry["robust_accuracy"],
                     f"{entry['seconds']:.1f}s", f"{entry['images_per_second']:.1f}", _perturbation(entry),
                     str(entry.get("invalid_outputs", ""))))
    for group, entry in report.get("groups", {}).items():
        rows.append((f"{group} (all)", entry["robust_accuracy"], f"{entry['seconds']:.1f}s", "", "", ""))
    by_norm = report.get("worst_case_by_norm", {})
    if len(by_norm) > 1:
        rows += [(f"worst case ({norm})", value, "", "", "", "") for norm, value in by_norm.items()]
    rows.append(("worst case" + (" (all norms)" if len(by_norm) > 1 else ""), report["worst_case_accuracy"], "", "",
                 "", ""))
    width = max(len(r[0]) for r in rows)
    size = max([len("max perturbation")] + [len(r[4]) for r in rows])
    lines = [f"{'attack'.ljust(width)}  accuracy    time  img/s  {'max perturbation'.ljust(size)}  invalid",
             f"{'-' * width}  --------  ------  -----  {'-' * size}  -------"]
    lines += [f"{name.ljust(width)}  {value * 100:7.2f}%  {t:>6}  {ips:>5}  {pert.ljust(size)}  {bad:>7}".rstrip()
              for name, value, t, ips, pert, bad in rows]
    lines.append(f"({report['num_examples']} examples" + ("; + = cascade: accuracy after this attack, run on the "
                                                          "points the earlier ones left robust)"
                                                          if report.get("groups") else ")"))
    lines += [f"WARNING: {warning}" for warning in report.get("warnings", [])]
    return "\n".join(lines)


def format_markdown(report: dict, audit: Optional[dict] = None, title: str = "Robustness report") -> str:
    """A Markdown summary: the report's warnings (bold, first), accuracy per attack with time, images/s, max
    perturbation and invalid outputs, groups, worst case, audit verdicts."""
    by_norm = report.get("worst_case_by_norm", {})
    per_norm = "".join(f"; {norm} attacks only **{value * 100:.2f} %**" for norm, value in by_norm.items()) \
        if len(by_norm) > 1 else ""
    lines = [f"# {title}", "", f"{report['num_examples']} examples; clean accuracy "
             f"**{report['clean_accuracy'] * 100:.2f} %**; worst case over all attacks "
             f"**{report['worst_case_accuracy'] * 100:.2f} %**{per_norm}.", ""]
    if report.get("warnings"):
        lines += ["**Warnings:**", ""] + [f"- **{w}**" for w in report["warnings"]] + [""]
    lines += ["| attack | norm | eps | robust accuracy | attacked | time (s) | images/s | max perturbation | "
              "invalid outputs |", "|---|---|---|---|---|---|---|---|---|"]
    for name, entry in report["attacks"].items():
        shown = f"{name} (cumulative, {entry['group']})" if entry.get("group") else name
        lines.append(f"| {shown} | {entry['norm']} | {entry['eps']:.4g} | {entry['robust_accuracy'] * 100:.2f} % | "
                     f"{entry['attacked']} | {entry['seconds']:.1f} | {entry['images_per_second']:.1f} | "
                     f"{_perturbation(entry)} | {entry.get('invalid_outputs', '')} |")
    for group, entry in report.get("groups", {}).items():
        lines += ["", f"**{group}** ({' → '.join(entry['attacks'])}): robust accuracy "
                      f"**{entry['robust_accuracy'] * 100:.2f} %** in {entry['seconds']:.1f} s."]
    if audit:
        lines += ["", "## Gradient-masking audit", "", "| check | verdict | numbers |", "|---|---|---|"]
        for name, check in audit.items():
            numbers = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                for k, v in check["numbers"].items())
            lines.append(f"| {name} | {check['verdict']} | {numbers} |")
        classified = {}
        for check in audit.values():
            classified.update(check.get("classification", {}))
        if classified:
            lines += ["", "How the audit classified the attacks it compared (and where that came from):", "",
                      "| attack | kind | norm | loss | targeted | steps | restarts | EOT | cascade | classified from |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for name, c in classified.items():
                lines.append(f"| {name} | {c['kind']} | {c['norm']} | {c['loss']} | {c['targeted']} | {c['steps']} | "
                             f"{c['restarts']} | {c['eot_iter']} | {c['group'] or ''} | {c['classified_from']} |")
    return "\n".join(lines) + "\n"


NORM_LABELS = {"linf": "l-inf attack", "l2": "l2 attack", "l1": "l1 attack"}
_COLOURS = {"clean": "#4c72b0", "linf": "#dd8452", "l2": "#55a868", "l1": "#8172b3", "group": "#c44e52",
            "worst": "#333333"}


def report_rows(report: dict) -> list:
    """The chart's bars, top to bottom, as (label, accuracy, kind): clean, each attack (cascade stages "+ name",
    kind "group"), then what report.md leads with: the worst case per norm when there are several norms, and the
    worst case over all attacks ("worst case (all norms)" with several norms)."""
    by_norm = report.get("worst_case_by_norm", {})
    rows = [("clean", report["clean_accuracy"], "clean")]
    rows += [(("+ " if e.get("group") else "") + name, e["robust_accuracy"], "group" if e.get("group") else e["norm"])
             for name, e in report["attacks"].items()]
    if len(by_norm) > 1:
        rows += [(f"worst case ({norm})", value, "worst") for norm, value in by_norm.items()]
    rows.append(("worst case" + (" (all norms)" if len(by_norm) > 1 else ""), report["worst_case_accuracy"], "worst"))
    return rows


def threat_model_line(report: dict) -> str:
    """The radii the report's attacks used, one per norm in the order l-inf, l2, l1: "l-inf eps 8/255 = 0.0314;
    l2 eps 0.5" (pixel levels when the report's budget records them, else fractions of [0, 1])."""
    budget = report.get("budget") or {}
    pixel_max = budget.get("pixel_max")
    parts = []
    for norm, key, name in (("linf", "eps", "l-inf"), ("l2", "eps_l2", "l2"), ("l1", "eps_l1", "l1")):
        radii = sorted({float(e["eps"]) for e in report["attacks"].values() if e.get("norm") == norm and "eps" in e})
        for eps in radii:
            levels = (budget.get(key) or {}).get("levels")
            if norm == "linf" and levels is not None and pixel_max and abs(levels / pixel_max - eps) < 1e-9:
                parts.append(f"{name} eps {levels:g}/{pixel_max:g} = {eps:.4g}")
            else:
                parts.append(f"{name} eps {eps:.4g}")
    return "; ".join(parts)


def report_figure(report: dict, title: str = ""):
    """The matplotlib figure of `plot_report` (the caller closes it): one horizontal bar per `report_rows` entry
    (cascade stages hatched), a dashed line at the worst case over all attacks, and a legend of the bar kinds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = report_rows(report)
    fig, ax = plt.subplots(figsize=(8.5, 0.35 * len(rows) + 1.4))
    positions = list(range(len(rows)))[::-1]
    bars = ax.barh(positions, [100 * v for _, v, _ in rows], color=[_COLOURS.get(k, "#999999") for _, _, k in rows])
    for bar, (_, value, kind) in zip(bars, rows):
        if kind == "group":
            bar.set_hatch("//")
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{100 * value:.1f}", va="center",
                fontsize=8)
    worst = 100 * report["worst_case_accuracy"]
    ax.axvline(worst, color=_COLOURS["worst"], linestyle="--", linewidth=1)
    ax.set_yticks(positions, [name for name, _, _ in rows], fontsize=8)
    ax.set_xlim(0, 108)
    ax.set_xlabel(f"accuracy (%) on {report['num_examples']} examples")
    kinds = dict.fromkeys(kind for _, _, kind in rows)
    labels = {"clean": "clean", **NORM_LABELS, "group": "cascade stage (accuracy after it)",
              "worst": "worst case (per norm, over all norms)" if len(report.get("worst_case_by_norm", {})) > 1
              else "worst case"}
    handles = [Patch(facecolor=_COLOURS.get(kind, "#999999"), hatch="//" if kind == "group" else None,
                     label=labels.get(kind, kind)) for kind in kinds]
    handles.append(plt.Line2D([], [], color=_COLOURS["worst"], linestyle="--", linewidth=1,
                              label=f"worst case over all attacks: {worst:.1f} %"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    warned = [name for name, check in report.get("audit", {}).items() if check.get("verdict") == "warn"]
    invalid = [name for name, entry in report["attacks"].items() if entry.get("invalid_outputs")]
    radii = threat_model_line(report)
    heading = title + (f" ({radii})" if radii else "") + (f"\naudit warns: {', '.join(warned)}" if warned else "") + \
        (f"\ninvalid attack outputs (counted as not broken): {', '.join(invalid)}" if invalid else "")
    ax.set_title(heading, fontsize=9, color="#c44e52" if warned or invalid else "black")
    fig.tight_layout()
    return fig


def plot_report(report: dict, path: str, title: str = "") -> str:
    """A horizontal bar chart of a report (`report_figure`): clean, each attack (cascade stages hatched,
    labelled "+"), the worst case per norm and over all norms (also a dashed line), a legend; the audit's
    warnings in the title when `report["audit"]` has any, and the attacks with invalid outputs. Returns `path`."""
    import matplotlib.pyplot as plt

    fig = report_figure(report, title)
    runs.save_figure(fig, path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
