"""Named attacks run batched and compiled over examples; robust accuracy with the worst case per example."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
import zlib
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfadv import attacks
from tfadv.attacks import rng

_ATTACK_PATTERN = re.compile(
    r"^(fgsm|pgd|cw|dlr|apgd_ce|apgd_dlr|apgd_t|deepfool|square|fab_t)(\d+)?(?:_(linf|l2|l1))?(?:_r(\d+))?"
    r"(?:_eot(\d+))?$")
_CWL2_PATTERN = re.compile(r"^cwl2(?:_(\d+))?(?:_b(\d+))?$")
APGD_DEFAULT_STEPS = 100
FAB_DEFAULT_STEPS = 100
SQUARE_DEFAULT_QUERIES = 5000
DEEPFOOL_DEFAULT_STEPS = 50
CWL2_DEFAULT_STEPS = 1000
CWL2_DEFAULT_SEARCH = 9
# the step count a name may omit, per family (pgd / cw / dlr always name theirs)
DEFAULT_STEPS = {"fgsm": 1, "apgd_ce": APGD_DEFAULT_STEPS, "apgd_dlr": APGD_DEFAULT_STEPS, "apgd_t": APGD_DEFAULT_STEPS,
                 "fab_t": FAB_DEFAULT_STEPS, "square": SQUARE_DEFAULT_QUERIES, "deepfool": DEEPFOOL_DEFAULT_STEPS,
                 "cwl2": CWL2_DEFAULT_STEPS}
# AutoAttack-standard (Croce & Hein, 2020): each attack on the points still robust, from the clean input.
AUTOATTACK = ("apgd_ce", "apgd_t", "fab_t", "square")
# AutoAttack's version='rand' for randomised defenses: APGD-CE then APGD-DLR, 1 restart each, the gradient
# averaged over 20 EOT draws per step (fra31/auto-attack set_version('rand')).
AUTOATTACK_RAND = ("apgd_ce", "apgd_dlr")
AUTOATTACK_RAND_EOT = 20
# What the audit compares: how an attack uses the model (AttackSpec.category; recorded as "kind" in reports).
CATEGORIES = {"fgsm": "gradient", "pgd": "gradient", "apgd": "gradient", "apgd_t": "gradient",
              "square": "score_based", "deepfool": "minimum_norm", "fab_t": "minimum_norm", "cwl2": "minimum_norm"}
MIN_CLASSES = {"apgd_t": 4, "dlr": 3, "fab_t": 2}  # targeted DLR needs 4 classes, DLR 3


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One named attack. eps / step_size are fractions of the pixel range.

    `group`: attacks of one group (e.g. "autoattack") run in order, each only on the examples every earlier
    attack of the group left robust; their robust accuracy is cumulative over the group.
    """

    name: str
    kind: str  # fgsm, pgd, apgd, apgd_t, deepfool, square, fab_t or cwl2
    loss: str
    steps: int
    norm: str
    restarts: int
    eps: float
    step_size: float
    search_steps: int = 0  # C&W binary-search steps
    group: Optional[str] = None
    # Transfer attacks craft on this source model's logits and are evaluated on the target.
    source: Optional[Callable] = dataclasses.field(default=None, compare=False, repr=False)
    # APGD kinds: gradients averaged over this many forward passes per step (EOT, for randomised models)
    eot_iter: int = 1

    @property
    def family(self) -> str:
        """The attack's name stem: fgsm, pgd / cw / dlr (PGD on CE / CW margin / DLR), apgd_ce, apgd_dlr, ..."""
        if self.kind == "pgd":
            return {"ce": "pgd", "cw": "cw", "dlr": "dlr"}[self.loss]
        if self.kind == "apgd":
            return {"ce": "apgd_ce", "dlr": "apgd_dlr", "cw": "apgd_cw"}[self.loss]
        return self.kind

    @property
    def canonical_name(self) -> str:
        """The one name of this attack (`parse_attack` names every spec so): defaults left out."""
        inner = canonical_attack_name(self.family, self.steps, self.norm, self.restarts, self.search_steps,
                                      self.eot_iter)
        return f"transfer_{inner}" if self.source is not None else inner

    @property
    def category(self) -> str:
        """gradient, score_based, minimum_norm or transfer."""
        return "transfer" if self.source is not None else CATEGORIES[self.kind]

    @property
    def targeted(self) -> bool:
        return self.kind in ("apgd_t", "fab_t")

    def metadata(self) -> dict:
        """What the runner records per attack in a report (the audit classifies attacks by this alone)."""
        meta = {"attack": self.family, "kind": self.category, "norm": self.norm, "loss": self.loss, "eps": self.eps,
                "steps": self.steps, "step_size": self.step_size, "restarts": self.restarts,
                "targeted": self.targeted, "eot_iter": self.eot_iter}
        if self.kind == "cwl2":
            meta["binary_search_steps"] = self.search_steps
        return meta

    @property
    def min_classes(self) -> int:
        if self.kind == "apgd_t":
            return 4  # the targeted DLR loss
        return 3 if self.loss == "dlr" else 2

    @property
    def compiled(self) -> bool:
        # every attack is a graph (DeepFool's per-example stopping is a tf.while_loop since 2026-11-27)
        return True

    def run(self, logits_fn, x, y, keys=None):
        """Adversarial images for (x, y); `keys` ([B] int64, `tfadv.attacks.rng.example_keys`) make the random
        choices per example, so that results do not depend on batching."""
        if self.source is not None:
            logits_fn = self.source
        if self.kind == "fgsm":
            return attacks.fgsm(logits_fn, x, y, eps=self.eps, loss=self.loss, norm=self.norm)
        if self.kind == "deepfool":
            # minimum-norm attack scored at the budget: robust if DeepFool needs more than eps
            from tfadv.attacks.deepfool import deepfool

            x_adv, norms = deepfool(logits_fn, x, y, norm=self.norm, max_iterations=self.steps)
            return at_budget(x, x_adv, norms, self.eps)
        # eot_iter is passed only when it is not 1, the attacks' default
        eot = {"eot_iter": self.eot_iter} if self.eot_iter != 1 else {}
        if self.eot_iter != 1 and self.kind not in ("apgd", "apgd_t"):
            raise ValueError(f"attack {self.name!r}: eot_iter applies to APGD attacks only")
        if self.kind == "apgd":
            return attacks.apgd(logits_fn, x, y, eps=self.eps, norm=self.norm, loss=self.loss, steps=self.steps,
                                restarts=self.restarts, keys=keys, **eot)
        if self.kind == "apgd_t":
            return attacks.apgd_targeted(logits_fn, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                                         restarts=self.restarts, keys=keys, **eot)
        if self.kind == "square":
            from tfadv.attacks.square import square

            return square(logits_fn, x, y, eps=self.eps, norm=self.norm, queries=self.steps, keys=keys)
        if self.kind == "fab_t":
            from tfadv.attacks.fab import fab_targeted

            x_adv, norms = fab_targeted(logits_fn, x, y, norm=self.norm, steps=self.steps, restarts=self.restarts,
                                        keys=keys)
            return at_budget(x, x_adv, norms, self.eps)
        if self.kind == "cwl2":
            from tfadv.attacks.cw import carlini_wagner_l2

            result = carlini_wagner_l2(logits_fn, x, y, steps=self.steps, binary_search_steps=self.search_steps)
            return at_budget(x, result.x_adv, result.norms, self.eps)
        return attacks.pgd(logits_fn, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                           norm=self.norm, loss=self.loss, restarts=self.restarts, random_start=True, keys=keys)


def at_budget(x, x_adv, norms, eps: float, tolerance: float = 1e-6):
    """A minimum-norm attack scored at a budget: x_adv where its norm is within eps, else the clean x."""
    within = norms <= eps * (1.0 + tolerance)
    return tf.where(tf.reshape(within, [-1] + [1] * (len(x.shape) - 1)), x_adv, x)


def canonical_attack_name(family: str, steps: Optional[int] = None, norm: str = "linf", restarts: int = 1,
                          search_steps: Optional[int] = None, eot_iter: int = 1) -> str:
    """The one name of an attack, as `parse_attack` gives it: `family` (fgsm, pgd, cw, dlr, apgd_ce, apgd_dlr,
    apgd_t, deepfool, square, fab_t, cwl2) with its step count unless it is the family's default, then `_l2` /
    `_l1` (l-inf, the default, is left out), `_rN` for N > 1 restarts and `_eotN` for N > 1 EOT draws.
    E.g. ("pgd", 20, "linf") -> "pgd20", ("apgd_ce", 100, "l2") -> "apgd_ce_l2", ("cwl2", 1000, "l2", 1, 5) ->
    "cwl2_b5". Equal attacks get equal names, and so equal random numbers (the Evaluator salts by this name).
    """
    if family == "cwl2":
        steps = CWL2_DEFAULT_STEPS if steps is None else int(steps)
        search = CWL2_DEFAULT_SEARCH if not search_steps else int(search_steps)
        return "cwl2" + (f"_{steps}" if steps != CWL2_DEFAULT_STEPS else "") + \
            (f"_b{search}" if search != CWL2_DEFAULT_SEARCH else "")
    if family == "fgsm" or (steps is not None and DEFAULT_STEPS.get(family) == int(steps)):
        steps = None
    if steps is None and family in ("pgd", "cw", "dlr"):
        raise ValueError(f"{family} needs a step count")
    name = family + ("" if steps is None else str(int(steps)))
    name += "" if norm == "linf" else f"_{norm}"
    name += f"_r{int(restarts)}" if restarts and int(restarts) != 1 else ""
    name += f"_eot{int(eot_iter)}" if eot_iter and int(eot_iter) != 1 else ""
    return name


def parse_attack(name: str, eps: Dict[str, float], step_size: Optional[float] = None,
                 source: Optional[Callable] = None) -> AttackSpec:
    """`fgsm`, `pgd20`, `pgd100`, `cw20` (PGD on the CW margin), `dlr50`, `apgd_ce`, `apgd_dlr`, `apgd_t` (APGD-T
    on the targeted DLR loss over the top-9 wrong classes; 100 steps unless a count follows, e.g. `apgd_ce50`),
    `fab_t` (FAB-T, 9 targets x 100 steps), `square` (Square, 5000 queries unless a count follows, e.g.
    `square1000`), `deepfool`, `cwl2` (Carlini-Wagner L2: 9 binary-search steps x 1000 Adam steps;
    `cwl2_200_b5` = 200 steps x 5 searches), with optional `_l2` / `_l1` norm and `_rN` restarts, e.g.
    `pgd20_l2`, `pgd50_r5`, and for APGD `_eotN` (gradients averaged over N forward passes, for randomised
    models); `transfer_<attack>` crafts on `source` (a source model's logits_fn) and is evaluated on the
    target. `eps` maps norm -> radius; PGD's default step size is eps/4 for l-inf (2/255 at 8/255) and
    2.5 eps / steps for l2 and l1 (Madry et al.). Minimum-norm attacks (deepfool, fab_t, cwl2) count an
    example as broken when the perturbation they find is within eps.

    The spec's name is canonical (`canonical_attack_name`): `pgd20_linf`, `pgd20_r1` and `pgd20` are one
    attack named `pgd20`, with the same random numbers.
    """
    spec = _parse(name.strip(), eps, step_size, source)
    return dataclasses.replace(spec, name=spec.canonical_name)


def _parse(name, eps, step_size, source) -> AttackSpec:
    if name.startswith("transfer_"):
        if source is None:
            raise ValueError(f"attack {name!r} needs a source model (--source_model)")
        inner = _parse(name[len("transfer_"):], eps, step_size, None)
        return dataclasses.replace(inner, source=source)
    cwl2 = _CWL2_PATTERN.match(name)
    if cwl2:
        steps, search = int(cwl2.group(1) or CWL2_DEFAULT_STEPS), int(cwl2.group(2) or CWL2_DEFAULT_SEARCH)
        if steps < 1 or search < 1:
            raise ValueError(f"attack {name!r}: steps and binary-search steps must be positive")
        return AttackSpec(name, "cwl2", "cw", steps, "l2", 1, eps["l2"], 0.01, search_steps=search)
    match = _ATTACK_PATTERN.match(name)
    if not match:
        raise ValueError(f"unknown attack {name!r}; use fgsm, pgdN / cwN / dlrN, apgd_ce, apgd_dlr, apgd_t, fab_t, "
                         f"square, deepfool, cwl2 with optional _l2, _l1 and _rN, e.g. fgsm,pgd20,cw20,pgd20_l2")
    family, steps, norm, restarts, eot = match.groups()
    if eot is not None:
        if not family.startswith("apgd"):
            raise ValueError(f"attack {name!r}: _eotN applies to APGD attacks (apgd_ce, apgd_dlr, apgd_t) only")
        if int(eot) < 1:
            raise ValueError(f"attack {name!r}: the EOT count must be positive")
    eot_iter = int(eot or 1)
    norm = norm or "linf"
    radius = eps[norm]
    if family == "fgsm":
        if steps or restarts:
            raise ValueError(f"attack {name!r}: fgsm takes no step count or restarts")
        return AttackSpec(name, "fgsm", "ce", 1, norm, 1, radius, radius)
    if family in ("deepfool", "square", "fab_t", "apgd_ce", "apgd_dlr", "apgd_t") and norm == "l1":
        raise ValueError(f"attack {name!r}: {family} supports linf and l2")
    if family == "deepfool":
        return AttackSpec(name, "deepfool", "margin", int(steps or DEEPFOOL_DEFAULT_STEPS), norm, 1, radius, radius)
    if family == "square":
        if restarts:
            raise ValueError(f"attack {name!r}: square takes a query count, not restarts")
        return AttackSpec(name, "square", "margin", int(steps or SQUARE_DEFAULT_QUERIES), norm, 1, radius, radius)
    if family == "fab_t":
        return AttackSpec(name, "fab_t", "margin", int(steps or FAB_DEFAULT_STEPS), norm, int(restarts or 1), radius,
                          radius)
    if family.startswith("apgd"):
        kind = "apgd_t" if family == "apgd_t" else "apgd"
        loss = {"apgd_ce": "ce", "apgd_dlr": "dlr", "apgd_t": "dlr"}[family]
        # APGD sets its own step size (2 eps, halved at checkpoints)
        return AttackSpec(name, kind, loss, int(steps or APGD_DEFAULT_STEPS), norm, int(restarts or 1), radius,
                          2 * radius, eot_iter=eot_iter)
    if not steps:
        raise ValueError(f"attack {name!r} needs a step count, e.g. {family}20")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"attack {name!r}: steps must be positive")
    if step_size is None:
        step_size = radius / 4 if norm == "linf" else 2.5 * radius / steps
    loss = {"pgd": "ce", "cw": "cw", "dlr": "dlr"}[family]
    return AttackSpec(name, "pgd", loss, steps, norm, int(restarts or 1), radius, step_size)


def with_eot(spec: AttackSpec, eot_iter: int) -> AttackSpec:
    """An APGD spec with `eot_iter` EOT draws per step, renamed canonically (`apgd_ce` -> `apgd_ce_eot20`)."""
    if spec.kind not in ("apgd", "apgd_t"):
        raise ValueError(f"attack {spec.name!r}: eot_iter applies to APGD attacks only")
    if int(eot_iter) < 1:
        raise ValueError(f"eot_iter must be positive, got {eot_iter}")
    changed = dataclasses.replace(spec, eot_iter=int(eot_iter))
    return dataclasses.replace(changed, name=changed.canonical_name)


def autoattack_specs(eps: Dict[str, float], norm: str = "linf", version: str = "standard") -> list:
    """AutoAttack as one cascade, each attack from the clean input on the points still robust.

    version "standard": APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries), group
    "autoattack"; "rand" (for randomised defenses): APGD-CE and APGD-DLR, 100 steps, 1 restart, 20 EOT draws
    per step, group "autoattack_rand". Other norms than l-inf add `_<norm>` to the group.
    """
    suffix = "" if norm == "linf" else f"_{norm}"
    if version == "standard":
        names, group = AUTOATTACK, "autoattack"
    elif version == "rand":
        names, group = [f"{n}_eot{AUTOATTACK_RAND_EOT}" for n in AUTOATTACK_RAND], "autoattack_rand"
    else:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid: standard, rand")
    group += suffix
    return [dataclasses.replace(parse_attack(name.replace("_eot", suffix + "_eot") if "_eot" in name
                                             else name + suffix, eps), group=group) for name in names]


def check_classes(specs: Sequence[AttackSpec], num_classes: int):
    """Raises ValueError naming the attacks that need more classes than the model has."""
    bad = [f"{s.name} (needs >= {s.min_classes})" for s in specs if num_classes < s.min_classes]
    if bad:
        raise ValueError(f"the model has {num_classes} classes, too few for: {', '.join(bad)}; the DLR loss needs 3 "
                         f"classes and its targeted form (APGD-T) 4")


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


def _batch_polymorphic(fn):
    """`fn(images, labels, indices)` compiled once per image shape with an unknown batch dimension, so that a
    cascade stage left with a single point (or a last batch of one) runs the same graph as a full batch
    instead of tracing a batch-1 graph first (static batch-1 shapes broke loop invariants in attacks)."""
    compiled = {}

    def call(images, labels, indices):
        shape = tuple(images.shape[1:])
        if shape not in compiled:
            compiled[shape] = tf.function(fn, input_signature=[
                tf.TensorSpec([None, *shape], images.dtype), tf.TensorSpec([None], labels.dtype),
                tf.TensorSpec([None], indices.dtype)])
        return compiled[shape](images, labels, indices)

    return call


class Evaluator:
    """Clean and robust accuracy of one model under a list of attacks, each compiled once.

    `logits_fn` must run the model in inference mode. Robust accuracy counts an example as robust when it is
    classified correctly both clean and under the attack; `worst_case_accuracy` is the per-example worst case
    over all attacks, each starting from the clean input. Every random choice of an attack is drawn from
    per-example keys (the example's position, `seed` and the attack's name), so the numbers do not depend on
    `batch_size`. Attacks sharing a `group` run as a cascade (AutoAttack): each only on the examples still
    robust to the earlier ones of its group.
    """

    def __init__(self, logits_fn: Callable, specs: Sequence[AttackSpec], batch_size: int = 256, seed: int = 0,
                 progress: bool = False):
        self.logits_fn = logits_fn
        self.specs = list(specs)
        self.batch_size = batch_size
        self.seed = seed
        self.progress = progress
        names = [spec.name for spec in self.specs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"attack names must be unique, repeated: {duplicates}")
        self._clean = tf.function(self._correct, reduce_retracing=True)

        def attack(spec):
            def fn(images, labels, indices):
                keys = rng.example_keys(indices, self.seed, _salt(spec))
                return self._correct(spec.run(self.logits_fn, images, labels, keys), labels)

            return _batch_polymorphic(fn) if spec.compiled else fn

        self._attacks = {spec.name: attack(spec) for spec in self.specs}

    def _correct(self, images, labels):
        return tf.equal(tf.argmax(self.logits_fn(images), axis=-1, output_type=tf.int32), labels)

    def _run(self, fn, x, y, indices, label):
        bar = Progress(label, len(indices), enabled=self.progress)
        outputs = []
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start:start + self.batch_size]
            outputs.append(np.asarray(fn(tf.constant(x[chunk]), tf.constant(y[chunk]),
                                         tf.constant(chunk.astype(np.int64)))))
            bar.update(len(chunk))
        return np.concatenate(outputs) if outputs else np.zeros([0], bool)

    def __call__(self, x, y, log: Optional[Callable] = None) -> dict:
        y = np.asarray(y, np.int32)
        x = np.asarray(x, np.float32)
        count = len(y)
        everything = np.arange(count)
        correct = self._run(lambda a, b, _: self._clean(a, b), x, y, everything, "clean") if count else \
            np.zeros([0], bool)
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
                result[targets] = self._run(self._attacks[spec.name], x, y, targets, spec.name)
            seconds = time.time() - start
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
        return report


def evaluate(logits_fn: Callable, x, y, specs: Sequence[AttackSpec], batch_size: int = 256,
             log: Optional[Callable] = None, seed: int = 0, progress: bool = False) -> dict:
    """One-off `Evaluator(logits_fn, specs, batch_size, seed, progress)(x, y)`."""
    return Evaluator(logits_fn, specs, batch_size, seed, progress)(x, y, log)


def format_table(report: dict) -> str:
    """A plain-text table of a report (cascaded attacks show the accuracy after them, marked `+`)."""
    rows = [("clean", report["clean_accuracy"], "", "")]
    for name, entry in report["attacks"].items():
        rows.append(((" + " if entry.get("group") else "") + name, entry["robust_accuracy"],
                     f"{entry['seconds']:.1f}s", f"{entry['images_per_second']:.1f}"))
    for group, entry in report.get("groups", {}).items():
        rows.append((f"{group} (all)", entry["robust_accuracy"], f"{entry['seconds']:.1f}s", ""))
    by_norm = report.get("worst_case_by_norm", {})
    if len(by_norm) > 1:
        rows += [(f"worst case ({norm})", value, "", "") for norm, value in by_norm.items()]
    rows.append(("worst case" + (" (all norms)" if len(by_norm) > 1 else ""), report["worst_case_accuracy"], "", ""))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'attack'.ljust(width)}  accuracy    time  img/s", f"{'-' * width}  --------  ------  -----"]
    lines += [f"{name.ljust(width)}  {value * 100:7.2f}%  {t:>6}  {ips:>5}" for name, value, t, ips in rows]
    lines.append(f"({report['num_examples']} examples" + ("; + = cascade: accuracy after this attack, run on the "
                                                          "points the earlier ones left robust)"
                                                          if report.get("groups") else ")"))
    return "\n".join(lines)


def format_markdown(report: dict, audit: Optional[dict] = None, title: str = "Robustness report") -> str:
    """A Markdown summary: accuracy per attack with time and images/s, groups, worst case, audit verdicts."""
    by_norm = report.get("worst_case_by_norm", {})
    per_norm = "".join(f"; {norm} attacks only **{value * 100:.2f} %**" for norm, value in by_norm.items()) \
        if len(by_norm) > 1 else ""
    lines = [f"# {title}", "", f"{report['num_examples']} examples; clean accuracy "
             f"**{report['clean_accuracy'] * 100:.2f} %**; worst case over all attacks "
             f"**{report['worst_case_accuracy'] * 100:.2f} %**{per_norm}.", ""]
    lines += ["| attack | norm | eps | robust accuracy | attacked | time (s) | images/s |",
              "|---|---|---|---|---|---|---|"]
    for name, entry in report["attacks"].items():
        shown = f"{name} (cumulative, {entry['group']})" if entry.get("group") else name
        lines.append(f"| {shown} | {entry['norm']} | {entry['eps']:.4g} | {entry['robust_accuracy'] * 100:.2f} % | "
                     f"{entry['attacked']} | {entry['seconds']:.1f} | {entry['images_per_second']:.1f} |")
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


def plot_report(report: dict, path: str, title: str = "") -> str:
    """A horizontal bar chart of a report: clean, each attack (cascade stages hatched, labelled "+"), the
    worst case per norm; the audit's warnings in the title when `report["audit"]` has any. Returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("clean", report["clean_accuracy"], "clean")]
    rows += [(("+ " if e.get("group") else "") + name, e["robust_accuracy"], "group" if e.get("group") else e["norm"])
             for name, e in report["attacks"].items()]
    rows += [(f"worst case ({norm})", value, "worst") for norm, value in report.get("worst_case_by_norm", {}).items()]
    colours = {"clean": "#4c72b0", "linf": "#dd8452", "l2": "#55a868", "l1": "#8172b3", "group": "#c44e52",
               "worst": "#333333"}
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(rows) + 1.2))
    positions = list(range(len(rows)))[::-1]
    bars = ax.barh(positions, [100 * v for _, v, _ in rows], color=[colours.get(k, "#999999") for _, _, k in rows])
    for bar, (_, value, kind) in zip(bars, rows):
        if kind == "group":
            bar.set_hatch("//")
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{100 * value:.1f}", va="center",
                fontsize=8)
    ax.set_yticks(positions, [name for name, _, _ in rows], fontsize=8)
    ax.set_xlim(0, 108)
    ax.set_xlabel(f"accuracy (%) on {report['num_examples']} examples")
    warned = [name for name, check in report.get("audit", {}).items() if check.get("verdict") == "warn"]
    heading = title + (f"\naudit warns: {', '.join(warned)}" if warned else "")
    ax.set_title(heading, fontsize=9, color="#c44e52" if warned else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
