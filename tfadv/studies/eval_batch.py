"""Evaluation batch size and XLA, per attack (issue 24 item 2; scripts/bench_eval_batch.py): each attack alone, on
the same images, through the Evaluator the evaluation uses, at several batch sizes, with and without XLA. Each
configuration runs twice and the second (warm: graphs traced, XLA compiled) is timed; the Evaluator's per-example
keys make the robust accuracy the same in every configuration, which the table shows beside the seconds. A
measurement, not a test: run it on a quiet machine."""

import os
import time


def _load(model_dir, data_dir, num_examples, unchecked):
    """The evaluation's own loading (`pipeline.load_model`; `unchecked` for XLA) and budget, and the test images."""
    import numpy as np

    from tfadv import data, export
    from tfadv.evaluation import api, pipeline

    fn, path = pipeline.load_model(model_dir, unchecked=unchecked)
    spec, budget = api.evaluation_budget(export.read_metadata(path))
    x, y = data.take(data.load(spec.name, data_dir).test, num_examples)
    return fn, budget, x.astype(np.float32), y.astype(np.int32)


def measure(model_dir, data_dir, num_examples, names, batch_sizes, jit_modes=(False, True), log=print):
    """[{attack, batch_size, jit, seconds, images_per_second, attacked, robust_accuracy}] for every attack name
    (e.g. `apgd_ce`, `square1000`) x batch size x XLA mode; seconds of the warm run."""
    from tfadv import evaluation

    names = list(dict.fromkeys(names))
    rows = []
    for jit in jit_modes:
        fn, budget, x, y = _load(model_dir, data_dir, num_examples, unchecked=jit)
        for name in names:
            spec = evaluation.parse_attack(name, budget.radii())
            if any(r["attack"] == spec.name and r["jit"] == jit for r in rows):
                raise ValueError(f"--attacks: {name} is {spec.name}, given twice")
            for batch_size in batch_sizes:
                evaluator = evaluation.Evaluator(fn, [spec], batch_size=batch_size, jit_compile=jit)
                evaluator(x, y)  # traces (and compiles under XLA) every batch shape it meets
                start = time.perf_counter()
                report = evaluator(x, y)
                seconds = time.perf_counter() - start
                entry = report["attacks"][spec.name]
                row = {"attack": spec.name, "batch_size": batch_size, "jit": jit, "seconds": round(seconds, 2),
                       "attacked": entry["attacked"], "robust_accuracy": entry["robust_accuracy"],
                       "images_per_second": round(entry["attacked"] / max(entry["seconds"], 1e-9), 2)}
                rows.append(row)
                if log:
                    log(f"{row['attack']:10s} batch {batch_size:4d} xla {str(jit):5s}: {seconds:7.1f} s "
                        f"({row['images_per_second']:7.1f} attacked images/s), robust {row['robust_accuracy']:.4f}")
    return rows


def markdown(rows, title):
    """One row per attack x XLA mode, a column per batch size: warm seconds (robust accuracy in brackets when it
    differs from the attack's first configuration)."""
    sizes = sorted({r["batch_size"] for r in rows})
    lines = [f"**{title}**", "", "| attack | XLA | " + " | ".join(f"batch {b}" for b in sizes) + " |",
             "|---|---|" + "---:|" * len(sizes)]
    first = {}
    for r in rows:
        first.setdefault(r["attack"], r["robust_accuracy"])
    keys = list(dict.fromkeys((r["attack"], r["jit"]) for r in rows))
    for attack, jit in keys:
        cells = []
        for b in sizes:
            match = [r for r in rows if (r["attack"], r["jit"], r["batch_size"]) == (attack, jit, b)]
            if not match:
                cells.append("")
                continue
            r = match[0]
            note = "" if r["robust_accuracy"] == first[attack] else f" (robust {r['robust_accuracy']:.4f})"
            cells.append(f"{r['seconds']:.2f} s{note}")
        lines.append(f"| {attack} | {'on' if jit else 'off'} | " + " | ".join(cells) + " |")
    load = os.getloadavg()
    lines += ["", f"(robust accuracy equal in every configuration unless given; load average {load[0]:.2f} at the end)"]
    return "\n".join(lines)
