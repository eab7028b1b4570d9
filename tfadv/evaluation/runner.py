"""Named attacks run batched and compiled over examples; robust accuracy with the worst case per example."""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfadv import attacks

_ATTACK_PATTERN = re.compile(
    r"^(fgsm|pgd|cw|dlr|apgd_ce|apgd_dlr|apgd_t|deepfool)(\d+)?(?:_(linf|l2|l1))?(?:_r(\d+))?$")
APGD_DEFAULT_STEPS = 100


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One named attack. eps / step_size are fractions of the pixel range."""

    name: str
    kind: str  # fgsm, pgd, apgd or apgd_t
    loss: str
    steps: int
    norm: str
    restarts: int
    eps: float
    step_size: float
    # Transfer attacks craft on this source model's logits and are evaluated on the target.
    source: Optional[Callable] = dataclasses.field(default=None, compare=False, repr=False)

    def run(self, logits_fn, x, y):
        if self.source is not None:
            logits_fn = self.source
        if self.kind == "fgsm":
            return attacks.fgsm(logits_fn, x, y, eps=self.eps, loss=self.loss, norm=self.norm)
        if self.kind == "deepfool":
            # minimum-norm attack scored at the budget: robust if DeepFool needs more than eps
            from tfadv.attacks.deepfool import deepfool

            x_adv, norms = deepfool(logits_fn, x, y, norm=self.norm, max_iterations=self.steps)
            within = norms <= self.eps * (1 + 1e-6)
            return tf.where(tf.reshape(within, [-1] + [1] * (len(x.shape) - 1)), x_adv, x)
        if self.kind == "apgd":
            return attacks.apgd(logits_fn, x, y, eps=self.eps, norm=self.norm, loss=self.loss, steps=self.steps,
                                restarts=self.restarts)
        if self.kind == "apgd_t":
            return attacks.apgd_targeted(logits_fn, x, y, eps=self.eps, norm=self.norm, steps=self.steps,
                                         restarts=self.restarts)
        return attacks.pgd(logits_fn, x, y, eps=self.eps, step_size=self.step_size, steps=self.steps,
                           norm=self.norm, loss=self.loss, restarts=self.restarts, random_start=True)


def parse_attack(name: str, eps: Dict[str, float], step_size: Optional[float] = None,
                 source: Optional[Callable] = None) -> AttackSpec:
    """`fgsm`, `pgd20`, `pgd100`, `cw20` (PGD on the CW margin), `dlr50`, `apgd_ce`, `apgd_dlr`, `apgd_t` (APGD-T
    on the targeted DLR loss over the top-9 wrong classes; 100 steps unless a count follows, e.g. `apgd_ce50`),
    with optional `_l2` / `_l1` norm and
    `_rN` restarts, e.g. `pgd20_l2`, `pgd50_r5`; `transfer_<attack>` crafts on `source` (a source model's
    logits_fn) and is evaluated on the target. `eps` maps norm -> radius; PGD's default step size is eps/4
    for l-inf (2/255 at 8/255) and 2.5 eps / steps for l2 and l1 (Madry et al.).
    """
    name = name.strip()
    if name.startswith("transfer_"):
        if source is None:
            raise ValueError(f"attack {name!r} needs a source model (--source_model)")
        inner = parse_attack(name[len("transfer_"):], eps, step_size)
        return dataclasses.replace(inner, name=name, source=source)
    match = _ATTACK_PATTERN.match(name)
    if not match:
        raise ValueError(f"unknown attack {name!r}; use fgsm or pgdN / cwN / dlrN with optional _l2, _l1 and _rN, "
                         f"e.g. fgsm,pgd20,pgd100,cw20,pgd20_l2")
    family, steps, norm, restarts = match.groups()
    norm = norm or "linf"
    radius = eps[norm]
    if family == "fgsm":
        if steps or restarts:
            raise ValueError(f"attack {name!r}: fgsm takes no step count or restarts")
        return AttackSpec(name, "fgsm", "ce", 1, norm, 1, radius, radius)
    if family == "deepfool":
        if norm == "l1":
            raise ValueError(f"attack {name!r}: DeepFool supports l2 and linf")
        return AttackSpec(name, "deepfool", "margin", int(steps or 50), norm, 1, radius, radius)
    if family.startswith("apgd"):
        if norm == "l1":
            raise ValueError(f"attack {name!r}: APGD supports linf and l2")
        kind = "apgd_t" if family == "apgd_t" else "apgd"
        loss = {"apgd_ce": "ce", "apgd_dlr": "dlr", "apgd_t": "dlr"}[family]
        # APGD sets its own step size (2 eps, halved at checkpoints)
        return AttackSpec(name, kind, loss, int(steps or APGD_DEFAULT_STEPS), norm, int(restarts or 1), radius,
                          2 * radius)
    if not steps:
        raise ValueError(f"attack {name!r} needs a step count, e.g. {family}20")
    steps = int(steps)
    if steps < 1:
        raise ValueError(f"attack {name!r}: steps must be positive")
    if step_size is None:
        step_size = radius / 4 if norm == "linf" else 2.5 * radius / steps
    loss = {"pgd": "ce", "cw": "cw", "dlr": "dlr"}[family]
    return AttackSpec(name, "pgd", loss, steps, norm, int(restarts or 1), radius, step_size)


def _batched(fn: Callable, x, y, batch_size: int):
    outputs = []
    for start in range(0, len(x), batch_size):
        outputs.append(fn(tf.constant(x[start:start + batch_size]), tf.constant(y[start:start + batch_size])))
    return np.concatenate([o.numpy() for o in outputs]) if outputs else np.zeros([0], bool)


class Evaluator:
    """Clean and robust accuracy of one model under a list of attacks, each compiled once.

    `logits_fn` must run the model in inference mode. Robust accuracy counts an example as robust when it is
    classified correctly both clean and under the attack; `worst_case_accuracy` is the per-example worst case
    over all attacks, each starting from the clean input.
    """

    def __init__(self, logits_fn: Callable, specs: Sequence[AttackSpec], batch_size: int = 256):
        self.logits_fn = logits_fn
        self.specs = list(specs)
        self.batch_size = batch_size
        self._clean = tf.function(self._correct, reduce_retracing=True)
        def attack(spec):
            fn = lambda images, labels: self._correct(spec.run(self.logits_fn, images, labels), labels)  # noqa: E731
            # DeepFool stops examples one by one with Python control flow (its inner step is compiled)
            return fn if spec.kind == "deepfool" else tf.function(fn, reduce_retracing=True)

        self._attacks = {spec.name: attack(spec) for spec in self.specs}

    def _correct(self, images, labels):
        return tf.equal(tf.argmax(self.logits_fn(images), axis=-1, output_type=tf.int32), labels)

    def __call__(self, x, y, log: Optional[Callable] = None) -> dict:
        y = np.asarray(y, np.int32)
        x = np.asarray(x, np.float32)
        count = len(y)
        correct = _batched(self._clean, x, y, self.batch_size)
        worst = correct.copy()
        report = {"clean_accuracy": float(correct.mean()) if count else 0.0, "num_examples": int(count),
                  "attacks": {}}
        for spec in self.specs:
            start = time.time()
            robust = _batched(self._attacks[spec.name], x, y, self.batch_size) & correct
            seconds = time.time() - start
            worst &= robust
            report["attacks"][spec.name] = {
                "robust_accuracy": float(robust.mean()) if count else 0.0,
                "eps": spec.eps, "norm": spec.norm, "loss": spec.loss, "steps": spec.steps,
                "step_size": spec.step_size, "restarts": spec.restarts,
                "seconds": round(seconds, 3), "images_per_second": round(count / max(seconds, 1e-9), 1),
            }
            if log:
                log(f"{spec.name}: robust accuracy {report['attacks'][spec.name]['robust_accuracy']:.4f} "
                    f"({seconds:.1f}s)")
        report["worst_case_accuracy"] = float(worst.mean()) if count else 0.0
        report["per_example_robust"] = worst
        return report


def evaluate(logits_fn: Callable, x, y, specs: Sequence[AttackSpec], batch_size: int = 256,
             log: Optional[Callable] = None) -> dict:
    """One-off `Evaluator(logits_fn, specs, batch_size)(x, y)`."""
    return Evaluator(logits_fn, specs, batch_size)(x, y, log)


def format_table(report: dict) -> str:
    """A plain-text table of a report."""
    rows = [("clean", report["clean_accuracy"], "")]
    for name, entry in report["attacks"].items():
        rows.append((name, entry["robust_accuracy"], f"{entry['seconds']:.1f}s"))
    rows.append(("worst case", report["worst_case_accuracy"], ""))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'attack'.ljust(width)}  accuracy  time", f"{'-' * width}  --------  ----"]
    lines += [f"{name.ljust(width)}  {value * 100:7.2f}%  {t}" for name, value, t in rows]
    lines.append(f"({report['num_examples']} examples)")
    return "\n".join(lines)
