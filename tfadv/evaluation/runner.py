"""The Evaluator: named attacks (tfadv.evaluation.specs) run batched and compiled over examples; robust accuracy
with the worst case per example, AutoAttack-style cascades for attacks of one group. Every attack's output is
checked against its spec's threat model (`check_threat_model`) before it may count against the model."""

from __future__ import annotations

import math
import sys
import time
import zlib
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfadv import graphs
from tfadv.attacks import rng
from tfadv.evaluation.specs import AT_BUDGET_TOLERANCE, AttackSpec


class XLAUnsupportedError(ValueError):
    """An attack that XLA cannot compile, under `jit_compile=True`."""


# -- the threat model ----------------------------------------------------------------------------------------------

FLOAT32_EPS = 2.0 ** -23  # float32 machine epsilon: an ulp of [1, 2), two ulps of [0.5, 1), so > one rounding there
INVALID_REASONS = ("outside_ball", "outside_box", "non_finite")


def threat_model_tolerance(norm: str, eps: float, features: int) -> float:
    """How far beyond `eps` (in `norm`, a fraction of [0, 1]) the output of an honest attack may measure from the
    clean image on images of `features` pixels, by float32 rounding alone (the check measures in float64):

    * the radius: the attack projects with eps rounded to float32 and with norms it sums in float32 over
      `features` terms (relative error below features x FLOAT32_EPS for l2 / l1; l-inf's max is exact, one
      rounding), and minimum-norm attacks keep what their own norm puts within eps (1 + AT_BUDGET_TOLERANCE);
    * the pixels: x + delta is rounded to float32, at most FLOAT32_EPS per pixel in [0, 1], so the perturbation
      may grow by FLOAT32_EPS x features^(1/p) in l-p.

    At the default radii (tfadv.config.budget) of digits and CIFAR-10 this is below 0.1 % of eps in every norm
    (l1 on 32x32x3 the most, 0.04 %): an attack gains nothing from it, and an output at 1.001 eps is refused."""
    reduction = 1 if norm == "linf" else features
    pixels = {"linf": 1.0, "l2": math.sqrt(features), "l1": float(features)}[norm]
    return float(eps) * (AT_BUDGET_TOLERANCE + FLOAT32_EPS * reduction) + FLOAT32_EPS * pixels


def check_threat_model(x, x_adv, norm: str, eps: float):
    """Per example of a batch, in float64 (so the check adds no rounding of its own): (outside_ball, outside_box,
    non_finite, perturbation). `outside_ball`: the perturbation's `norm` exceeds eps + `threat_model_tolerance`;
    `outside_box`: a pixel below -FLOAT32_EPS or above 1 + FLOAT32_EPS (clipping to [0, 1] is exact, so an honest
    attack is inside; one rounding is let through); `non_finite`: a NaN or infinite pixel; `perturbation`: the
    norm of x_adv - x over the finite pixels (0 for an output with a non-finite one, which `non_finite` counts).
    A few vectorised ops on the batch, traced into the compiled attack."""
    features = int(np.prod(x.shape[1:]))
    clean = tf.reshape(tf.cast(x, tf.float64), [-1, features])
    adversarial = tf.reshape(tf.cast(x_adv, tf.float64), [-1, features])
    finite = tf.math.is_finite(adversarial)
    non_finite = tf.logical_not(tf.reduce_all(finite, axis=1))
    delta = tf.abs(tf.where(finite, adversarial - clean, tf.zeros_like(clean)))
    if norm == "linf":
        size = tf.reduce_max(delta, axis=1)
    elif norm == "l2":
        size = tf.sqrt(tf.reduce_sum(tf.square(delta), axis=1))
    else:
        size = tf.reduce_sum(delta, axis=1)
    outside_ball = size > float(eps) + threat_model_tolerance(norm, eps, features)
    pixels = tf.where(finite, adversarial, tf.zeros_like(adversarial))
    outside_box = tf.reduce_any((pixels < -FLOAT32_EPS) | (pixels > 1.0 + FLOAT32_EPS), axis=1)
    return outside_ball, outside_box, non_finite, tf.where(non_finite, tf.zeros_like(size), size)


def scored(images, x_adv, checks):
    """(the images to classify, valid): x_adv where it keeps the threat model, the clean image where it does not
    (an invalid output never reaches the model: a SavedModel's input checks would refuse a NaN)."""
    outside_ball, outside_box, non_finite, _ = checks
    valid = tf.logical_not(outside_ball | outside_box | non_finite)
    shape = tf.concat([tf.shape(valid), tf.ones([len(images.shape) - 1], tf.int32)], 0)
    return tf.where(tf.reshape(valid, shape), tf.cast(x_adv, images.dtype), images), valid


def threat_model_entry(outside_ball, outside_box, non_finite, perturbation) -> dict:
    """The report fields of one attack from its per-example checks (numpy, over the examples it attacked)."""
    invalid = np.asarray(outside_ball) | np.asarray(outside_box) | np.asarray(non_finite)
    return {"invalid_outputs": int(invalid.sum()),
            "invalid_reasons": {reason: int(np.sum(mask)) for reason, mask in
                                zip(INVALID_REASONS, (outside_ball, outside_box, non_finite))},
            "max_perturbation": float(np.max(perturbation)) if len(perturbation) else 0.0}


def invalid_output_warning(name: str, entry: dict) -> Optional[str]:
    """The warning of an attack whose report entry counts invalid outputs (None when it has none)."""
    if not entry.get("invalid_outputs"):
        return None
    reasons = ", ".join(f"{reason} {count}" for reason, count in entry["invalid_reasons"].items() if count)
    return (f"{name}: {entry['invalid_outputs']} of {entry['attacked']} adversarial outputs break the {entry['norm']} "
            f"threat model (eps {entry['eps']:.6g}, pixels in [0, 1], finite; {reasons}); they count as not broken "
            f"by {name}, whose robust accuracy is therefore not a measurement of the model: fix the attack")


def threat_model_warnings(attacks: dict) -> list:
    """The invalid-output warnings of a report's attacks, in their order."""
    return [w for w in (invalid_output_warning(name, entry) for name, entry in attacks.items()) if w]


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
            # graphs.function: every attack's `fn` shares one code object, which TF's frequent-tracing detector
            # would read as one function retracing (a warning, issue 25)
            compiled[shape] = graphs.function(fn, input_signature=[
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

    Every attack's output is checked per example against the spec's threat model (`check_threat_model`: inside
    the eps-ball of its norm up to float32 rounding, inside [0, 1], finite); an invalid output counts as not
    broken (the clean image is classified instead), and the attack's entry counts the invalid outputs by reason
    (`invalid_outputs`, `invalid_reasons`) besides its `max_perturbation` (in its norm, a fraction of [0, 1], over
    the finite outputs); an attack with invalid outputs gets a line in `warnings` and a "WARNING:" in `log`.

    The report has, besides the JSON fields, `per_example_robust` (the worst case per example) and
    `per_example_correct` ({"clean": [N] bool, "attacks": {name: [N] bool}}, a cascade stage's cumulative),
    both numpy arrays: what `tfadv.evaluation.shards` merges shards from. With `keep_adversarial`, also
    `adversarial`: {name: {"images": [A, ...] float32, "indices": [A] int64 (index_offset + position), "broken":
    [A] bool, "valid": [A] bool}} over the A examples each attack ran on.

    `attack_logits_fn` (default: `logits_fn`): the logits the attacks' iterations see, e.g. a bfloat16 copy of
    the model (`tfadv.export.as_mixed_bfloat16`). Only the attacks use it: the clean pass and every verdict are
    `logits_fn`'s, so a returned image counts as broken only if `logits_fn` misclassifies it (an image that fools
    the copy but not `logits_fn` is robust).
    """

    def __init__(self, logits_fn: Callable, specs: Sequence[AttackSpec], batch_size: int = 256, seed: int = 0,
                 progress: bool = False, jit_compile: bool = False, attack_logits_fn: Optional[Callable] = None):
        self.logits_fn = logits_fn
        self.attack_logits_fn = attack_logits_fn if attack_logits_fn is not None else logits_fn
        self.specs = list(specs)
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        self.jit_compile = bool(jit_compile)
        names = [spec.name for spec in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"attack names must be unique, repeated: {duplicates}")
        self._clean = graphs.function(self._correct, reduce_retracing=True)

        def attack(spec):
            def fn(images, labels, indices):
                keys = rng.example_keys(indices, self.seed, _salt(spec))
                x_adv = spec.run(self.attack_logits_fn, images, labels, keys)
                checks = check_threat_model(images, x_adv, spec.norm, spec.eps)
                chosen, valid = scored(images, x_adv, checks)
                # the verdict: `logits_fn`'s (float32) classification of what the attack returned, whatever the
                # attack's iterations ran on
                correct = tf.logical_or(self._correct(chosen, labels), tf.logical_not(valid))
                return correct, *checks, x_adv

            return _batch_polymorphic(fn, self.jit_compile) if spec.compiled else fn

        self._attacks = {spec.name: attack(spec) for spec in self.specs}

    def _correct(self, images, labels):
        return tf.equal(tf.argmax(self.logits_fn(images), axis=-1, output_type=tf.int32), labels)

    def _run(self, fn, x, y, indices, label, index_offset=0, keep=None):
        """fn's outputs over `indices` in batches, each concatenated (a tuple for a tuple); `keep`: the positions
        of the outputs to keep (None: all; the others, e.g. the images, are dropped batch by batch)."""
        bar = Progress(label, len(indices), enabled=self.progress)
        outputs = []
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start:start + self.batch_size]
            out = fn(tf.constant(x[chunk]), tf.constant(y[chunk]), tf.constant(chunk.astype(np.int64) + index_offset))
            outputs.append(tuple(np.asarray(o) if keep is None or i in keep else None for i, o in enumerate(out))
                           if isinstance(out, (tuple, list)) else np.asarray(out))
            bar.update(len(chunk))
        if outputs and isinstance(outputs[0], tuple):
            return tuple(None if part[0] is None else np.concatenate(part) for part in zip(*outputs))
        return np.concatenate(outputs) if outputs else np.zeros([0], bool)

    def __call__(self, x, y, log: Optional[Callable] = None, index_offset: int = 0,
                 keep_adversarial: bool = False) -> dict:
        """The report of (x, y); `index_offset`: the index of x[0] in the whole evaluation set (a shard's start),
        so that example i draws the random numbers of example index_offset + i (0: x is the whole set);
        `keep_adversarial`: the report also holds every attack's outputs ("adversarial", see the class)."""
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
        adversarial = {}
        nothing = np.zeros([0], bool)
        for spec in self.specs:
            robust = groups.get(spec.group, correct) if spec.group else correct
            targets = np.flatnonzero(robust)  # examples already broken (or wrong) need no attack
            start = time.time()
            result = robust.copy()
            outcome, checks, images = nothing, (nothing, nothing, nothing, np.zeros([0])), None
            if len(targets):
                try:
                    outcome, *checks, images = self._run(self._attacks[spec.name], x, y, targets, spec.name,
                                                         index_offset, keep=None if keep_adversarial else range(5))
                    result[targets] = outcome
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
                "images_per_second": round(len(targets) / max(seconds, 1e-9), 1), **threat_model_entry(*checks),
            }
            if keep_adversarial:
                valid = ~(checks[0] | checks[1] | checks[2])
                adversarial[spec.name] = {
                    "images": np.asarray(images, np.float32) if images is not None else
                    np.zeros([0, *x.shape[1:]], np.float32),
                    "indices": targets.astype(np.int64) + index_offset, "broken": ~outcome & valid, "valid": valid}
            if spec.group:
                report["attacks"][spec.name]["group"] = spec.group
                report["groups"][spec.group] = {"robust_accuracy": float(result.mean()) if count else 0.0,
                                                "attacks": [s.name for s in self.specs if s.group == spec.group],
                                                "seconds": round(sum(report["attacks"][s.name]["seconds"]
                                                                     for s in self.specs if s.group == spec.group
                                                                     and s.name in report["attacks"]), 3)}
            entry = report["attacks"][spec.name]
            warning = invalid_output_warning(spec.name, entry)
            if warning:
                report.setdefault("warnings", []).append(warning)
            if log:
                scope = f" (cumulative, {spec.group})" if spec.group else ""
                log(f"{spec.name}: robust accuracy {entry['robust_accuracy']:.4f}{scope} ({seconds:.1f}s, "
                    f"{len(targets)} attacked; max perturbation {entry['max_perturbation']:.6g} {spec.norm}, "
                    f"{entry['invalid_outputs']} invalid)")
                if warning:
                    log(f"WARNING: {warning}")
        report["worst_case_accuracy"] = float(worst.mean()) if count else 0.0
        report["worst_case_by_norm"] = {norm: float(w.mean()) if count else 0.0 for norm, w in worst_by_norm.items()}
        report["per_example_robust"] = worst
        report["per_example_correct"] = {"clean": correct, "attacks": per_attack}
        if keep_adversarial:
            report["adversarial"] = adversarial
        return report


def evaluate(logits_fn: Callable, x, y, specs: Sequence[AttackSpec], batch_size: int = 256,
             log: Optional[Callable] = None, seed: int = 0, progress: bool = False, index_offset: int = 0,
             jit_compile: bool = False, attack_logits_fn: Optional[Callable] = None) -> dict:
    """One-off `Evaluator(logits_fn, specs, batch_size, seed, progress, jit_compile, attack_logits_fn)(x, y, log,
    index_offset)`."""
    return Evaluator(logits_fn, specs, batch_size, seed, progress, jit_compile, attack_logits_fn)(x, y, log,
                                                                                                   index_offset)
