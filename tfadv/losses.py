"""Training losses, pure functions on float32 logits: soft-target cross-entropy, logit squeezing, TRADES KL."""

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


SQUEEZE_REDUCTIONS = ("frobenius", "mean_l2")


def logit_squeeze(logits, beta, reduction="frobenius"):
    """Logit squeezing, as a term to add to a batch-*mean* loss.

    "frobenius" (paper 004 Eq. 5): the paper adds beta * ||Z||_F of the mini-batch logit matrix Z [B, K] to
    the batch's loss, which in its (Madry-based) code is the *sum* of the per-example cross-entropies; added
    to tfadv's per-example mean it therefore enters as beta * ||Z||_F / B, which keeps the paper's beta
    values (0.5 on MNIST, 10 on CIFAR-10) meaningful. "mean_l2": beta times the mean per-example L2 norm of
    the logits, as public re-implementations do.

    Under `tf.distribute` (called in replica context with several replicas), Z and B are the *global* batch's:
    the Frobenius norm is not a sum over examples, so each replica returns the global value
    beta * sqrt(sum over replicas of sum z^2) / B_global, with a gradient w.r.t. its local logits of
    replicas * beta * z / (||Z||_F * B_global), so that after the trainer's 1/replicas loss scaling and the
    optimizer's sum over replicas the weight gradient is exactly the single-device global-batch one (the
    penalty does not grow with the number of replicas). "mean_l2" is a per-example mean, which the 1/replicas
    scaling already averages correctly.
    """
    logits = tf.cast(logits, tf.float32)
    if reduction == "frobenius":
        squares = tf.reduce_sum(tf.square(logits))
        batch = tf.cast(tf.shape(logits)[0], tf.float32)
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        if replicas == 1:
            return beta * tf.sqrt(squares + 1e-12) / batch
        # One collective for both sums (two unordered collectives can deadlock or mismatch across devices).
        total, global_batch = tf.unstack(context.all_reduce(tf.distribute.ReduceOp.SUM,
                                                            tf.stop_gradient(tf.stack([squares, batch]))))
        norm = tf.sqrt(total + 1e-12)
        # zero-valued surrogate carrying the gradient replicas * beta * z / (norm * B_global)
        surrogate = (squares - tf.stop_gradient(squares)) * (replicas * beta / (2.0 * norm * global_batch))
        return beta * norm / global_batch + surrogate
    if reduction == "mean_l2":
        return beta * tf.reduce_mean(tf.sqrt(tf.reduce_sum(tf.square(logits), axis=-1) + 1e-12))
    raise ValueError(f"unknown squeeze reduction {reduction!r}; valid: {', '.join(SQUEEZE_REDUCTIONS)}")


def distillation(teacher_logits, student_logits, temperature):
    """Per-example knowledge-distillation term (paper 001 Eq. 1, App. A2.1): soft-target cross-entropy of the
    student's tempered softmax against the frozen teacher's, times T^2. Its gradient equals that of
    KL(teacher || student) * T^2 (the teacher's entropy is a constant)."""
    teacher = tf.nn.softmax(tf.stop_gradient(tf.cast(teacher_logits, tf.float32)) / temperature, axis=-1)
    return temperature ** 2 * soft_cross_entropy(teacher, tf.cast(student_logits, tf.float32) / temperature)
