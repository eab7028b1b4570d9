"""Co-SSAT (paper 000 §5, App. G): a detector on the SSAT logits routes suspected targeted attacks to a base
(e.g. PGD-AT) model.

Detector metrics on the SSAT logits z (sorted z_pi1 >= z_pi2 >= ...), DESIGN item 2:
  dlr      (z_pi1 - z_pi2) / (z_pi1 - z_pi3 + 1e-12)  — small when the top two are close (targeted attacks)
  top1     z_pi1;  top2  z_pi2;  kl_uniform  KL(p || uniform);  cw_abs  z_pi1 - z_pi2
Single-metric mode: d = 1[dlr <= tau] selects the base model. Vote mode (App. G.2): each metric has its own
threshold and direction; d = 1 when at least 3 of the 5 say "targeted". The Co-SSAT output (Eq. 11) is
d * f_base(x) + (1 - d) * f_ssat(x).

Calibration (App. G.1) has twice as many positives (targeted: CW-PGD and APGD-T) as negatives (untargeted
PGD-CE), so tau (and each vote threshold) maximises the balanced accuracy (TPR + TNR) / 2 at the required
recall by default; subsampling the positives, or plain accuracy on the 2:1 set, are the BALANCES options.

Building a Co-SSAT model from an SSAT run and a base run (calibration, reports, SavedModel) is
`tfadv.cossat_build.build`, which scripts/build_cossat.py calls.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf

from tfadv import graphs, runs

METRICS = ("dlr", "top1", "top2", "kl_uniform", "cw_abs")
MODES = ("dlr", "vote")
# One random-start stream per calibration attack (rng.example_keys salts), so no two share a start.
CALIBRATION_SALTS = {"pgd_ce": 1, "pgd_cw": 2, "apgd_t": 3}


def detector_metrics(logits) -> Dict[str, tf.Tensor]:
    """The five detector metrics [B] of each row of SSAT logits [B, K] (K >= 3)."""
    logits = tf.cast(logits, tf.float32)
    top = tf.sort(logits, axis=-1, direction="DESCENDING")
    num_classes = tf.cast(tf.shape(logits)[-1], tf.float32)
    log_p = tf.nn.log_softmax(logits, axis=-1)
    return {
        "dlr": (top[:, 0] - top[:, 1]) / (top[:, 0] - top[:, 2] + 1e-12),
        "top1": top[:, 0],
        "top2": top[:, 1],
        "kl_uniform": tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1) + tf.math.log(num_classes),
        "cw_abs": top[:, 0] - top[:, 1],
    }


@dataclasses.dataclass
class Threshold:
    """`metric <= value` (direction "le") or `metric >= value` ("ge") flags an input as targeted."""

    value: float
    direction: str = "le"

    def flags(self, metric):
        value = tf.constant(self.value, tf.float32)
        return metric <= value if self.direction == "le" else metric >= value


@dataclasses.dataclass
class Detector:
    mode: str = "dlr"
    thresholds: Dict[str, Threshold] = dataclasses.field(default_factory=lambda: {"dlr": Threshold(0.1)})
    min_votes: int = 3

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"detector mode must be one of {MODES}, got {self.mode!r}")
        needed = ("dlr",) if self.mode == "dlr" else METRICS
        missing = [m for m in needed if m not in self.thresholds]
        if missing:
            raise ValueError(f"detector mode {self.mode!r} needs thresholds for {missing}")

    def decide(self, ssat_logits):
        """(use_base [B] bool, dlr [B], votes [B] int32)."""
        metrics = detector_metrics(ssat_logits)
        votes = tf.add_n([tf.cast(self.thresholds[m].flags(metrics[m]), tf.int32)
                          for m in METRICS if m in self.thresholds])
        if self.mode == "dlr":
            use_base = self.thresholds["dlr"].flags(metrics["dlr"])
        else:
            use_base = votes >= self.min_votes
        return use_base, metrics["dlr"], votes

    def to_json(self) -> dict:
        return {"mode": self.mode, "min_votes": self.min_votes,
                "thresholds": {k: dataclasses.asdict(v) for k, v in self.thresholds.items()}}

    @classmethod
    def from_json(cls, value: dict) -> "Detector":
        return cls(value["mode"], {k: Threshold(**v) for k, v in value["thresholds"].items()},
                   value.get("min_votes", 3))


class CoSSAT(tf.Module):
    """SSAT + base network + detector; `outputs(images)` is the serving contract, `logits(images)` the
    Co-SSAT decision (Eq. 11) for attacks and evaluation. Both networks run in inference mode."""

    def __init__(self, ssat_network, base_network, detector: Detector):
        super().__init__()
        self.ssat_network = ssat_network
        self.base_network = base_network
        self.detector = detector

    def outputs(self, images):
        ssat_logits = tf.cast(self.ssat_network(images, training=False), tf.float32)
        base_logits = tf.cast(self.base_network(images, training=False), tf.float32)
        use_base, dlr, votes = self.detector.decide(ssat_logits)
        logits = tf.where(use_base[:, None], base_logits, ssat_logits)
        return {
            "logits": logits,
            "probabilities": tf.nn.softmax(logits, axis=-1),
            "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "use_base": use_base,
            "dlr": dlr,
            "votes": votes,
            "ssat_logits": ssat_logits,
            "base_logits": base_logits,
        }

    def logits(self, images):
        return self.outputs(images)["logits"]


# ----------------------------------------------------------------------------------------------------------
# calibration (App. G.1)


def roc_curve(positive: np.ndarray, negative: np.ndarray, direction: str = "le"):
    """(fpr, tpr, thresholds) sweeping a threshold over all observed values; "le": low values flag."""
    sign = 1.0 if direction == "le" else -1.0
    scores = np.concatenate([positive, negative]) * sign
    truth = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    tps = np.cumsum(truth)
    fps = np.cumsum(1 - truth)
    last = np.r_[np.diff(scores) != 0, True]  # keep the last index of every distinct score
    tpr = np.r_[0.0, tps[last] / max(len(positive), 1)]
    fpr = np.r_[0.0, fps[last] / max(len(negative), 1)]
    thresholds = np.r_[-np.inf, scores[last]] * sign
    return fpr, tpr, thresholds


def auc(fpr, tpr) -> float:
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def confusion(positive: np.ndarray, negative: np.ndarray, threshold: Threshold) -> dict:
    """TPR, FPR, precision and accuracy of one threshold (the columns of paper 000 Table 7), plus the balanced
    accuracy (TPR + TNR) / 2, which does not depend on the ratio of positives to negatives."""
    flag = (lambda v: v <= threshold.value) if threshold.direction == "le" else (lambda v: v >= threshold.value)
    tp, fp = int(np.sum(flag(positive))), int(np.sum(flag(negative)))
    fn, tn = len(positive) - tp, len(negative) - fp
    total = max(tp + fp + tn + fn, 1)
    tpr, fpr = tp / max(tp + fn, 1), fp / max(fp + tn, 1)
    return {"threshold": float(threshold.value), "direction": threshold.direction,
            "tpr": tpr, "fpr": fpr, "precision": tp / max(tp + fp, 1), "accuracy": (tp + tn) / total,
            "balanced_accuracy": (tpr + 1.0 - fpr) / 2}


CRITERIA = ("balanced_accuracy", "accuracy")
# How calibration copes with its 2:1 class ratio (targeted CW-PGD and APGD-T positives vs untargeted PGD-CE
# negatives), where a detector flagging everything already has accuracy 0.667:
#   balanced_accuracy  all examples; tau maximises (TPR + TNR) / 2 at the required recall (default)
#   subsample          the larger class is randomly subsampled to the size of the smaller; tau maximises accuracy
#   none               all examples; tau maximises plain accuracy (the class ratio biases tau toward flagging)
BALANCES = ("balanced_accuracy", "subsample", "none")


def choose_threshold(positive: np.ndarray, negative: np.ndarray, min_recall: float = 0.9,
                     candidates: int = 200, criterion: str = "balanced_accuracy"):
    """Grid search (App. G.1): the direction from the AUC; among thresholds with TPR >= min_recall, the one
    with the best `criterion` ("balanced_accuracy" or "accuracy"; ties: the higher TPR, then the first); if
    none reaches min_recall, the best overall. Candidates are the observed scores (or, when there are more
    than `candidates` distinct ones, that many quantiles). Returns (Threshold, table, auc)."""
    if criterion not in CRITERIA:
        raise ValueError(f"threshold criterion must be one of {CRITERIA}, got {criterion!r}")
    fpr, tpr, _ = roc_curve(positive, negative, "le")
    area = auc(fpr, tpr)
    direction = "le" if area >= 0.5 else "ge"
    if direction == "ge":
        fpr, tpr, _ = roc_curve(positive, negative, "ge")
        area = auc(fpr, tpr)
    scores = np.concatenate([positive, negative])
    values = np.unique(scores)
    if len(values) > candidates:
        values = np.unique(np.quantile(scores, np.linspace(0, 1, candidates)))
    table = [confusion(positive, negative, Threshold(float(v), direction)) for v in values]
    eligible = [row for row in table if row["tpr"] >= min_recall] or table
    best = max(eligible, key=lambda row: (row[criterion], row["tpr"]))
    return Threshold(best["threshold"], direction), table, area


def balance_classes(num_positive: int, num_negative: int, seed: int = 0):
    """(positive indices, negative indices): every example of the smaller class and a random subset, without
    replacement and in original order, of the larger one of the same size."""
    rng = np.random.default_rng(seed)
    size = min(num_positive, num_negative)

    def keep(count):
        return np.arange(count) if count == size else np.sort(rng.choice(count, size, replace=False))

    return keep(num_positive), keep(num_negative)


def calibrate(positive_logits, negative_logits, mode: str = "dlr", min_recall: float = 0.9,
              balance: str = "balanced_accuracy", seed: int = 0) -> tuple:
    """A Detector from SSAT logits on targeted (positive) and untargeted (negative) adversarial examples.

    `balance` (one of BALANCES) says how the unequal class sizes are handled; `seed` drives "subsample".
    Returns (detector, report) where the report holds the examples used per class, per metric the AUC, the
    ROC curve, the candidate table and the chosen threshold's confusion (accuracy and balanced accuracy),
    and in vote mode the same for the 3-of-5 vote.
    """
    if balance not in BALANCES:
        raise ValueError(f"calibration balance must be one of {BALANCES}, got {balance!r}")
    positive = {k: v.numpy() for k, v in detector_metrics(positive_logits).items()}
    negative = {k: v.numpy() for k, v in detector_metrics(negative_logits).items()}
    num_positive, num_negative = len(positive["dlr"]), len(negative["dlr"])
    if balance == "subsample":
        keep_positive, keep_negative = balance_classes(num_positive, num_negative, seed)
        positive = {k: v[keep_positive] for k, v in positive.items()}
        negative = {k: v[keep_negative] for k, v in negative.items()}
    criterion = "balanced_accuracy" if balance == "balanced_accuracy" else "accuracy"
    thresholds = {}
    report = {"metrics": {}, "mode": mode, "min_recall": min_recall, "balance": balance, "criterion": criterion,
              "num_positive": len(positive["dlr"]), "num_negative": len(negative["dlr"]),
              "num_positive_available": num_positive, "num_negative_available": num_negative}
    for metric in METRICS:
        threshold, table, area = choose_threshold(positive[metric], negative[metric], min_recall,
                                                  criterion=criterion)
        fpr, tpr, _ = roc_curve(positive[metric], negative[metric], threshold.direction)
        thresholds[metric] = threshold
        report["metrics"][metric] = {"auc": area, "chosen": confusion(positive[metric], negative[metric], threshold),
                                     "candidates": table, "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
    detector = Detector(mode, thresholds if mode == "vote" else {"dlr": thresholds["dlr"]})
    if mode == "vote":
        votes_pos = sum(thresholds[m].flags(tf.constant(positive[m])).numpy().astype(int) for m in METRICS)
        votes_neg = sum(thresholds[m].flags(tf.constant(negative[m])).numpy().astype(int) for m in METRICS)
        report["vote"] = confusion(-votes_pos.astype(float), -votes_neg.astype(float),
                                   Threshold(-float(detector.min_votes), "le"))
    return detector, report


def plot_roc(report: dict, path: str):
    """Each metric's ROC curve with its chosen operating point, labelled with accuracy and balanced accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for metric, entry in report["metrics"].items():
        c = entry["chosen"]
        line, = ax.plot(entry["roc"]["fpr"], entry["roc"]["tpr"], label=(
            f"{metric} AUC {entry['auc']:.3f}; chosen: acc {c['accuracy']:.3f}, bal. acc {c['balanced_accuracy']:.3f}"))
        ax.plot([c["fpr"]], [c["tpr"]], marker="o", color=line.get_color())
    if "vote" in report:
        v = report["vote"]
        ax.plot([v["fpr"]], [v["tpr"]], marker="*", markersize=12, color="black", linestyle="none",
                label=f"3-of-5 vote: acc {v['accuracy']:.3f}, bal. acc {v['balanced_accuracy']:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate (untargeted flagged)")
    ax.set_ylabel("true positive rate (targeted flagged)")
    criterion = report.get("criterion", "accuracy").replace("_", " ")
    ax.set_title(f"Co-SSAT detector ROC\n{report.get('num_positive', '?')} targeted / "
                 f"{report.get('num_negative', '?')} untargeted; tau by {criterion}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=120)
    plt.close(fig)


def export(model: CoSSAT, path: str, metadata: Optional[dict] = None) -> str:
    """One SavedModel holding both networks and the detector; `serving_default(images)` returns the Co-SSAT
    logits / probabilities / classes plus use_base, dlr, votes, ssat_logits and base_logits. Its inputs are
    checked as every tfadv SavedModel's (`export.checked_images`): shape, float32, finite pixels in [0, 1]; its
    `logits_unchecked(images)` are the same decision logits without the checks (for attacks compiled with XLA)."""
    from tfadv import export as export_lib

    ssat = export_lib.as_float32(model.ssat_network)
    base = export_lib.as_float32(model.base_network)
    serving = CoSSAT(ssat, base, model.detector)
    image_shape = tuple(ssat.input_shape[1:])
    if tuple(base.input_shape[1:]) != image_shape:
        raise ValueError(f"SSAT takes {image_shape} but the base model takes {tuple(base.input_shape[1:])}")

    def serve(images):
        return serving.outputs(export_lib.checked_images(images, image_shape))

    metadata = dict(metadata or {}, detector=model.detector.to_json())
    # without the checks (for XLA): the Co-SSAT decision logits, serving_default's "logits"
    return export_lib.write_saved_model(path, [ssat, base], serve, image_shape, metadata, logits_fn=serving.logits)


def save_detector(detector: Detector, path: str):
    from tfadv import runs

    runs.atomic_write(path, json.dumps(detector.to_json(), indent=2))


def table_rows(report: dict, metric: str, limit: int = 12) -> List[dict]:
    """A readable subset of the candidate table around the chosen threshold."""
    rows = report["metrics"][metric]["candidates"]
    chosen = report["metrics"][metric]["chosen"]["threshold"]
    index = min(range(len(rows)), key=lambda i: abs(rows[i]["threshold"] - chosen))
    start = max(0, index - limit // 2)
    return rows[start:start + limit]


# ----------------------------------------------------------------------------------------------------------
# the calibration set and the routing report of a build (tfadv.cossat_build.build puts them together)


def calibration_examples(ssat_network, x, y, eps, steps, batch_size=256, seed=0):
    """SSAT logits on untargeted PGD-CE examples (negatives) and on targeted ones (positives): PGD on the CW
    margin toward the most confusing class, and APGD-T (targeted DLR over the top wrong classes; needs >= 4
    classes). Every random start is keyed on (`seed`, the example's position in `x`, the attack), so the set
    does not depend on the batch size or on TensorFlow's global random state."""
    from tfadv import attacks
    from tfadv.attacks import rng

    logits_fn = lambda images: ssat_network(images, training=False)  # noqa: E731  attacks see inference BN
    step = eps / 4
    num_classes = int(ssat_network.output_shape[-1])

    @tf.function(reduce_retracing=True)
    def run(images, labels, indices):
        clean = logits_fn(images)
        target = attacks.most_confusing(clean, labels)
        untargeted = attacks.pgd(logits_fn, images, labels, eps=eps, step_size=step, steps=steps, loss="ce",
                                 keys=rng.example_keys(indices, seed, CALIBRATION_SALTS["pgd_ce"]))
        targeted = attacks.pgd(logits_fn, images, labels, eps=eps, step_size=step, steps=steps, loss="cw",
                               targets=target, keys=rng.example_keys(indices, seed, CALIBRATION_SALTS["pgd_cw"]))
        outputs = [logits_fn(untargeted), logits_fn(targeted)]
        if num_classes >= 4:
            outputs.append(logits_fn(attacks.apgd_targeted(
                logits_fn, images, labels, eps=eps, steps=steps,
                keys=rng.example_keys(indices, seed, CALIBRATION_SALTS["apgd_t"]))))
        return outputs

    negative, positive = [], []
    for start in range(0, len(x), batch_size):
        stop = min(start + batch_size, len(x))
        out = run(tf.constant(x[start:stop]), tf.constant(y[start:stop]), tf.range(start, stop, dtype=tf.int64))
        negative.append(out[0].numpy())
        positive.extend(o.numpy() for o in out[1:])
    return np.concatenate(positive), np.concatenate(negative)


def routing_report(model: CoSSAT, x, y, batch_size=256) -> dict:
    """What clean inputs do: the share routed to the base model and the accuracy of each path."""
    use_base, ssat_ok, base_ok, cossat_ok = [], [], [], []
    compiled = graphs.function(model.outputs, reduce_retracing=True)
    for start in range(0, len(x), batch_size):
        out = compiled(tf.constant(x[start:start + batch_size]))
        labels = y[start:start + batch_size]
        use_base.append(out["use_base"].numpy())
        ssat_ok.append(np.argmax(out["ssat_logits"].numpy(), -1) == labels)
        base_ok.append(np.argmax(out["base_logits"].numpy(), -1) == labels)
        cossat_ok.append(out["classes"].numpy() == labels)
    cat = np.concatenate
    return {"num_examples": int(len(y)), "routed_to_base": float(cat(use_base).mean()),
            "clean_accuracy_cossat": float(cat(cossat_ok).mean()), "clean_accuracy_ssat": float(cat(ssat_ok).mean()),
            "clean_accuracy_base": float(cat(base_ok).mean())}
