import numpy as np
import pytest

from tfadv import models


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("shape,classes", [((8, 8, 1), 10), ((12, 12, 3), 7)])
def test_every_model_builds_for_any_shape_and_outputs_logits(name, shape, classes):
    options = {"depth": 10, "width": 1} if name == "wide_resnet" else {}
    network = models.build(name, shape, classes, mean=[0.5] * shape[-1], std=[0.25] * shape[-1], **options)
    out = network(np.random.rand(2, *shape).astype("float32"), training=False)
    assert out.shape == (2, classes)
    assert network.layers[1].name == "normalize"
    # logits, not probabilities
    assert not np.allclose(np.sum(out, axis=-1), 1.0)


def test_normalisation_layer_applies_mean_and_std():
    network = models.build("linear", (2, 2, 1), 2, mean=[0.5], std=[0.25])
    normalize = network.get_layer("normalize")
    np.testing.assert_allclose(normalize(np.full((1, 2, 2, 1), 1.0, np.float32)), 2.0, rtol=1e-5)


def test_wide_resnet_depths_and_bad_names():
    for depth, width in ((28, 10), (34, 10), (34, 4)):
        assert models.build("wide_resnet", (8, 8, 3), 10, depth=depth, width=width).count_params() > 1e6
    with pytest.raises(ValueError, match="6n\\+4"):
        models.build("wide_resnet", (8, 8, 3), 10, depth=27)
    with pytest.raises(ValueError, match="valid: .*preact_resnet18"):
        models.build("resnet50", (8, 8, 3), 10)


def test_preact_resnet18_has_the_cifar_size():
    network = models.build("preact_resnet18", (32, 32, 3), 10)
    assert 11.1e6 < network.count_params() < 11.2e6
