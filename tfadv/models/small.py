"""VGG-16, LeNet, an MLP, Madry's MNIST CNN and a linear classifier, for any input shape."""

import keras

from tfadv.models.layers import batch_norm, conv, dense


def _pool_if_possible(x):
    # Lets the same architecture run on 8x8 digits as on 32x32 CIFAR: stop pooling at 1x1.
    if x.shape[1] >= 2 and x.shape[2] >= 2:
        return keras.layers.MaxPooling2D(2)(x)
    return x


def vgg16(x, num_classes):
    config = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
    for i, item in enumerate(config):
        if item == "M":
            x = _pool_if_possible(x)
        else:
            x = keras.layers.ReLU()(batch_norm(f"bn{i}")(conv(item, 3, name=f"conv{i}")(x)))
    x = keras.layers.GlobalAveragePooling2D()(x)
    return dense(num_classes, name="classifier")(x)


def lenet(x, num_classes):
    x = keras.layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(x)
    x = _pool_if_possible(x)
    x = keras.layers.Conv2D(16, 5, padding="same", activation="relu", name="conv2")(x)
    x = _pool_if_possible(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(120, activation="relu", name="fc1")(x)
    x = keras.layers.Dense(84, activation="relu", name="fc2")(x)
    return dense(num_classes, name="classifier")(x)


def mlp(x, num_classes, hidden=(256, 256)):
    x = keras.layers.Flatten()(x)
    for i, units in enumerate(hidden):
        x = keras.layers.Dense(units, activation="relu", name=f"fc{i + 1}")(x)
    return dense(num_classes, name="classifier")(x)


def mnist_cnn(x, num_classes):
    """Madry et al.'s MNIST network: conv32-5x5, pool, conv64-5x5, pool, fc1024."""
    x = keras.layers.Conv2D(32, 5, padding="same", activation="relu", name="conv1")(x)
    x = _pool_if_possible(x)
    x = keras.layers.Conv2D(64, 5, padding="same", activation="relu", name="conv2")(x)
    x = _pool_if_possible(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(1024, activation="relu", name="fc1")(x)
    return dense(num_classes, name="classifier")(x)


def linear(x, num_classes):
    return dense(num_classes, name="classifier")(keras.layers.Flatten()(x))
