"""Attack protocols for a Co-SSAT model (paper 000 §6.2 and App. H.2), on any callable
`outputs_fn(images) -> dict` with the Co-SSAT serving outputs (`logits`, `ssat_logits`, `base_logits`,
`classes`): the in-process model's `outputs` or a loaded SavedModel's `serving_default`.

* white_box: the attacker knows the detector. Each attack is run against the composite logits and against
  each branch alone; an example counts as robust only if Co-SSAT classifies all three results correctly.
* half_white_box: the attacker knows SSAT only: attacks on the SSAT logits, classified by Co-SSAT.
* aa_dispatch (App. H.2): AutoAttack is run against each branch (M_SSAT and M_base) separately, giving twice
  as many adversarial examples; the detector dispatches each to a branch and Co-SSAT classifies it; robust
  when both are classified correctly.

Attacks of a group (AutoAttack, `AttackSpec.group`) run as a cascade per attacked source: each attack only on
the points the source still classifies correctly; the image that fooled the source (the clean one where
nothing did) is then classified by Co-SSAT. Plain attacks are classified by Co-SSAT directly. Random choices
come from per-example keys, so results do not depend on the batch size.

Every attack output is checked against the spec's threat model as the Evaluator does
(`tfadv.evaluation.runner.check_threat_model`): an invalid one fools no source and Co-SSAT classifies the clean
image instead; each attack's entry counts them over its sources (`invalid_outputs`, `invalid_reasons`, of
`attacked` outputs), records its `max_perturbation`, and the report's `warnings` name it.
"""

from __future__ import annotations

import time
import zlib
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfadv import graphs
from tfadv.attacks import rng
from tfadv.evaluation import runner

PROTOCOLS = {"white_box": ("logits", "ssat_logits", "base_logits"), "half_white_box": ("ssat_logits",),
             "aa_dispatch": ("ssat_logits", "base_logits")}


def _salt(name: str, source: str) -> int:
    return zlib.crc32(f"{name}/{source}".encode()) & 0x7FFFFFFF


def evaluate(outputs_fn: Callable, x, y, specs: Sequence, protocol: str = "white_box", batch_size: int = 256,
             log: Optional[Callable] = None, seed: int = 0) -> dict:
    """Clean and per-attack robust accuracy of Co-SSAT under `protocol`, worst case per example."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Co-SSAT protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    sources = PROTOCOLS[protocol]
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)

    def branch(source):
        return lambda images: outputs_fn(images)[source]

    def crafted(spec, source):
        def fn(images, labels, indices):
            keys = rng.example_keys(indices, seed, _salt(spec.canonical_name, source))
            x_adv = spec.run(branch(source), images, labels, keys)
            checks = runner.check_threat_model(images, x_adv, spec.norm, spec.eps)
            x_adv, valid = runner.scored(images, x_adv, checks)  # an invalid output: the clean image, fooling none
            fooled = tf.not_equal(tf.argmax(branch(source)(x_adv), -1, output_type=tf.int32), labels) & valid
            return x_adv, fooled, checks

        return graphs.function(fn, reduce_retracing=True) if spec.compiled else fn

    compiled = {(spec.name, source): crafted(spec, source) for spec in specs for source in sources}
    classify = graphs.function(lambda images: outputs_fn(images)["classes"], reduce_retracing=True)

    def batched(fn, indices, *arrays):
        outs = []
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            outs.append((chunk, fn(*[tf.constant(a[chunk]) for a in arrays], tf.constant(chunk.astype(np.int64)))))
        return outs

    def cossat_correct(images):
        idx = np.arange(len(y))
        parts = batched(lambda a, _: classify(a), idx, images)
        return (np.concatenate([p.numpy() for _, p in parts]) if parts else np.zeros([0], np.int32)) == y

    correct = cossat_correct(x)
    worst = correct.copy()
    report = {"protocol": protocol, "sources": list(sources), "clean_accuracy": float(correct.mean()),
              "num_examples": int(len(y)), "attacks": {}, "groups": {}}
    # per (group, source): the images crafted so far and which points the source still classifies correctly
    cascade = {}
    for spec in specs:
        start = time.time()
        robust = correct.copy()
        per_source = {}
        checked = []  # the threat-model checks of every output of this attack, over its sources
        for source in sources:
            if spec.group:
                key = (spec.group, source)
                if key not in cascade:
                    logits = batched(lambda a, _: branch(source)(a), np.arange(len(y)), x)
                    predicted = np.concatenate([np.argmax(p.numpy(), -1) for _, p in logits]) if logits else y
                    cascade[key] = (x.copy(), predicted == y)
                images, source_robust = cascade[key]
                targets = np.flatnonzero(source_robust & correct)
                for chunk, (x_adv, fooled, checks) in batched(compiled[(spec.name, source)], targets, x, y):
                    checked.append([c.numpy() for c in checks])
                    fooled = fooled.numpy()
                    images[chunk[fooled]] = x_adv.numpy()[fooled]
                    source_robust[chunk[fooled]] = False
                ok = cossat_correct(images) & correct
            else:
                targets = np.arange(len(y))
                parts = batched(compiled[(spec.name, source)], targets, x, y)
                checked += [[c.numpy() for c in checks] for _, (_, _, checks) in parts]
                images = np.concatenate([a.numpy() for _, (a, _, _) in parts]) if parts else x
                ok = cossat_correct(images) & correct
            per_source[source] = float(ok.mean())
            robust &= ok
        if spec.group:
            # cumulative: the group's images so far, over every source
            report["groups"][spec.group] = {"robust_accuracy": float(robust.mean()),
                                            "attacks": [s.name for s in specs if s.group == spec.group]}
        worst &= robust
        checks = [np.concatenate(part) for part in zip(*checked)] if checked else \
            [np.zeros([0], bool)] * 3 + [np.zeros([0])]
        entry = {"robust_accuracy": float(robust.mean()), "per_source": per_source,
                 "seconds": round(time.time() - start, 3), **spec.metadata(), "attacked": int(len(checks[0])),
                 **runner.threat_model_entry(*checks)}
        report["attacks"][spec.name] = entry
        if spec.group:
            entry["group"] = spec.group
        warning = runner.invalid_output_warning(spec.name, entry)
        if warning:
            report.setdefault("warnings", []).append(warning)
        if log:
            log(f"{spec.name} ({protocol}{', cumulative' if spec.group else ''}): robust accuracy "
                f"{robust.mean():.4f} {per_source}; max perturbation {entry['max_perturbation']:.6g} {spec.norm}, "
                f"{entry['invalid_outputs']} invalid")
            if warning:
                log(f"WARNING: {warning}")
    report["worst_case_accuracy"] = float(worst.mean())
    return report
