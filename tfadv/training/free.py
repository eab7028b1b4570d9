"""Free adversarial training (Shafahi et al., "adversarial training for free"): each minibatch is replayed m
times; one backward pass per replay gives both the weight gradient (of the outer loss) and the input
gradient; delta is carried across minibatches."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tfadv import attacks
from tfadv.training import registry
from tfadv.training.base import Trainer, not_negative, positive_integer, unpack
from tfadv.training.registry import option


@dataclasses.dataclass(frozen=True)
class Options:
    replays: int = option(8, "free: replays m of each minibatch")
    step_size: float = option(0.0, "free: step size in pixel levels (0 = eps, Shafahi et al.)")
    clip_delta: bool = option(True, "free: also clip the carried perturbation to the current batch's [0, 1] box "
                                    "(Wong et al.'s re-implementation); off = Shafahi et al.'s code: clamp it to "
                                    "+-eps only and clip the input")

    def __post_init__(self):
        self.validate(None)

    def validate(self, run) -> None:
        positive_integer("free_replays", self.replays)
        not_negative("free_step_size", self.step_size)


class FreeTrainer(Trainer):
    """Shafahi et al. "adversarial training for free": each minibatch is replayed m times; one backward pass
    per replay gives both the weight gradient and the input gradient; delta is carried across minibatches.
    Every replay trains on clip(x + delta, 0, 1), as the reference code clamps the input (the delta carried
    over from the previous minibatch may push the new one out of the box); the input gradient is taken with
    respect to delta through that clamp, as there. After each step delta is projected to the eps-ball; with
    `clip_delta` (the default, as Wong et al.'s `train_free.py`) it is also clipped to the current batch's box,
    without it (Shafahi et al.'s `free_train.py`: `clip_by_value(new_pert, -eps, eps)`) it is not, so the next
    minibatch starts from the untruncated perturbation. Needs `batch_size` (the global one; delta holds one
    perturbation per example of the global batch).
    """

    Options = Options

    def __init__(self, network, attack, options=None, **common):
        super().__init__(network, attack, options, **common)
        if not self.batch_size:
            raise ValueError("FreeTrainer needs batch_size: its delta holds one perturbation per example")
        self.replays = int(self.options.replays)
        # One perturbation per example of the global batch (batches are full: drop_remainder=True). Under
        # tf.distribute each replica reads and updates its own share (its examples' positions) and the shares are
        # gathered back, so the variable, and a checkpoint of it, holds every replica's perturbation.
        shape = (self.batch_size,) + tuple(network.input_shape[1:])
        self.delta = tf.Variable(tf.zeros(shape, tf.float32), trainable=False, name="free_delta",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def train_step(self, data):
        x, labels = unpack(data)
        a = self.attack
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        if replicas > 1:
            share = tf.shape(x)[0]
            delta = tf.identity(self.delta[context.replica_id_in_sync_group * share:][:share])
        else:
            delta = tf.identity(self.delta)
        for _ in range(self.replays):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                x_adv = tf.clip_by_value(x + delta, 0.0, 1.0)
                logits = self.network(x_adv, training=True)
                loss = self.outer_loss(labels, logits, x_adv)
            (input_gradient,) = self.apply_update(loss, tape, extra_sources=[delta])
            input_gradient = tf.cast(input_gradient, tf.float32)
            # float16: a loss-scaled backward pass that overflows gives inf / NaN; the LossScaleOptimizer skips
            # that weight update, and delta skips its step too (a NaN would stay in delta for the whole run)
            finite = tf.reduce_all(tf.math.is_finite(input_gradient))
            input_gradient = tf.where(finite, input_gradient, tf.zeros_like(input_gradient))
            step = attacks.steepest_step(input_gradient, a.step_size, a.norm, x_adv)
            # the loop's constraint (attacks/parts.py), or without the box clip Shafahi's +-eps clamp alone
            delta = attacks.constrain(x, delta + step, a.eps, a.norm) if self.options.clip_delta else \
                attacks.project(delta + step, a.eps, a.norm)
            metrics = self._update_metrics(loss, labels, logits)
        self.delta.assign(delta if replicas == 1 else context.all_gather(delta, axis=0))
        return metrics

    def extra_state(self):
        return {"free_delta": self.delta}


registry.register(registry.Method(
    "free", FreeTrainer, Options, flag_prefix="free", updates_per_batch=lambda options: options.replays,
    step_levels=lambda options, eps, step_size: options.step_size or eps, step_flag="free_step_size",
    attack_bn_mode="train", attack_bn_applies=False,
    supports={"label_smoothing", "logit_squeeze", "distillation"},
    description="free adversarial training (Shafahi et al.): m replays per minibatch"))
