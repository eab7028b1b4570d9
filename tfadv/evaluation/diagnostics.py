"""Paper 004's linear robustness estimate (§2.1, Eq. 4, Table 1) as an evaluation diagnostic.

Per example, with y the true class and y_bar the most likely wrong class (highest wrong logit; the gap and
the gradient gap are both taken for that one class, not minimised over all wrong classes):
  logit gap      z_y - z_ybar
  gradient gap   ||grad_x z_y - grad_x z_ybar||_1
  coherence      cos(grad_x z_y, grad_x z_ybar)
  eps_L          logit gap / gradient gap: the l-inf radius at which the linearised model flips (Eq. 4)
The predicted robust accuracy at eps is the share of examples correctly classified with eps < eps_L, shown
next to empirical FGSM accuracy on the cross-entropy and on the CW margin (the columns of Table 1).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from tfadv import attacks, graphs, runs


def linear_robustness(logits_fn: Callable, x, y, eps: float, batch_size: int = 256) -> dict:
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)

    def run(images, labels):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(images)
            logits = tf.cast(logits_fn(images), tf.float32)
            wrong = attacks.most_confusing(logits, labels)
            z_true = tf.gather(logits, labels, batch_dims=1)
            z_wrong = tf.gather(logits, wrong, batch_dims=1)
            total_true, total_wrong = tf.reduce_sum(z_true), tf.reduce_sum(z_wrong)
        g_true = tape.gradient(total_true, images)
        g_wrong = tape.gradient(total_wrong, images)
        del tape
        if g_true is None:  # no gradient path: report zero gradients (the audit flags this)
            g_true = tf.zeros_like(images)
        if g_wrong is None:
            g_wrong = tf.zeros_like(images)
        flat_true = tf.reshape(g_true, [tf.shape(images)[0], -1])
        flat_wrong = tf.reshape(g_wrong, [tf.shape(images)[0], -1])
        gap = z_true - z_wrong
        gradient_gap = tf.reduce_sum(tf.abs(flat_true - flat_wrong), -1)
        coherence = tf.reduce_sum(flat_true * flat_wrong, -1) / (
            tf.norm(flat_true, axis=-1) * tf.norm(flat_wrong, axis=-1) + 1e-12)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        fgsm = []
        for loss in ("ce", "cw"):
            x_adv = attacks.fgsm(logits_fn, images, labels, eps=eps, loss=loss)
            fgsm.append(tf.equal(tf.argmax(logits_fn(x_adv), -1, output_type=tf.int32), labels))
        return gap, gradient_gap, coherence, correct, fgsm[0], fgsm[1]

    compiled = graphs.function(run, reduce_retracing=True)
    parts = [compiled(tf.constant(x[s:s + batch_size]), tf.constant(y[s:s + batch_size]))
             for s in range(0, len(x), batch_size)]
    gap, gradient_gap, coherence, correct, fgsm_ce, fgsm_cw = (
        np.concatenate([p[i].numpy() for p in parts]) for i in range(6))
    eps_l = np.where(gradient_gap > 0, gap / np.maximum(gradient_gap, 1e-30), np.inf)
    predicted = correct & (eps < eps_l)

    def summary(values):
        finite = values[np.isfinite(values)]
        return {"mean": float(finite.mean()) if len(finite) else None,
                "median": float(np.median(finite)) if len(finite) else None}

    return {
        "eps": float(eps), "num_examples": int(len(y)),
        "predicted_robust_accuracy": float(predicted.mean()),
        "fgsm_ce_accuracy": float(fgsm_ce.mean()), "fgsm_cw_accuracy": float(fgsm_cw.mean()),
        "logit_gap": summary(gap), "gradient_gap": summary(gradient_gap), "coherence": summary(coherence),
        "eps_l": summary(eps_l),
        "per_example": {"logit_gap": gap, "gradient_gap": gradient_gap, "coherence": coherence, "eps_l": eps_l,
                        "correct": correct},
    }


def plot_linear_robustness(result: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per = result["per_example"]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    series = [("eps_L (correct examples)", per["eps_l"][per["correct"] & np.isfinite(per["eps_l"])]),
              ("logit gap z_y - z_ybar", per["logit_gap"]), ("gradient gap ||dz_y - dz_ybar||_1", per["gradient_gap"]),
              ("gradient coherence (cosine)", per["coherence"])]
    for ax, (title, values) in zip(axes, series):
        ax.hist(values, bins=40, color="tab:blue", alpha=0.8)
        ax.set_title(title, fontsize=9)
    axes[0].axvline(result["eps"], color="red", linestyle="--", label=f"eps {result['eps']:.3g}")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"linear robustness estimate: predicted {100 * result['predicted_robust_accuracy']:.1f}% vs "
                 f"FGSM-CE {100 * result['fgsm_ce_accuracy']:.1f}% / FGSM-CW {100 * result['fgsm_cw_accuracy']:.1f}%",
                 fontsize=10)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=110)
    plt.close(fig)
