"""The Evaluator: named attacks (tfadv.evaluation.specs) run batched and compiled over examples; robust accuracy
with the worst case per example, AutoAttack-style cascades for attacks of one group."""

from __future__ import annotations

import sys
import time
import zlib
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfadv.attacks import rng
from tfadv.evaluation.specs import AttackSpec


class XLAUnsupportedError(ValueError):
    """An attack that XLA cannot compile, under `jit_compile=True`."""


def _salt(spec: AttackSpec) -> int:
    """Per-attack salt of the example keys, from the canonical name: equal attacks, equal random numbers."""
    return zlib.crc32(spec.canonical_name.encode()) & 0x7FFFFFFF


class Progress:
    """A one-line progress bar with ETA on stderr for long attacks (a line per 10 % when not a terminal)."""

    def __init__(self, label: str, total: int, stream=None, enabled: bool = True):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.start = time.time()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_decile = -1

    def update(self, count: int):
        self.done += count
        if not self.enabled:
            return
        fraction = min(self.done / self.total, 1.0)
        elapsed = time.time() - self.start
        eta = elapsed / fraction * (1 - fraction) if fraction > 0 else float("nan")
        bar = "#" * int(fraction * 24)
        line = f"{self.label}: [{bar:<24}] {self.done}/{self.total} {elapsed:.0f}s elapsed, ETA {eta:.0f}s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if fraction >= 1 else ""))
            self.stream.flush()
        elif int(fraction * 10) > self._last_decile and elapsed > 5:
            self._last_decile = int(fraction * 10)
            self.stream.write(line + "\n")
            self.stream.flush()


def _batch_polymorphic(fn, jit_compile: bool = False):
    """`fn(images, labels, indices)` compiled once per image shape with an unknown batch dimension, so that a
    cascade stage left with a single point (or a last batch of one) runs the same graph as a full batch
    instead of tracing a batch-1 graph first (static batch-1 shapes broke loop invariants in attacks). With
    `jit_compile` the graph is compiled by XLA (once per batch size it meets: a full batch and a last one)."""
    compiled = {}

    def call(images, labels, indices):
        shape = tuple(images.shape[1:])
        if shape not in compiled:
            compiled[shape] = tf.function(fn, input_signature=[
                tf.TensorSpec([None, *shape], images.dtype), tf.TensorSpec([None], labels.dtype),
                tf.TensorSpec([None], indices.dtype)], **({"jit_compile": True} if jit_compile else {}))
        return compiled[shape](images, labels, indices)

    return call


class Evaluator:
    """Clean and robust accuracy of one model under a list of attacks, each compiled once.

    `logits_fn` must run the model in inference mode. Robust accuracy counts an example as robust when it is
    classified correctly both clean and under the attack; `worst_case_accuracy` is the per-example worst case
    over all attacks, each starting from the clean input. Every random choice of an attack is drawn from
    per-example keys (the example's index in the evaluation set, `seed` and the attack's name), so the numbers
    do not depend on `batch_size`; a shard of a larger evaluation set passes `index_offset` (its first
    example's index there) so that its examples draw what they draw in the whole set. Attacks sharing a `group`
    run as a cascade (AutoAttack): each only on the examples still robust to the earlier ones of its group.
    `jit_compile`: every attack graph is compiled with XLA (`tf.function(jit_compile=True)`; every built-in
    family compiles, and agrees with the plain graph: tests/test_attack_xla.py); an attack XLA cannot compile
    (e.g. a registered one calling Python) raises XLAUnsupportedError naming it.

    The report has, besides the JSON fields, `per_example_robust` (the worst case per example) and
    `per_example_correct` ({"clean": [N] bool, "attacks": {name: [N] bool}}, a cascade stage's cumulative),
    both numpy arrays: what `tfadv.evaluation.shards` merges shards from.
    """

    def __init__(self, logits_fn: Callable, specs: Sequence[AttackSpec], batch_size: int = 256, seed: int = 0,
                 progress: bool = False, jit_compile: bool = False):
        self.logits_fn = logits_fn
        self.specs = list(specs)
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.jit_compile = bool(jit_compile)
        names = [spec.name for spec in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"attack names must be unique, repeated: {duplicates}")
        self._clean = tf.function(self._correct, reduce_retracing=True)

        def attack(spec):
            def fn(images, labels, indices):
                keys = rng.example_keys(indices, self.seed, _salt(spec))
                return self._correct(spec.run(self.logits_fn, images, labels, keys), labels)

            return _batch_polymorphic(fn, self.jit_compile) if spec.compiled else fn

        self._attacks = {spec.name: attack(spec) for spec in self.specs}

    def _correct(self, images, labels):
        return tf.equal(tf.argmax(self.logits_fn(images), axis=-1, output_type=tf.int32), labels)

    def _run(self, fn, x, y, indices, label, index_offset=0):
        bar = Progress(label, len(indices), enabled=self.progress)
        outputs = []
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start:start + self.batch_size]
            outputs.append(np.asarray(fn(tf.constant(x[chunk]), tf.constant(y[chunk]),
                                         tf.constant(chunk.astype(np.int64) + index_offset))))
            bar.update(len(chunk))
        return np.concatenate(outputs) if outputs else np.zeros([0], bool)

    def __call__(self, x, y, log: Optional[Callable] = None, index_offset: int = 0) -> dict:
        """The report of (x, y); `index_offset`: the index of x[0] in the whole evaluation set (a shard's start),
        so that example i draws the random numbers of example index_offset + i (0: x is the whole set)."""
        y = np.asarray(y, np.int32)
        x = np.asarray(x, np.float32)
        index_offset = int(index_offset)
        if index_offset < 0:
            raise ValueError(f"index_offset must be >= 0, got {index_offset}")
        count = len(y)
        everything = np.arange(count)
        correct = self._run(lambda a, b, _: self._clean(a, b), x, y, everything, "clean") if count else \
            np.zeros([0], bool)
        per_attack: Dict[str, np.ndarray] = {}
        worst = correct.copy()
        worst_by_norm: Dict[str, np.ndarray] = {}  # threat models differ: l-inf and l2 worst cases apart
        groups: Dict[str, np.ndarray] = {}
        report = {"clean_accuracy": float(correct.mean()) if count else 0.0, "num_examples": int(count),
                  "seed": self.seed, "attacks": {}, "groups": {}}
        for spec in self.specs:
            robust = groups.get(spec.group, correct) if spec.group else correct
            targets = np.flatnonzero(robust)  # examples already broken (or wrong) need no attack
            start = time.time()
            result = robust.copy()
            if len(targets):
                try:
                    result[targets] = self._run(self._attacks[spec.name], x, y, targets, spec.name, index_offset)
                except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
                    if not self.jit_compile:
                        raise
                    reason = (error.message or "").strip().splitlines()[0] if error.message else type(error).__name__
                    raise XLAUnsupportedError(f"attack {spec.name} does not compile with XLA ({reason}); run it "
                                              f"without jit_compile") from None
            seconds = time.time() - start
            per_attack[spec.name] = result
            if spec.group:
                groups[spec.group] = result
            worst &= result
            worst_by_norm.setdefault(spec.norm, correct.copy())
            worst_by_norm[spec.norm] &= result
            report["attacks"][spec.name] = {
                "robust_accuracy": float(result.mean()) if count else 0.0, **spec.metadata(),
                "attacked": int(len(targets)), "seconds": round(seconds, 3),
                "images_per_second": round(len(targets) / max(seconds, 1e-9), 1),
            }
            if spec.group:
                report["attacks"][spec.name]["group"] = spec.group
                report["groups"][spec.group] = {"robust_accuracy": float(result.mean()) if count else 0.0,
                                                "attacks": [s.name for s in self.specs if s.group == spec.group],
                                                "seconds": round(sum(report["attacks"][s.name]["seconds"]
                                                                     for s in self.specs if s.group == spec.group
                                                                     and s.name in report["attacks"]), 3)}
            if log:
                scope = f" (cumulative, {spec.group})" if spec.group else ""
                log(f"{spec.name}: robust accuracy {report['attacks'][spec.name]['robust_accuracy']:.4f}{scope} "
                    f"({seconds:.1f}s, {len(targets)} attacked)")
        report["worst_case_accuracy"] = float(worst.mean()) if count else 0.0
        report["worst_case_by_norm"] = {norm: float(w.mean()) if count else 0.0 for norm, w in worst_by_norm.items()}
        report["per_example_robust"] = worst
        report["per_example_correct"] = {"clean": correct, "attacks": per_attack}
        return report


def evaluate(logits_fn: Callable, x, y, specs: Sequence[AttackSpec], batch_size: int = 256,
             log: Optional[Callable] = None, seed: int = 0, progress: bool = False, index_offset: int = 0,
             jit_compile: bool = False) -> dict:
    """One-off `Evaluator(logits_fn, specs, batch_size, seed, progress, jit_compile)(x, y, log, index_offset)`."""
    return Evaluator(logits_fn, specs, batch_size, seed, progress, jit_compile)(x, y, log, index_offset)
