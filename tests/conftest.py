import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from tfadv import data, models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def digits():
    return data.load("digits")


@pytest.fixture(scope="session")
def natural_mlp(digits):
    """An undefended MLP trained on digits for a few epochs (clean accuracy > 90 %)."""
    keras.utils.set_random_seed(0)
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    network.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(*digits.train, epochs=15, batch_size=64, verbose=0)
    return network


def accuracy(network, x, y):
    return float(np.mean(np.argmax(network(x, training=False), axis=-1) == y))
