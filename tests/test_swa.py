"""SWA / iSWA (paper 001): the average, BatchNorm recomputation, iSWA, resume."""

import keras
import numpy as np
import tensorflow as tf

from tfadv import callbacks, data


def _bn_net():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(16)(keras.layers.Flatten()(inputs))
    h = keras.layers.BatchNormalization(name="bn")(h)
    net = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h)))
    net.compile(optimizer=keras.optimizers.SGD(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return net


class Recorder(keras.callbacks.Callback):
    def __init__(self, net):
        super().__init__()
        self.net, self.weights = net, []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append([v.numpy().copy() for v in self.net.trainable_variables])


def test_swa_is_the_mean_of_the_epochs_it_averaged(digits):
    keras.utils.set_random_seed(0)
    net = _bn_net()
    recorder = Recorder(net)
    swa = callbacks.StochasticWeightAveraging(net, start_epoch=2)
    net.fit(*digits.train, epochs=5, batch_size=64, verbose=0, callbacks=[recorder, swa])
    assert swa.count == 4
    for i, average in enumerate(swa.tracker.average):
        expected = np.mean([w[i] for w in recorder.weights[1:]], axis=0)
        np.testing.assert_allclose(average.numpy(), expected, rtol=1e-5, atol=1e-6)
    raw = [v.numpy().copy() for v in net.weights]
    assert swa.swap_in()
    np.testing.assert_allclose(net.trainable_variables[0].numpy(), swa.tracker.average[0].numpy())
    swa.swap_out()
    for a, b in zip(raw, net.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_batchnorm_recompute_matches_a_pass_over_clean_data(digits):
    net = _bn_net()
    x = digits.train[0][:256]
    batches = data.eval_pipeline((x, digits.train[1][:256]), 64)
    assert callbacks.recompute_batchnorm(net, batches) == 4
    pre_bn = keras.Model(net.inputs, net.get_layer("bn").input)(x).numpy()
    bn = net.get_layer("bn")
    means = [pre_bn[i:i + 64].mean(0) for i in range(0, 256, 64)]
    variances = [pre_bn[i:i + 64].var(0) for i in range(0, 256, 64)]  # Keras uses the biased batch variance
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, 0), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.99  # restored


def test_iswa_continues_from_the_average_and_resume_restores_it(digits, tmp_path):
    keras.utils.set_random_seed(1)
    net = _bn_net()
    swa = callbacks.StochasticWeightAveraging(net, start_epoch=1, mode="iswa")
    net.fit(*digits.train, epochs=2, batch_size=64, verbose=0, callbacks=[swa])
    np.testing.assert_allclose(net.trainable_variables[0].numpy(), swa.tracker.average[0].numpy(), rtol=1e-6)
    checkpoint = tf.train.Checkpoint(**swa.state())
    path = checkpoint.write(str(tmp_path / "ckpt"))
    other = callbacks.StochasticWeightAveraging(_bn_net(), start_epoch=1)
    tf.train.Checkpoint(**other.state()).read(path).assert_consumed()
    assert other.count == 2
    for a, b in zip(swa.tracker.average, other.tracker.average):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
