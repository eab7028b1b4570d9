"""The evaluation benchmark (issue 24 item 5, scripts/bench_eval_peers.py): for one model and the same test images,
tfadv's AutoAttack-standard (per attack and whole, through tfadv.evaluation's Evaluator) against independent
peers on a PyTorch copy of the same network (`tfadv.studies.torch_mirror`, its logits checked against tfadv's):

* torchattacks, stage by stage: APGD-CE, APGD-T, FAB-T (multi-targeted), Square with AutoAttack's standard
  settings (Croce & Hein's `set_version("standard")`: 100 steps, 1 restart, 9 targets, 5000 queries), each on the
  points still robust to its earlier stages, as its MultiAttack runs them; the whole = the stages plus the clean
  pass. torchattacks.AutoAttack(version="standard") as shipped is a separate row: it leaves APGD, APGD-T and FAB
  at torchattacks' default of 10 steps (torchattacks 3.5.1), so it is cheaper and weaker than the standard.
* ART's AutoProjectedGradientDescent (CE, 100 steps, 1 random start, initial step 2 eps) on the points tfadv's
  APGD-CE attacked, and ART's SquareAttack (5000 queries, p_init 0.8) on the points tfadv's Square attacked.

Per row: points attacked, wall and CPU seconds (process CPU time, every thread), robust accuracy after the stage,
the per-example agreement with tfadv over the points both attacked (exact agreement is expected for FAB-T alone,
which has no random start with one restart; APGD's start and Square's proposals are random numbers the tools
draw differently), and how many times longer than tfadv the row took (wall). tfadv runs cold (the first call
traces every attack, as evaluate.py does) and, with `warm`, again with the graphs already traced. Every tool uses
the same threads: TF's intra-op pool and torch's are set to the cores this process may run on (or `threads`);
the load average before and after is recorded, with a warning when the machine is not quiet.

PyTorch, torchattacks and ART are not tfadv dependencies: this module imports them only when a peer runs, and
`missing_dependencies` names what a run needs. A measurement, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time

PEERS = ("torchattacks", "torchattacks_autoattack", "art")
NEEDS = {"torchattacks": ("torch", "torchattacks"), "torchattacks_autoattack": ("torch", "torchattacks"),
         "art": ("torch", "art")}
INSTALL = {"torch": "pip install torch==2.13.0",
           # torchattacks 3.5.1 pins requests~=2.25.1, which would downgrade requests; it imports none of its deps
           # but torch, numpy and scipy
           "torchattacks": "pip install --no-deps torchattacks==3.5.1",
           "art": "pip install adversarial-robustness-toolbox"}
ATTACKS = ("apgd_ce", "apgd_t", "fab_t", "square")  # tfadv.evaluation.AUTOATTACK's order
WHOLE = "autoattack"
LABELS = {"apgd_ce": "APGD-CE", "apgd_t": "APGD-T", "fab_t": "FAB-T", "square": "Square",
          WHOLE: "AutoAttack (whole)", "autoattack_shipped": "AutoAttack as shipped (10-step APGD, APGD-T, FAB-T)"}
MIRROR_TOLERANCE = 1e-4  # max |logit difference| relative to max |logit|


def check_peers(peers) -> list:
    """The peers, validated (ValueError naming the unknown ones)."""
    peers = [p for p in peers if p]
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise ValueError(f"--peers: unknown {', '.join(unknown)}; valid: {', '.join(PEERS)} (none: tfadv alone)")
    return peers


def missing_dependencies(peers) -> list:
    """The modules the `peers` need that are not installed, in install order."""
    wanted = [m for m in ("torch", "torchattacks", "art") if any(m in NEEDS[p] for p in peers)]
    return [m for m in wanted if importlib.util.find_spec(m) is None]


def missing_message(script: str, peers, missing) -> str:
    """The one-line refusal of a run whose peers need modules that are not installed."""
    return (f"error: {script} needs {', '.join(missing)} for --peers={','.join(peers)}, which tfadv does not "
            f"install: {' && '.join(INSTALL[m] for m in missing)} (or --peers= for tfadv alone)")


# -- per-example bookkeeping ---------------------------------------------------------------------------------------

def stage(key, attacked, robust_after, wall, cpu, **extra) -> dict:
    """One row's measurement: which points it attacked and which stayed robust (bool [N] each)."""
    import numpy as np

    return {"key": key, "attacked": np.asarray(attacked, bool), "robust_after": np.asarray(robust_after, bool),
            "wall": float(wall), "cpu": float(cpu), **extra}


def broken(row):
    """The points the row's attack broke: attacked and no longer robust."""
    return row["attacked"] & ~row["robust_after"]


def agreement(row, reference):
    """(same, common): of the points both rows attacked, on how many they agree about being broken."""
    import numpy as np

    common = row["attacked"] & reference["attacked"]
    same = common & (broken(row) == broken(reference))
    return int(np.sum(same)), int(np.sum(common))


def cascade(key_order, clean, robust_masks, clocks):
    """Rows of a cascade from its clean mask, the robust mask after each stage and each stage's (wall, cpu)."""
    rows, before = [], clean
    for key, after, (wall, cpu) in zip(key_order, robust_masks, clocks):
        rows.append(stage(key, before, after, wall, cpu))
        before = after
    return rows


# -- the table -------------------------------------------------------------------------------------------------------

def format_table(rows, reference: str) -> str:
    """Markdown: tool, attack, attacked, wall s, CPU s, robust accuracy, same outcome as `reference` (the tool
    whose rows are compared against, e.g. "tfadv (warm)"), and wall seconds over the reference's."""
    ref = {row["key"]: row for row in rows if row["tool"] == reference}
    lines = ["| tool | attack | attacked | wall s | CPU s | robust accuracy | same outcome as tfadv | x tfadv (wall) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        other = ref.get(row["key"])
        same, ratio = "", ""
        if other is not None and not row["tool"].startswith("tfadv"):
            agreed, common = agreement(row, other)
            same = f"{agreed}/{common}" + (f" ({agreed / common:.1%})" if common else "")
            ratio = f"{row['wall'] / other['wall']:.2f}" if other["wall"] > 0 else ""
        robust = row["robust_after"]
        lines.append(f"| {row['tool']} | {LABELS.get(row['key'], row['key'])} | {int(row['attacked'].sum())} | "
                     f"{row['wall']:.1f} | {row['cpu']:.1f} | {robust.mean():.4f} | {same} | {ratio} |")
    return "\n".join(lines)


def to_json(rows, reference: str) -> list:
    ref = {row["key"]: row for row in rows if row["tool"] == reference}
    out = []
    for row in rows:
        entry = {k: v for k, v in row.items() if k not in ("attacked", "robust_after")}
        entry.update(attacked=int(row["attacked"].sum()), robust_accuracy=float(row["robust_after"].mean()),
                     robust=row["robust_after"].astype(int).tolist())
        if row["key"] in ref and not row["tool"].startswith("tfadv"):
            entry["same_outcome_as_tfadv"] = list(agreement(row, ref[row["key"]]))
        out.append(entry)
    return out


def check_mirror(reference_logits, mirror_logits, tolerance: float = MIRROR_TOLERANCE) -> float:
    """max |logit difference| / max |reference logit|; RuntimeError when above `tolerance` or when the shapes
    differ (the mirror is then not the model the peers should attack)."""
    import numpy as np

    reference_logits, mirror_logits = np.asarray(reference_logits), np.asarray(mirror_logits)
    if reference_logits.shape != mirror_logits.shape:
        raise RuntimeError(f"torch mirror: logits of shape {mirror_logits.shape}, the model's {reference_logits.shape}")
    error = float(np.max(np.abs(reference_logits - mirror_logits)) / max(np.max(np.abs(reference_logits)), 1e-12))
    if not error <= tolerance:
        raise RuntimeError(f"torch mirror: max |logit difference| is {error:.3g} of max |logit|, above {tolerance:g}")
    return error


# -- running -----------------------------------------------------------------------------------------------------------

def _clocks():
    return time.perf_counter(), time.process_time()


def _since(start):
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def keras_network(location: str):
    """The float32 Keras network of a tfadv run directory (or of its saved_model/1), for the torch mirror."""
    from tfadv import export, runs

    location = os.path.normpath(location)
    for candidate in (location, os.path.dirname(os.path.dirname(location))):
        if candidate and runs.is_run(candidate):
            return export.as_float32(runs.load_run_network(candidate)[0])
    raise ValueError(f"--model_dir={location}: the torch mirror needs the Keras network: give a tfadv run directory "
                     "(flags.txt, checkpoints/final.weights.h5) or its saved_model/1")


def run_tfadv(logits_fn, x, y, radii, batch_size, seed, passes, log):
    """{pass: rows} of tfadv's AutoAttack-standard cascade through one Evaluator, called once per pass ("cold":
    tracing included; "warm": the same call again, every attack already traced), plus the clean mask."""
    import numpy as np

    from tfadv import evaluation

    specs = evaluation.autoattack_specs(radii, "linf")
    keys = {spec.name: key for spec, key in zip(specs, ATTACKS)}
    evaluator = evaluation.Evaluator(logits_fn, specs, batch_size=batch_size, seed=seed)
    results, clean = {}, None
    for label in passes:
        stamps = {}

        def stamp(line):
            name = line.split(":", 1)[0]
            if name in keys and name not in stamps:
                stamps[name] = _clocks()

        start = _clocks()
        report = evaluator(x, y, log=stamp)
        total = _since(start)
        clean = report["per_example_correct"]["clean"]
        masks = [report["per_example_correct"]["attacks"][spec.name] for spec in specs]
        previous, clocks = start, []
        for spec in specs:  # an attack with no point left to attack logs too: a zero-length stage
            now = stamps.get(spec.name, previous)
            clocks.append((now[0] - previous[0], now[1] - previous[1]))
            previous = now
        rows = cascade(ATTACKS, clean, masks, clocks)  # APGD-CE's seconds include the clean pass
        rows.append(stage(WHOLE, np.ones_like(clean), masks[-1], *total))
        results[label] = rows
        log(f"tfadv ({label}): AutoAttack {total[0]:.1f} s wall, {total[1]:.1f} s CPU, robust accuracy "
            f"{masks[-1].mean():.4f}")
    return results, clean


def torchattacks_stages(model, eps, num_classes, seed):
    """torchattacks' four AutoAttack attacks with the standard version's settings (fra31/auto-attack)."""
    import torchattacks

    common = {"norm": "Linf", "eps": eps, "seed": seed, "n_restarts": 1}
    return {"apgd_ce": torchattacks.APGD(model, steps=100, loss="ce", **common),
            "apgd_t": torchattacks.APGDT(model, steps=100, n_classes=num_classes, **common),
            "fab_t": torchattacks.FAB(model, steps=100, multi_targeted=True, n_classes=num_classes, **common),
            "square": torchattacks.Square(model, n_queries=5000, p_init=0.8, **common)}


def _attack_points(model, attack, x, y, points, batch_size, eps):
    """(broken [len(points)] bool, invalid count): `attack(images, labels) -> adversarial images` on x[points] in
    batches; an output outside the l-inf ball (float32 rounding allowed, as tfadv's threat-model check), outside
    [0, 1] or not finite counts as not broken."""
    import numpy as np
    import torch

    from tfadv.evaluation.runner import FLOAT32_EPS, threat_model_tolerance

    limit = eps + threat_model_tolerance("linf", eps, int(np.prod(x.shape[1:])))
    result, invalid = np.zeros(len(points), bool), 0
    for start in range(0, len(points), batch_size):
        chunk = torch.from_numpy(points[start:start + batch_size])
        images, labels = x[chunk], y[chunk]
        adversarial = attack(images, labels).detach()
        with torch.no_grad():
            wrong = (model(adversarial).argmax(1) != labels).numpy()
        size = (adversarial.double() - images.double()).abs().flatten(1).amax(1)
        valid = (torch.isfinite(adversarial).flatten(1).all(1) & (size <= limit)
                 & (adversarial >= -FLOAT32_EPS).flatten(1).all(1) & (adversarial <= 1 + FLOAT32_EPS).flatten(1).all(1))
        valid = valid.numpy()
        invalid += int(np.sum(~valid))
        result[start:start + len(chunk)] = wrong & valid
    return result, invalid


def _run_stage(tool, key, model, attack, x, y, robust, batch_size, eps, log):
    import numpy as np

    points = np.flatnonzero(robust)
    start = _clocks()
    hit, invalid = _attack_points(model, attack, x, y, points, batch_size, eps)
    wall, cpu = _since(start)
    after = robust.copy()
    after[points[hit]] = False
    log(f"{tool}: {LABELS[key]} on {len(points)}: {wall:.1f} s wall, {cpu:.1f} s CPU, robust accuracy "
        f"{after.mean():.4f}" + (f", {invalid} invalid outputs" if invalid else ""))
    return stage(key, robust, after, wall, cpu, **({"invalid_outputs": invalid} if invalid else {}))


def run_peers(peers, model, x, y, eps, num_classes, tfadv_rows, batch_size, seed, log):
    """The peers' rows on the torch mirror `model` (x NCHW, y int64 torch tensors); `tfadv_rows` (the
    reference pass) give ART the points tfadv's APGD-CE and Square attacked."""
    import numpy as np
    import torch

    rows = []
    start = _clocks()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).numpy()
    clean_clocks = _since(start)
    if "torchattacks" in peers:
        robust, whole = clean, list(clean_clocks)
        for key, attack in torchattacks_stages(model, eps, num_classes, seed).items():
            torch.manual_seed(seed)
            row = _run_stage("torchattacks", key, model, attack, x, y, robust, batch_size, eps, log)
            rows.append(row)
            robust = row["robust_after"]
            whole = [whole[0] + row["wall"], whole[1] + row["cpu"]]
        rows.append(stage(WHOLE, np.ones_like(clean), robust, *whole))
        rows = [{**row, "tool": "torchattacks"} for row in rows]
    if "torchattacks_autoattack" in peers:
        import torchattacks

        attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=num_classes,
                                         seed=seed)
        row = _run_stage("torchattacks", "autoattack_shipped", model, attack, x, y, np.ones_like(clean), batch_size,
                         eps, log)
        row["robust_after"] &= clean
        rows.append({**row, "tool": "torchattacks, as shipped", "key": WHOLE})
    if "art" in peers:
        from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import PyTorchClassifier

        classifier = PyTorchClassifier(model=model, loss=torch.nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
                                       nb_classes=num_classes, clip_values=(0.0, 1.0), channels_first=True,
                                       device_type="cpu")
        attacks = {"apgd_ce": AutoProjectedGradientDescent(
                       classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=100, targeted=False,
                       nb_random_init=1, batch_size=batch_size, loss_type="cross_entropy", verbose=False),
                   "square": SquareAttack(classifier, norm=np.inf, max_iter=5000, eps=eps, p_init=0.8, nb_restarts=1,
                                          batch_size=batch_size, verbose=False)}
        reference = {row["key"]: row for row in tfadv_rows}
        for key, art_attack in attacks.items():
            np.random.seed(seed)

            def attack(images, labels, art_attack=art_attack):
                return torch.from_numpy(art_attack.generate(images.numpy(), labels.numpy()))

            row = _run_stage("ART", key, model, attack, x, y, reference[key]["attacked"], batch_size, eps, log)
            row["robust_after"] = reference[key]["attacked"] & row["robust_after"]  # after tfadv's earlier stages
            rows.append({**row, "tool": "ART"})
    return rows, clean


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def _versions(peers) -> dict:
    from importlib import metadata

    names = ["tensorflow", "keras"] + (["torch"] if peers else []) + \
        (["torchattacks"] if {"torchattacks", "torchattacks_autoattack"} & set(peers) else []) + \
        (["adversarial-robustness-toolbox"] if "art" in peers else [])
    return {name: metadata.version(name) for name in names}


def cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def busy_warning(load: float, count: int):
    """A warning when the 1-minute load average says other work shares the cores (None on a quiet machine). On a
    busy machine torch's OpenMP threads wait for each other at every op (measured here: a WRN-16-2 forward pass
    4x slower in CPU time with 2 threads than with 1 under a load of 9 on 2 cores), so no figure is a
    measurement."""
    if load <= 0.5 * count:
        return None
    return (f"WARNING: load average {load:.2f} on {count} cores: the machine is not quiet, other processes take "
            f"the cores (torch's threads, which wait for each other, suffer most); the seconds are not a measurement")


def benchmark(model_dir: str, data_dir=None, num_examples: int = 100, batch_size: int = 256, peers=PEERS,
              seed: int = 0, warm: bool = True, json_path=None, threads=None, log=print) -> dict:
    """Runs tfadv and the `peers` on the first `num_examples` test images of the model at `model_dir` (a tfadv
    run directory, or its saved_model/1 for tfadv alone) with `threads` intra-op threads in TF and torch
    (default: `cores()`), prints the Markdown table and returns it with the rows (JSON-ready; also written to
    `json_path`)."""
    import numpy as np

    peers = check_peers(peers)
    threads = threads or cores()
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    except RuntimeError:  # TF already initialised (a test): its pools stay as they are
        pass
    from tfadv import data
    from tfadv.studies import autoattack_timing

    load = os.getloadavg()
    logits_fn, (spec, budget) = autoattack_timing.load_model(model_dir)
    x, y = data.take(data.load(spec.name, data_dir).test, num_examples)
    x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
    radii = budget.radii()
    eps = float(radii["linf"])
    tf_threads = (tf.config.threading.get_intra_op_parallelism_threads() or f"default ({cores()})",
                  tf.config.threading.get_inter_op_parallelism_threads() or f"default ({cores()})")
    meta = {"model_dir": model_dir, "dataset": spec.name, "num_examples": int(len(y)), "eps": eps,
            "batch_size": batch_size, "seed": seed, "cpu": _cpu_model(), "cores": cores(), "threads": threads,
            "load_average_before": [round(v, 2) for v in load], "versions": _versions(peers),
            "tf_threads": {"intra_op": str(tf_threads[0]), "inter_op": str(tf_threads[1])}}
    log(f"{model_dir}: {spec.name}, {len(y)} test images, eps {eps:.6g} (l-inf), batch {batch_size}, seed {seed}; "
        f"{meta['cpu']}, {cores()} cores, load average {load[0]:.2f}; TF threads intra-op {tf_threads[0]}, "
        f"inter-op {tf_threads[1]}")
    if busy_warning(load[0], cores()):
        log(busy_warning(load[0], cores()))
    passes = ("cold", "warm") if warm else ("cold",)
    tfadv, clean = run_tfadv(logits_fn, x, y, radii, batch_size, seed, passes, log)
    if warm and not all(np.array_equal(a["robust_after"], b["robust_after"])
                        for a, b in zip(tfadv["cold"], tfadv["warm"])):
        log("note: tfadv's cold and warm passes differ per example (threaded float sums); the warm one is compared")
    reference = f"tfadv ({passes[-1]})"
    rows = [{**row, "tool": f"tfadv ({label})"} for label in passes for row in tfadv[label]]
    if peers:
        import torch

        from tfadv.studies import torch_mirror

        torch.set_num_threads(threads)
        meta["torch_threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
        log(f"torch threads intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}")
        model = torch_mirror.mirror(keras_network(model_dir))
        xt, yt = torch_mirror.nchw(x), torch.from_numpy(y.astype(np.int64))
        with torch.no_grad():
            meta["mirror_logit_error"] = check_mirror(logits_fn(x), model(xt).numpy())
        log(f"torch mirror: max |logit difference| {meta['mirror_logit_error']:.3g} of max |logit| (limit "
            f"{MIRROR_TOLERANCE:g})")
        torch.manual_seed(seed)
        peer_rows, torch_clean = run_peers(peers, model, xt, yt, eps, spec.num_classes, tfadv[passes[-1]],
                                           batch_size, seed, log)
        meta["clean_agreement"] = int(np.sum(torch_clean == clean))
        rows += peer_rows
    meta["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    table = format_table(rows, reference)
    log(f"\nclean accuracy {clean.mean():.4f}; load average before {meta['load_average_before'][0]:.2f}, after "
        f"{meta['load_average_after'][0]:.2f}\n")
    if busy_warning(meta["load_average_after"][0], cores()):
        log(busy_warning(meta["load_average_after"][0], cores()) + "\n")
    log(table)
    log("\nsame outcome: per example, over the points both attacked (broken or not); exact agreement is expected for "
        "FAB-T only (deterministic), APGD's random start and Square's proposals being the tools' own random draws. "
        "tfadv (cold) includes tracing; APGD-CE's seconds include the clean pass; ART attacks the points tfadv's "
        "stage attacked.")
    result = {**meta, "reference": reference, "table": table, "rows": to_json(rows, reference)}
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(result, handle, indent=2)
    return result
