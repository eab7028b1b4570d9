"""Training losses, pure functions on float32 logits: soft-target cross-entropy and the TRADES KL term."""

import tensorflow as tf


def soft_cross_entropy(targets, logits):
    """Per-example cross-entropy against soft targets [B, K] (targets under stop_gradient)."""
    logits = tf.cast(logits, tf.float32)
    targets = tf.stop_gradient(tf.cast(targets, tf.float32))
    return -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def hard_cross_entropy(labels, logits):
    """Per-example cross-entropy against integer labels."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(labels, tf.int32),
                                                          logits=tf.cast(logits, tf.float32))


def kl_divergence(reference_logits, logits):
    """Per-example KL(softmax(reference) || softmax(logits)) (TRADES: reference = clean logits)."""
    reference_logits = tf.cast(reference_logits, tf.float32)
    logits = tf.cast(logits, tf.float32)
    p = tf.nn.softmax(reference_logits, axis=-1)
    return tf.reduce_sum(p * (tf.nn.log_softmax(reference_logits, axis=-1) - tf.nn.log_softmax(logits, axis=-1)),
                         axis=-1)
