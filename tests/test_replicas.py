"""Training under tf.distribute: losses computed per replica must add up to the single-device global batch.

Logical CPU devices must be configured before TensorFlow initialises its devices, so the body runs in a process
of its own (a fork of tests/script_server.py, which imported TensorFlow but initialised no device)."""

import json

import numpy as np

import script_server

BODY = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from tfadv import data, losses, training

def run(replicas, reduction):
    devices = ["/cpu:%d" % i for i in range(replicas)]
    strategy = tf.distribute.MirroredStrategy(devices)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(16, 8, 8, 1)).astype("float32")
    y = (np.arange(16) % 10).astype("int32")
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
        network = keras.Model(inputs, keras.layers.Dense(10)(h))
        smoothing = training.SmoothingConfig(squeeze_beta=2.0, squeeze_reduction=reduction)
        trainer = training.NaturalTrainer(network, training.AttackConfig(0.1, 0.1, 1), weight_decay=0.0,
                                          smoothing=smoothing)
        trainer.compile(optimizer=keras.optimizers.SGD(0.5), jit_compile=False)
    # the squeeze penalty alone, per replica, as the trainer adds it to each replica's loss
    def penalty(xb):
        return losses.logit_squeeze(network(xb, training=True), 2.0, reduction)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16)
    trainer.fit(ds, epochs=1, steps_per_epoch=3, verbose=0, shuffle=False)
    share = 16 // replicas
    local = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[ctx.replica_id_in_sync_group * share:(ctx.replica_id_in_sync_group + 1) * share])
    values = tf.function(lambda xb: strategy.run(penalty, args=(xb,)))(local)
    values = [float(v) for v in strategy.experimental_local_results(values)]
    return values, [w.numpy().tolist() for w in network.weights]

# one process per reduction: two MirroredStrategy objects with collectives in one process collide in TF 2.21
reduction = sys.argv[1]
print("RESULT" + json.dumps({"one": run(1, reduction), "two": run(2, reduction)}))
"""


def _run(reduction, tmp_path):
    body = tmp_path / "replicas.py"
    body.write_text(BODY)
    result = script_server.run_script(str(body), reduction, env=script_server.default_env(CUDA_VISIBLE_DEVICES=""),
                                      timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [line for line in result.stdout.splitlines() if line.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


def test_logit_squeeze_and_weights_do_not_depend_on_the_number_of_replicas(tmp_path):
    for reduction in ("frobenius", "mean_l2"):
        runs = _run(reduction, tmp_path)
        (one_values, one_weights), (two_values, two_weights) = runs["one"], runs["two"]
        # the replicas' losses are averaged (each scaled by 1/replicas): their mean is the global-batch penalty
        assert len(one_values) == 1 and len(two_values) == 2
        np.testing.assert_allclose(np.mean(two_values), one_values[0], rtol=1e-5, err_msg=reduction)
        if reduction == "frobenius":  # not decomposable per example: every replica reports the global value
            np.testing.assert_allclose(two_values, [one_values[0]] * 2, rtol=1e-5)
        for a, b in zip(one_weights, two_weights):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-6, err_msg=reduction)
