"""Training under --mixed_precision=float16 (Keras `mixed_float16` + `LossScaleOptimizer`, as
`tfadv.experiment.set_precision` / `build_optimizer` set them up) for every defense, built from its run config.

Per defense, on a tiny Dense-BatchNorm network over 8x8 digits, through `tfadv.assembly.trainer`:
  * an overflow provoked by setting the loss scale to 2^30 (the logit gradient alone exceeds float16's 65504)
    makes the LossScaleOptimizer skip every update of the step and halve its scale once per update (Free and
    SSAT update twice per minibatch here), with the trainable weights untouched;
  * then, from scale 2^8 one update short of the growth interval, one short epoch (4 minibatches) trains with
    finite losses, every update is applied (iterations = 4 x updates per minibatch) and the scale doubles
    exactly once (2^9): the loss-scaled backward pass stayed finite at every update;
  * the trained weights are float32 variables while the layers compute in float16.
Free and SSAT (their own train_step, two updates per minibatch) run it under XLA too, as on a GPU. The SavedModel
export of a float16-trained network takes and returns float32 and gives the logits of a float32 network with the
same weights; a whole float16 run (`experiment.train`) serves a float32 SavedModel. bfloat16 (no loss scaling)
runs one defense. Per-defense float16 losses and loss scales beside float32: scripts/precision_table.py.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import assembly, experiment, export
from tfadv.config import TrainConfig

BATCH, BATCHES = 64, 4

# each defense with what it needs (label_smoothing: --ls_method, logit_squeeze: --squeeze_beta); 2 attack steps,
# 2 replays for Free and SSAT, eps 2/16
FLAGS = {
    "natural": {},
    "pgd": {},
    "fgsm_rs": {},
    "free": dict(free_replays=2),
    "trades": {},
    "bat": {},
    "ssat": dict(ssat_replays=2),
    "label_smoothing": dict(ls_method="als", ls_alpha=0.3),
    "logit_squeeze": dict(squeeze_beta=0.05),
}


# a training step of 1 level where the method takes one (BAT steps eps, SSAT eps / m by their own rules), each
# through the method's own step flag (a --step_size the method ignores is refused)
STEP = {"fgsm_rs": {"fgsm_rs_step_size": 1}, "free": {"free_step_size": 1}, "bat": {}, "ssat": {}}


def config_for(defense, precision="float16", **flags):
    return TrainConfig.from_flags(defense=defense, mixed_precision=precision, eps=2, attack_steps=2, batch_size=BATCH,
                                  lr=0.05, seed=1, output_dir="unused",
                                  **{**STEP.get(defense, {"step_size": 1}), **FLAGS[defense], **flags})


@pytest.fixture
def precision():
    """Sets the run's precision policy (`experiment.set_precision`) and always restores float32."""
    def set_for(config):
        experiment.set_precision(config)
    try:
        yield set_for
    finally:
        keras.mixed_precision.set_global_policy("float32")


def tiny_network():
    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(hidden)))


def build(config, precision, jit=False):
    """(network, trainer, optimizer) as experiment.build makes them, under the run's precision policy."""
    precision(config)
    keras.utils.set_random_seed(0)
    network = tiny_network()
    trainer = assembly.trainer(config, network)
    optimizer = experiment.build_optimizer(config, config.optimization.lr)
    trainer.compile(optimizer=optimizer, jit_compile=jit)
    optimizer.build(network.trainable_variables)
    return network, trainer, optimizer


@pytest.fixture(scope="module")
def batches(digits):
    x, y = digits.train
    return x[:BATCHES * BATCH].astype("float32"), y[:BATCHES * BATCH].astype("int32")


class BatchLosses(keras.callbacks.Callback):
    """Per-minibatch losses (Keras logs the running mean; the differences give each minibatch's own)."""

    def on_train_begin(self, logs=None):
        self.means = []

    def on_train_batch_end(self, batch, logs=None):
        self.means.append(float(logs["loss"]))

    @property
    def losses(self):
        means = np.array(self.means)
        return means * np.arange(1, len(means) + 1) - np.concatenate([[0.0], means[:-1] * np.arange(1, len(means))])


# float16 with XLA is what --jit_compile=auto gives on a GPU: the methods with their own train_step run it too
# (scripts/precision_table.py runs every defense that way)
@pytest.mark.parametrize("defense, jit", [(name, False) for name in FLAGS] + [(name, True) for name in
                                                                          ("free", "ssat")])
def test_one_float16_epoch_with_an_adapting_loss_scale(defense, jit, batches, precision):
    config = config_for(defense)
    network, trainer, optimizer = build(config, precision, jit)
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert network.layers[2].compute_dtype == "float16"  # the Dense layer computes in float16
    updates = config.updates_per_batch()
    x, y = batches

    # 1. an overflow: every update of the step is skipped and each halves the scale
    optimizer.dynamic_scale.assign(2.0 ** 30)
    before = [v.numpy().copy() for v in network.trainable_variables]
    logs = trainer.train_on_batch(x[:BATCH], y[:BATCH], return_dict=True)
    assert np.isfinite(logs["loss"])  # the forward pass is fine; only the scaled gradients overflow
    assert int(optimizer.iterations.numpy()) == 0
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** (30 - updates)
    for old, variable in zip(before, network.trainable_variables):
        np.testing.assert_array_equal(old, variable.numpy())
    if defense == "free":  # the skipped backward pass leaves delta finite (it stays 0)
        assert np.array_equal(trainer.delta.numpy(), np.zeros_like(trainer.delta.numpy()))

    # 2. one short epoch from scale 2^8, one finite update short of the growth interval: the scale doubles once
    optimizer.dynamic_scale.assign(2.0 ** 8)
    optimizer.step_counter.assign(optimizer.dynamic_growth_steps - 1)
    losses = []
    for i in range(BATCHES):  # the epoch's minibatches through the same (compiled) train function
        trainer.reset_metrics()
        losses.append(trainer.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH],
                                             return_dict=True)["loss"])
    assert np.all(np.isfinite(losses))
    assert int(optimizer.iterations.numpy()) == BATCHES * updates  # no update was skipped
    assert float(optimizer.dynamic_scale.numpy()) == 2.0 ** 9
    assert all(v.dtype == "float32" for v in network.weights)
    assert min(float(np.abs(old - v.numpy()).max()) for old, v in zip(before, network.trainable_variables)) > 0
    if defense == "free":
        delta = trainer.delta.numpy()
        assert np.all(np.isfinite(delta)) and 0 < np.abs(delta).max() <= 0.125 + 1e-6


def test_float16_export_serves_float32(batches, precision, tmp_path):
    """A network trained under float16 exports a float32 SavedModel whose logits are a float32 forward pass of
    the trained weights (and close to the float16 network's own)."""
    network, trainer, _ = build(config_for("pgd"), precision)
    x, y = batches
    trainer.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = export.export(network, str(tmp_path / "saved_model" / "1"))
    keras.mixed_precision.set_global_policy("float32")
    reference = tiny_network()
    reference.set_weights(network.get_weights())
    signature = tf.saved_model.load(path).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.float32
    images = tf.constant(x[:BATCH])
    served = signature(images=images)
    assert served["logits"].dtype == tf.float32 and served["probabilities"].dtype == tf.float32
    expected = reference(images, training=False).numpy()
    np.testing.assert_allclose(served["logits"].numpy(), expected, rtol=1e-5, atol=1e-5)
    own = tf.cast(network(images, training=False), tf.float32).numpy()
    # float16 rounding of activations and weights (measured max 5e-3 on logits of magnitude ~5)
    np.testing.assert_allclose(own, expected, rtol=0, atol=0.05)
    assert os.path.isdir(path)


def test_one_bfloat16_epoch(batches, precision):
    """mixed_bfloat16 has float32's exponent range: no loss scaling, float32 weights, finite losses."""
    config = config_for("trades", precision="bfloat16")
    network, trainer, optimizer = build(config, precision)
    assert not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert network.layers[2].compute_dtype == "bfloat16"
    recorder = BatchLosses()
    x, y = batches
    before = [v.numpy().copy() for v in network.trainable_variables]
    trainer.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[recorder])
    assert np.all(np.isfinite(recorder.losses)) and int(optimizer.iterations.numpy()) == BATCHES
    assert all(v.dtype == "float32" for v in network.weights)
    assert min(float(np.abs(old - v.numpy()).max()) for old, v in zip(before, network.trainable_variables)) > 0


def test_a_float16_run_end_to_end(digits, precision, tmp_path):
    """`experiment.train` with --mixed_precision=float16 (Free-AT, whose delta is carried across minibatches):
    finite metrics and a float32 SavedModel whose clean accuracy on the evaluated examples is
    the run's reported one (the evaluation ran the float16 network: at most one argmax may flip)."""
    from tfadv import runs

    out = tmp_path / "run"
    config = TrainConfig.from_flags(dataset="digits", model="mlp", defense="free", free_replays=2, epochs=1,
                                    batch_size=BATCH, train_examples=256, lr=0.05, eps=2.0, free_step_size=1.0,
                                    val_attack_steps=2, eval_examples=64,
                                    eval_attack_steps=2, mixed_precision="float16", output_dir=str(out))
    assert keras.mixed_precision.global_policy().name == "float32"
    trained_under = []
    metrics = experiment.train(config, log=lambda *_: trained_under.append(
        keras.mixed_precision.global_policy().name))
    assert "mixed_float16" in trained_under  # the run set --mixed_precision's policy for itself ...
    assert keras.mixed_precision.global_policy().name == "float32"  # ... and gave the caller its own back
    final = metrics["final"]
    assert 0.3 < final["clean_accuracy"] <= 1 and 0 < final["robust_accuracy"] <= final["clean_accuracy"]
    logits_fn = export.load_logits_fn(runs.find_saved_model(str(out)))
    x, y = digits.test
    logits = logits_fn(tf.constant(x[:64].astype("float32")))
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
    accuracy = float(np.mean(np.argmax(logits.numpy(), axis=-1) == y[:64]))
    assert abs(accuracy - final["clean_accuracy"]) <= 1 / 64 + 1e-9
