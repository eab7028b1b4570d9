"""Per-example attack objectives, each to be *maximised* by the attacker.

Untargeted: the attacker raises the loss of the true label. Targeted: the attacker raises the objective of
the target (`targeted_objective`), i.e. lowers its cross-entropy / raises its margin.
"""

import tensorflow as tf

from tfadv.attacks.ops import top_wrong_logit

LOSS_NAMES = ("ce", "cw", "dlr")
__all__ = ["LOSS_NAMES", "cross_entropy", "cw_margin", "dlr", "margin", "objective", "targeted_dlr"]


def _sorted_desc(logits):
    return tf.sort(logits, axis=-1, direction="DESCENDING")


def _true_logit(logits, labels):
    return tf.gather(logits, labels, axis=-1, batch_dims=1)


def cross_entropy(logits, labels):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def margin(logits, labels):
    """The margin z_y - max_{j != y} z_j [B] in float32 (positive while `labels` wins, <= 0 once misclassified):
    the one margin the attacks use (Square's loss, C&W's and DLR's numerators, `cw_margin`)."""
    logits = tf.cast(logits, tf.float32)
    return _true_logit(logits, labels) - top_wrong_logit(logits, labels)


def cw_margin(logits, labels):
    """Carlini-Wagner margin, the attacker's objective: max_{j != y} z_j - z_y = -margin (positive once
    misclassified)."""
    return -margin(logits, labels)


def dlr(logits, labels):
    """Croce & Hein's difference of logits ratio, untargeted: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3)."""
    if logits.shape[-1] is not None and logits.shape[-1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[-1]}")
    top = _sorted_desc(logits)
    return -margin(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr(logits, labels, targets):
    """Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)."""
    if logits.shape[-1] is not None and logits.shape[-1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[-1]}")
    top = _sorted_desc(logits)
    gap = _true_logit(logits, labels) - _true_logit(logits, targets)
    return -gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def objective(name, logits, labels, targets=None):
    """The per-example quantity the attacker maximises (float32)."""
    logits = tf.cast(logits, tf.float32)
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown attack loss {name!r}; valid: {', '.join(LOSS_NAMES)}")
    if targets is None:
        return {"ce": cross_entropy, "cw": cw_margin, "dlr": dlr}[name](logits, labels)
    if name == "ce":
        return -cross_entropy(logits, targets)
    if name == "cw":
        return -cw_margin(logits, targets)
    return targeted_dlr(logits, labels, targets)
