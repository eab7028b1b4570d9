"""Target-class choice for targeted attacks."""

import tensorflow as tf


def most_confusing(logits, labels):
    """The highest-scoring wrong class (BAT's MC target, SSAT's y')."""
    num_classes = tf.shape(logits)[-1]
    mask = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
    masked = tf.where(mask, tf.fill(tf.shape(logits), logits.dtype.min), logits)
    return tf.argmax(masked, axis=-1, output_type=tf.int32)


def least_likely(logits, labels):
    """The lowest-scoring *wrong* class (BAT's LL target, paper 002 Eq. 23): never the true class, even when
    the true class has the lowest logit."""
    num_classes = tf.shape(logits)[-1]
    mask = tf.one_hot(labels, num_classes, on_value=True, off_value=False)
    masked = tf.where(mask, tf.fill(tf.shape(logits), logits.dtype.max), logits)
    return tf.argmin(masked, axis=-1, output_type=tf.int32)
