"""Helpers the tests import (`from helpers import ...`); pytest fixtures stay in conftest.py."""
import os

import keras
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_dense_network(digits, seed):
    """Flatten-Dense(32, relu)-Dense(10) trained for 3 epochs on digits (Adam 1e-2, batch 128) under `seed`: a
    small model the attacks have real work on."""
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                            keras.layers.Dense(10)])
    net.compile(optimizer=keras.optimizers.Adam(1e-2),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(*digits.train, epochs=3, batch_size=128, verbose=0)
    return net


def model_calls_when_traced(attack):
    """How many times tracing `attack(logits_fn, x, y)` in a tf.function calls the model (a fixed linear map of
    3 flat 8x8 images to 10 logits): the number of model copies in the attack's graph."""
    import tensorflow as tf

    weights = tf.constant(np.random.RandomState(0).normal(size=(64, 10)), tf.float32)
    calls = []

    def logits_fn(images):
        calls.append(1)
        return tf.reshape(images, [-1, 64]) @ weights

    x, y = tf.fill([3, 8, 8, 1], 0.5), tf.constant([0, 1, 2])
    tf.function(lambda a, b: attack(logits_fn, a, b)).get_concrete_function(x, y)
    return len(calls)


def accuracy(network, x, y):
    return float(np.mean(np.argmax(network(x, training=False), axis=-1) == y))


class InputRecorder(keras.layers.Layer):
    """Identity layer that records (training flag, input) of every eager forward pass: which images a
    weight update (training=True) or a label/target computation (training=False) saw."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def call(self, inputs, training=None):
        import tensorflow as tf

        if tf.executing_eagerly():
            self.seen.append((bool(training), np.array(inputs)))
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def parse_training_flags(argv):
    """The TrainConfig `train.py ARGV` builds, parsed in-process (flagfiles are named relative to the repository,
    as train.py reads them: `config.training_argv`)."""
    from absl import flags

    from tfadv import config as config_lib

    values = flags.FlagValues()
    config_lib.define_flags(values)
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        values(config_lib.training_argv(["train.py", *argv], values))  # with the presets' per-method flagfiles
    finally:
        os.chdir(cwd)
    return config_lib.from_parsed_flags(values, argv=["train.py", *argv])
