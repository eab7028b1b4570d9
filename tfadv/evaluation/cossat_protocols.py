"""Attack protocols for a Co-SSAT model (paper 000 §6.2), on any callable `outputs_fn(images) -> dict` with the
Co-SSAT serving outputs (`logits`, `ssat_logits`, `base_logits`, `classes`): the in-process model's
`outputs` or a loaded SavedModel's `serving_default`.

* white_box: the attacker knows the detector. Each attack is run against the composite logits and against
  each branch alone; an example counts as robust only if Co-SSAT classifies all three results correctly.
* half_white_box: the attacker knows SSAT only: attacks on the SSAT logits, classified by Co-SSAT.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import tensorflow as tf

PROTOCOLS = {"white_box": ("logits", "ssat_logits", "base_logits"), "half_white_box": ("ssat_logits",)}


def evaluate(outputs_fn: Callable, x, y, specs: Sequence, protocol: str = "white_box", batch_size: int = 256,
             log: Optional[Callable] = None) -> dict:
    """Clean and per-attack robust accuracy of Co-SSAT under `protocol`, worst case per example."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown Co-SSAT protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    sources = PROTOCOLS[protocol]
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)

    def classify(images, labels):
        return tf.equal(outputs_fn(images)["classes"], labels)

    compiled = {}
    for spec in specs:
        for source in sources:
            logits_fn = (lambda key: lambda images: outputs_fn(images)[key])(source)
            compiled[(spec.name, source)] = tf.function(
                lambda images, labels, spec=spec, fn=logits_fn: classify(spec.run(fn, images, labels), labels),
                reduce_retracing=True)
    clean_fn = tf.function(classify, reduce_retracing=True)

    def batched(fn):
        parts = [fn(tf.constant(x[s:s + batch_size]), tf.constant(y[s:s + batch_size])).numpy()
                 for s in range(0, len(x), batch_size)]
        return np.concatenate(parts) if parts else np.zeros([0], bool)

    correct = batched(clean_fn)
    worst = correct.copy()
    report = {"protocol": protocol, "sources": list(sources), "clean_accuracy": float(correct.mean()),
              "num_examples": int(len(y)), "attacks": {}}
    for spec in specs:
        start = time.time()
        robust = correct.copy()
        per_source = {}
        for source in sources:
            ok = batched(compiled[(spec.name, source)]) & correct
            per_source[source] = float(ok.mean())
            robust &= ok
        worst &= robust
        report["attacks"][spec.name] = {"robust_accuracy": float(robust.mean()), "per_source": per_source,
                                        "seconds": round(time.time() - start, 3)}
        if log:
            log(f"{spec.name} ({protocol}): robust accuracy {robust.mean():.4f} {per_source}")
    report["worst_case_accuracy"] = float(worst.mean())
    return report
