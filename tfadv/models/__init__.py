"""Networks by name. Every network takes [0,1] pixels, normalises them in its first layer, returns logits."""

from __future__ import annotations

from typing import Sequence

import keras

from tfadv.models import resnet, small

# name -> builder(inputs_normalised, num_classes, **options) -> logits tensor
_BUILDERS = {
    "preact_resnet18": resnet.preact_resnet18,
    "resnet18": resnet.resnet18,
    "wide_resnet": resnet.wide_resnet,
    "vgg16": small.vgg16,
    "lenet": small.lenet,
    "mlp": small.mlp,
    "mnist_cnn": small.mnist_cnn,
    "linear": small.linear,
}

MODEL_NAMES = tuple(sorted(_BUILDERS))


def build(name: str, input_shape: Sequence[int], num_classes: int, mean=None, std=None, **options) -> keras.Model:
    """Builds network `name` for inputs of `input_shape` (H, W, C) and `num_classes` logits.

    `mean`/`std` (per channel, in [0,1] pixel units) become the first layer, so callers and attacks always
    work on [0,1] pixels. `options` are model-specific (wide_resnet: depth, width; mlp: hidden).
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODEL_NAMES)}")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {tuple(input_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    channels = input_shape[-1]
    inputs = keras.Input(shape=tuple(input_shape), name="images", dtype="float32")
    x = inputs
    if mean is not None and std is not None:
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"mean/std need 1 or {channels} entries, got {len(mean)}/{len(std)}")
        variance = [float(s) ** 2 for s in std]
        # Kept in float32 under mixed precision: a 1/255 perturbation must survive normalisation.
        x = keras.layers.Normalization(mean=list(mean), variance=variance, name="normalize", dtype="float32")(x)
    features = _BUILDERS[name](x, num_classes, **options)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(features)
    return keras.Model(inputs, logits, name=name)
