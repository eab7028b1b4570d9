"""DeepFool (Moosavi-Dezfooli et al., 2016), multi-class, for l2 and l-inf: a minimum-norm attack used by
paper 003's evaluation. Each iteration linearises the logits around the current point and steps to the
nearest linearised boundary among the `num_candidates` classes ranked highest on the clean input; examples
stop once their label flips; the accumulated perturbation is scaled by (1 + overshoot) and clipped to [0, 1].
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from tfadv.attacks.ops import masked_logits, per_example, while_loop

DEEPFOOL_NORMS = ("l2", "linf")


def deepfool(logits_fn: Callable, x, labels, *, norm="l2", num_candidates=10, overshoot=0.02, max_iterations=50):
    """Returns (adversarial images, per-example perturbation norms in `norm`). Examples already misclassified
    are returned unchanged (norm 0); examples never flipped keep their last iterate."""
    if norm not in DEEPFOOL_NORMS:
        raise ValueError(f"DeepFool supports {DEEPFOOL_NORMS}, got {norm!r}")
    max_iterations = int(max_iterations)
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int32)
    clean = tf.cast(logits_fn(x), tf.float32)
    count = min(int(num_candidates), int(clean.shape[-1]))
    # candidate classes: the true class first, then the highest other clean logits
    candidates = tf.concat([labels[:, None], tf.math.top_k(masked_logits(clean, labels), k=count - 1).indices], axis=1)

    def step(images):
        with tf.GradientTape() as tape:
            tape.watch(images)
            logits = tf.gather(tf.cast(logits_fn(images), tf.float32), candidates, batch_dims=1)
        jacobian = tape.batch_jacobian(logits, images)  # [B, C, ...]
        batch = tf.shape(images)[0]
        jacobian = tf.reshape(jacobian, [batch, count, -1])
        w = jacobian[:, 1:] - jacobian[:, :1]                   # [B, C-1, D]
        f = logits[:, 1:] - logits[:, :1]                       # [B, C-1]
        size = tf.norm(w, axis=-1) if norm == "l2" else tf.reduce_sum(tf.abs(w), axis=-1)
        distance = tf.abs(f) / (size + 1e-12)
        nearest = tf.argmin(distance, axis=1, output_type=tf.int32)
        w_l = tf.gather(w, nearest, batch_dims=1)
        f_l = tf.gather(f, nearest, batch_dims=1)
        if norm == "l2":
            r = ((tf.abs(f_l) + 1e-4) / (tf.reduce_sum(tf.square(w_l), -1) + 1e-12))[:, None] * w_l
        else:
            r = ((tf.abs(f_l) + 1e-4) / (tf.reduce_sum(tf.abs(w_l), -1) + 1e-12))[:, None] * tf.sign(w_l)
        return tf.reshape(r, tf.shape(images))

    def body(i, x_adv, r_total, active):
        r = step(x_adv)
        r_total = tf.where(per_example(active, x), r_total + r, r_total)
        x_adv = tf.clip_by_value(x + (1.0 + overshoot) * r_total, 0.0, 1.0)
        predicted = tf.argmax(tf.cast(logits_fn(x_adv), tf.float32), -1, output_type=tf.int32)
        return i + 1, x_adv, r_total, active & tf.equal(predicted, labels)

    def loop(x_adv, r_total, active):
        # a graph loop (examples stop one by one through `active`), so the attack compiles with tf.function
        return while_loop(lambda i, _x, _r, active: (i < max_iterations) & tf.reduce_any(active), body,
                          (tf.constant(0), x_adv, r_total, active))[1]

    active = tf.equal(tf.argmax(clean, -1, output_type=tf.int32), labels)
    if tf.executing_eagerly():  # called eagerly: compile the loop once for this call
        loop = tf.function(loop)
    x_adv = loop(x, tf.zeros_like(x), active)
    delta = tf.reshape(x_adv - x, [tf.shape(x)[0], -1])
    norms = tf.norm(delta, axis=-1) if norm == "l2" else tf.reduce_max(tf.abs(delta), axis=-1)
    return x_adv, norms
