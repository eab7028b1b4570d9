"""Small shared pieces: PyTorch-like BatchNorm and conv defaults."""

import keras

# PyTorch's BatchNorm2d momentum 0.1 is Keras momentum 0.9; epsilon 1e-5 as in the papers' code.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(name=None):
    return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def conv(filters, kernel_size, strides=1, name=None, use_bias=False, padding="same"):
    return keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
        kernel_initializer="he_normal", name=name,
    )


def dense(units, name=None):
    return keras.layers.Dense(units, name=name)
