"""Sharded evaluation: one evaluation set split into n disjoint contiguous slices, each evaluated on its own
machine (`evaluate.py --shard=i/n`), and the shard reports merged into the report one run over the whole set
gives (`scripts/merge_reports.py`).

This is exact because every random number an attack draws is keyed by the example's index in the WHOLE set
(`Evaluator(...)(x, y, index_offset=start)`), and a report's numbers are means of per-example booleans: a shard
report carries, besides its own numbers, the per-example correctness of the clean pass and of every attack
(a cascade stage's cumulative), and the merge concatenates them and recomputes clean, per-attack, cascade,
worst-case and per-norm accuracies with the runner's own formula. Times are summed over the shards (compute
time, not wall time); so are the counts of invalid attack outputs (by reason), and the max perturbation is the
largest of the shards' (the threat-model warnings are rebuilt from the merged counts).

Report parts that are not means over examples cannot be merged this way: the gradient-masking audit (its
probes, random-noise draw and gradient statistics see the whole set at once), the diagnostics and the Co-SSAT
protocols. `evaluate_model` refuses them under a shard when asked for explicitly and skips them (saying so)
when they would only run by default; the merge refuses reports that carry them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np

from tfadv.evaluation import runner
from tfadv.errors import EvaluationError

SHARD_KEY = "shard"
PER_EXAMPLE_KEY = "per_example"
# what a report holds per shard (recomputed or summed by the merge); every other field must agree across shards
_PER_SHARD_FIELDS = ("clean_accuracy", "num_examples", "attacks", "groups", "worst_case_accuracy",
                     "worst_case_by_norm", "warnings", SHARD_KEY, PER_EXAMPLE_KEY)
_THREAT_MODEL_FIELDS = ("invalid_outputs", "invalid_reasons", "max_perturbation", "max_perturbation_levels")
_PER_SHARD_ATTACK_FIELDS = ("robust_accuracy", "attacked", "seconds", "images_per_second") + _THREAT_MODEL_FIELDS
# report parts that see the whole set at once: never in a shard report, never merged
UNMERGEABLE = ("audit", "diagnostics", "cossat")
MERGED_KEY = "merged_shards"

Shard = Tuple[int, int]


def parse_shard(shard: Union[str, Sequence[int], None]) -> Optional[Shard]:
    """(index, count) of "i/n" (or of an (i, n) pair); None for None or "". EvaluationError ("--shard: ...")
    unless 0 <= i < n."""
    if shard is None or (isinstance(shard, str) and not shard.strip()):
        return None
    if isinstance(shard, str):
        match = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", shard)
        if not match:
            raise EvaluationError(f"--shard: expected i/n (shard i of n, 0-based, e.g. 0/4), got {shard!r}")
        index, count = int(match.group(1)), int(match.group(2))
    else:
        try:
            index, count = (int(v) for v in shard)
        except (TypeError, ValueError):
            raise EvaluationError(f"--shard: expected i/n or an (i, n) pair, got {shard!r}") from None
    if count < 1:
        raise EvaluationError(f"--shard: the number of shards must be at least 1, got {index}/{count}")
    if not 0 <= index < count:
        raise EvaluationError(f"--shard: the shard index must be in 0..{count - 1} (0-based) for {count} shards, "
                              f"got {index}/{count}")
    return index, count


def check_shard_size(shard: Optional[Shard], total: int, flag: str = "--num_examples"):
    """EvaluationError unless `total` examples give every one of the shards at least one example."""
    if shard is not None and total < shard[1]:
        raise EvaluationError(f"--shard: {shard[1]} shards need at least {shard[1]} examples, but {flag} gives "
                              f"{total}")


def shard_bounds(index: int, count: int, total: int) -> Tuple[int, int]:
    """[start, stop) of shard `index` of `count` over `total` examples: contiguous, disjoint, covering, sizes
    differing by at most one."""
    return index * total // count, (index + 1) * total // count


def examples_digest(x, y) -> str:
    """sha256 of the evaluation set (shape, float32 pixels, int32 labels): shards of one set agree on it."""
    x = np.ascontiguousarray(x, np.float32)
    y = np.ascontiguousarray(y, np.int32).reshape(-1)
    digest = hashlib.sha256(json.dumps([list(x.shape), list(y.shape)]).encode())
    digest.update(x.tobytes())
    digest.update(y.tobytes())
    return digest.hexdigest()


def _bits(mask) -> str:
    return "".join("1" if v else "0" for v in np.asarray(mask, bool))


def _mask(bits: str, length: int, where: str) -> np.ndarray:
    if not isinstance(bits, str) or len(bits) != length or set(bits) - {"0", "1"}:
        raise EvaluationError(f"{where}: per-example results must be a string of {length} 0/1 characters")
    return np.frombuffer(bits.encode(), np.uint8) == ord("1")


def evaluate_shard(evaluator, x, y, shard, log: Optional[Callable] = None, model: str = "model",
                   keep_adversarial: bool = False) -> dict:
    """The report of shard `shard` ("i/n" or (i, n)) of the evaluation set (x, y) by `evaluator` (a
    tfadv.evaluation.Evaluator): its examples `shard_bounds(i, n, len(y))`, each attacked with the random numbers
    it gets in a run over all of (x, y). Besides the shard's own numbers the report has what `merge_reports`
    needs: "shard" (i, n, start, stop, total_examples, examples_sha256, `model`, jit_compile) and "per_example"
    (the clean and per-attack correctness, "0"/"1" per example). `keep_adversarial`: the Evaluator's
    "adversarial" (each attack's outputs, indexed in the whole set) stays in the report."""
    index, count = parse_shard(shard)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    check_shard_size((index, count), len(y), "the evaluation set")
    start, stop = shard_bounds(index, count, len(y))
    report = evaluator(x[start:stop], y[start:stop], log, index_offset=start, keep_adversarial=keep_adversarial)
    report.pop("per_example_robust")
    correct = report.pop("per_example_correct")
    report[SHARD_KEY] = {"index": index, "count": count, "start": start, "stop": stop, "total_examples": len(y),
                         "examples_sha256": examples_digest(x, y), "model": model,
                         "jit_compile": bool(getattr(evaluator, "jit_compile", False))}
    report[PER_EXAMPLE_KEY] = {"clean": _bits(correct["clean"]),
                               "attacks": {name: _bits(m) for name, m in correct["attacks"].items()}}
    return report


def _accuracy(mask: np.ndarray) -> float:  # the runner's formula
    return float(mask.mean()) if len(mask) else 0.0


def _identity(report: dict) -> dict:
    """Everything in a shard report that must be equal across the shards of one evaluation."""
    shard = report[SHARD_KEY]
    return {**{k: v for k, v in report.items() if k not in _PER_SHARD_FIELDS},
            "attacks": [[name, {k: v for k, v in entry.items() if k not in _PER_SHARD_ATTACK_FIELDS}]
                        for name, entry in report["attacks"].items()],
            "groups": {group: entry["attacks"] for group, entry in report.get("groups", {}).items()},
            **{f"shard.{k}": shard.get(k) for k in ("count", "total_examples", "examples_sha256", "model",
                                                    "jit_compile")}}


def _check(reports: Sequence[dict], names: Sequence[str]):
    for report, name in zip(reports, names):
        if not isinstance(report, dict) or SHARD_KEY not in report or PER_EXAMPLE_KEY not in report:
            raise EvaluationError(f"{name}: not a shard report (evaluate.py --shard=i/n writes one)")
        found = [k for k in UNMERGEABLE if k in report]
        if found:
            raise EvaluationError(f"{name}: has {', '.join(found)}, which cannot be merged from shards (it needs the "
                                  f"whole evaluation set at once)")
    first, first_name = _identity(reports[0]), names[0]
    for report, name in zip(reports[1:], names[1:]):
        other = _identity(report)
        for key in sorted(set(first) | set(other)):
            if first.get(key) != other.get(key):
                what = "the attacks" if key == "attacks" else key
                raise EvaluationError(f"{name} and {first_name} are shards of different evaluations: they differ in "
                                      f"{what} ({_short(other.get(key))} vs {_short(first.get(key))})")
    count, total = reports[0][SHARD_KEY]["count"], reports[0][SHARD_KEY]["total_examples"]
    seen = {}
    for report, name in zip(reports, names):
        index = report[SHARD_KEY]["index"]
        if index in seen:
            raise EvaluationError(f"{name} and {seen[index]} are both shard {index}/{count} (overlapping shards)")
        seen[index] = name
        if (report[SHARD_KEY]["start"], report[SHARD_KEY]["stop"]) != shard_bounds(index, count, total):
            raise EvaluationError(f"{name}: shard {index}/{count} covers examples {report[SHARD_KEY]['start']}.."
                                  f"{report[SHARD_KEY]['stop'] - 1}, not {shard_bounds(index, count, total)[0]}.."
                                  f"{shard_bounds(index, count, total)[1] - 1} of {total}")
    missing = [f"{i}/{count}" for i in range(count) if i not in seen]
    if missing:
        raise EvaluationError(f"missing shards {', '.join(missing)} (got {len(seen)} of {count})")


def _short(value, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[:limit] + "..."


def merge_reports(reports: Sequence[dict], names: Optional[Sequence[str]] = None) -> dict:
    """The report of one run over the whole evaluation set, from the reports of all its shards (any order).

    Clean, per-attack, cascade, worst-case and per-norm accuracies, the attacked counts, the invalid-output
    counts (summed) and the max perturbations (the max over the shards) equal the single run's exactly, and so
    do the threat-model warnings (rebuilt from the merged counts); "seconds" is summed over the shards and
    "images_per_second" recomputed from it; the report gains `merged_shards` (count and names). EvaluationError
    when the reports are not all the shards of one evaluation (different model, budget, attacks, seed, examples or
    settings; overlapping or missing shards).
    """
    reports = list(reports)
    names = list(names) if names is not None else [f"report {i}" for i in range(len(reports))]
    if not reports:
        raise EvaluationError("no shard reports to merge")
    _check(reports, names)
    ordered = sorted(reports, key=lambda r: r[SHARD_KEY]["index"])
    for report, name in zip(reports, names):
        shard = report[SHARD_KEY]
        length = shard["stop"] - shard["start"]
        _mask(report[PER_EXAMPLE_KEY]["clean"], length, f"{name} clean")
        if set(report[PER_EXAMPLE_KEY]["attacks"]) != set(report["attacks"]):
            raise EvaluationError(f"{name}: per-example results do not name the report's attacks")

    def joined(pick):
        return np.concatenate([_mask(pick(r), r[SHARD_KEY]["stop"] - r[SHARD_KEY]["start"], "shard")
                               for r in ordered])

    merged = copy.deepcopy(ordered[0])
    other_warnings = []  # the shards' warnings other than the threat model's, which are rebuilt below
    for report in ordered:
        ours = runner.threat_model_warnings(report["attacks"])
        other_warnings += [w for w in report.get("warnings", []) if w not in ours and w not in other_warnings]
    correct = joined(lambda r: r[PER_EXAMPLE_KEY]["clean"])
    worst = correct.copy()
    worst_by_norm = {}
    merged["clean_accuracy"] = _accuracy(correct)
    merged["num_examples"] = int(len(correct))
    for name, entry in merged["attacks"].items():
        result = joined(lambda r: r[PER_EXAMPLE_KEY]["attacks"][name])
        worst &= result
        worst_by_norm.setdefault(entry["norm"], correct.copy())
        worst_by_norm[entry["norm"]] &= result
        seconds = sum(r["attacks"][name]["seconds"] for r in ordered)
        attacked = sum(r["attacks"][name]["attacked"] for r in ordered)
        entry.update({"robust_accuracy": _accuracy(result), "attacked": int(attacked), "seconds": round(seconds, 3),
                      "images_per_second": round(attacked / max(seconds, 1e-9), 1)})
        _merge_threat_model(entry, [r["attacks"][name] for r in ordered])
        if entry.get("group"):
            group = merged["groups"][entry["group"]]
            group["robust_accuracy"] = entry["robust_accuracy"]
            group["seconds"] = round(sum(merged["attacks"][s]["seconds"] for s in group["attacks"]
                                         if s in merged["attacks"]), 3)
    merged["worst_case_accuracy"] = _accuracy(worst)
    merged["worst_case_by_norm"] = {norm: _accuracy(w) for norm, w in worst_by_norm.items()}
    merged["warnings"] = other_warnings + runner.threat_model_warnings(merged["attacks"])
    if not merged["warnings"]:
        merged.pop("warnings")
    merged.pop(SHARD_KEY)
    merged.pop(PER_EXAMPLE_KEY)
    merged[MERGED_KEY] = {"count": ordered[0][SHARD_KEY]["count"],
                          "reports": [names[reports.index(r)] for r in ordered]}
    return merged


def _merge_threat_model(entry: dict, parts: Sequence[dict]):
    """An attack's threat-model fields over all shards (`parts`: its entry in each): invalid counts and reasons
    summed, max perturbations the max; a field some shard lacks (a report from before tfadv checked outputs) is
    left out rather than guessed."""
    for key in _THREAT_MODEL_FIELDS:
        if not all(key in part for part in parts):
            entry.pop(key, None)
            continue
        if key == "invalid_outputs":
            entry[key] = int(sum(part[key] for part in parts))
        elif key == "invalid_reasons":
            entry[key] = {reason: int(sum(part[key].get(reason, 0) for part in parts)) for reason in parts[0][key]}
        else:
            entry[key] = max(part[key] for part in parts)


def load_reports(paths: Sequence[str]) -> list:
    """The JSON reports at `paths`; EvaluationError naming an unreadable one."""
    loaded = []
    for path in paths:
        try:
            with open(path) as handle:
                loaded.append(json.load(handle))
        except (OSError, ValueError) as error:
            raise EvaluationError(f"{path}: cannot read a JSON report ({error})") from None
    return loaded
