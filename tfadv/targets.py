"""Soft-label builders, pure functions: one-hot labels [B, K] (and logits [B, K]) -> soft targets [B, K].

Every builder returns float32 targets that sum to 1 per row, computed under `tf.stop_gradient` from the
logits the paper names. Paper 003 (Goibert & Dohmatob) writes each as q = (1 - alpha) y + alpha q' and
differs only in q': SLS spreads alpha uniformly over the K - 1 wrong classes (Eq. 5), ALS puts it on the
arg-min logit (Eq. 4), BLS over the wrong classes by softmax(-z / T) (Eq. 6), SBLS on the highest wrong logit
(Eq. 7). `uniform` is the "standard" smoothing of papers 000 and 004: y - alpha (y - 1/K).
"""

from __future__ import annotations

import tensorflow as tf

LS_METHODS = ("uniform", "sls", "als", "bls", "sbls")


def _prepare(labels, logits=None):
    labels = tf.cast(labels, tf.float32)
    if logits is None:
        return labels, None
    return labels, tf.stop_gradient(tf.cast(logits, tf.float32))


def _check_alpha(alpha):
    if isinstance(alpha, (int, float)) and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"the smoothing alpha must be in [0, 1], got {alpha}")


def _mix(labels, alpha, other):
    return (1.0 - alpha) * labels + alpha * other


def uniform(labels, alpha):
    """y - alpha (y - 1/K): mass alpha spread over all K classes, the true one included."""
    _check_alpha(alpha)
    labels, _ = _prepare(labels)
    num_classes = tf.cast(tf.shape(labels)[-1], tf.float32)
    return labels - alpha * (labels - 1.0 / num_classes)


def sls(labels, alpha):
    """Paper 003 Eq. 5: (1 - alpha) on the true class, alpha / (K - 1) on each wrong class."""
    _check_alpha(alpha)
    labels, _ = _prepare(labels)
    num_classes = tf.cast(tf.shape(labels)[-1], tf.float32)
    return _mix(labels, alpha, (1.0 - labels) / (num_classes - 1.0))


def als(labels, logits, alpha):
    """Paper 003 Eq. 4: alpha on the smallest logit (over all classes; ties share it evenly)."""
    _check_alpha(alpha)
    labels, logits = _prepare(labels, logits)
    lowest = tf.cast(tf.equal(logits, tf.reduce_min(logits, axis=-1, keepdims=True)), tf.float32)
    return _mix(labels, alpha, lowest / tf.reduce_sum(lowest, axis=-1, keepdims=True))


def bls(labels, logits, alpha, temperature):
    """Paper 003 Eq. 6: alpha over the wrong classes by softmax(-z / T) (T -> 0: their arg-min, T -> inf: SLS)."""
    _check_alpha(alpha)
    if not temperature > 0:
        raise ValueError(f"the BLS temperature must be positive, got {temperature}")
    labels, logits = _prepare(labels, logits)
    energies = tf.where(labels > 0, tf.fill(tf.shape(logits), -float("inf")), -logits / temperature)
    return _mix(labels, alpha, tf.nn.softmax(energies, axis=-1))


def sbls(labels, logits, alpha):
    """Paper 003 Eq. 7: alpha on the highest wrong logit (the second best when the true class leads)."""
    _check_alpha(alpha)
    labels, logits = _prepare(labels, logits)
    masked = tf.where(labels > 0, tf.fill(tf.shape(logits), logits.dtype.min), logits)
    best_wrong = tf.one_hot(tf.argmax(masked, axis=-1), tf.shape(labels)[-1], dtype=tf.float32)
    return _mix(labels, alpha, best_wrong)


def smooth(method, labels, logits, alpha, temperature=0.001):
    """The soft targets of `method` (one of LS_METHODS)."""
    if method == "uniform":
        return uniform(labels, alpha)
    if method == "sls":
        return sls(labels, alpha)
    if method == "als":
        return als(labels, logits, alpha)
    if method == "bls":
        return bls(labels, logits, alpha, temperature)
    if method == "sbls":
        return sbls(labels, logits, alpha)
    raise ValueError(f"unknown label-smoothing method {method!r}; valid: {', '.join(LS_METHODS)}")


def bat_beta_default(num_classes: int) -> float:
    """Paper 002: beta = 9 for 10 classes (CIFAR-10, SVHN), 11 for 100 (CIFAR-100)."""
    return 9.0 if num_classes <= 10 else 11.0


def bat(labels, probabilities, beta, gamma=0.01, top_k=None):
    """BAT's adversarial labels (paper 002 §4.1) from the clean probabilities p [B, K].

    v_k = -log p_k (Eq. 13); over the wrong classes v_MC = min v_k, v_LL = max v_k. The budget eps_y is the
    largest that keeps y'_c >= beta * max_k y'_k (Eq. 18) and is spread by Eq. 14:
    y'_k = eps_y / (n-1) * (v_k - v_MC + gamma) / (sum_k v_k / (n-1) - v_MC + gamma).

    `top_k` (the LA9 variant of §5.4 / App. B, not in the official code): eps_y goes only to the k wrong
    classes with the largest loss, in proportion to v_k (App. A Eq. 26, the sum running over those k), with
    eps_y = 1 / (1 + beta v_max / sum_topk v_k) (Eq. 28).
    """
    labels = tf.cast(labels, tf.float32)
    probabilities = tf.stop_gradient(tf.cast(probabilities, tf.float32))
    num_classes = tf.shape(labels)[-1]
    n_wrong = tf.cast(num_classes - 1, tf.float32)
    wrong = 1.0 - labels
    v = -tf.math.log(tf.clip_by_value(probabilities, 1e-12, 1.0))
    if top_k:
        if top_k < 1:
            raise ValueError(f"top_k must be positive, got {top_k}")
        masked = tf.where(wrong > 0, v, tf.fill(tf.shape(v), -1.0))
        k = tf.minimum(top_k, num_classes - 1)
        threshold = tf.math.top_k(masked, k=k).values[:, -1:]
        chosen = tf.cast((masked >= threshold) & (wrong > 0), tf.float32)
        chosen_v = v * chosen
        total = tf.reduce_sum(chosen_v, axis=-1, keepdims=True)
        v_max = tf.reduce_max(chosen_v, axis=-1, keepdims=True)
        eps_y = 1.0 / (1.0 + beta * v_max / total)
        spread = eps_y * chosen_v / total
    else:
        big = tf.fill(tf.shape(v), float("inf"))
        v_mc = tf.reduce_min(tf.where(wrong > 0, v, big), axis=-1, keepdims=True)
        v_ll = tf.reduce_max(tf.where(wrong > 0, v, -big), axis=-1, keepdims=True)
        mean_wrong = tf.reduce_sum(v * wrong, axis=-1, keepdims=True) / n_wrong
        denominator = mean_wrong - v_mc + gamma
        eps_y = 1.0 / (1.0 + beta / n_wrong * (v_ll - v_mc + gamma) / denominator)
        spread = eps_y / n_wrong * (v - v_mc + gamma) / denominator * wrong
    return tf.stop_gradient(labels * (1.0 - eps_y) + spread)
