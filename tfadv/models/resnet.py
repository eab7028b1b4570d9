"""ResNet-18, PreAct ResNet-18 and Wide ResNets in the CIFAR layout (3x3 stem, no max-pool)."""

import keras

from tfadv.models.layers import batch_norm, conv, dense

relu = keras.layers.ReLU


def _preact_block(x, filters, stride, name):
    out = relu()(batch_norm(f"{name}_bn1")(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = conv(filters, 1, stride, name=f"{name}_shortcut")(out)
    out = conv(filters, 3, stride, name=f"{name}_conv1")(out)
    out = relu()(batch_norm(f"{name}_bn2")(out))
    out = conv(filters, 3, 1, name=f"{name}_conv2")(out)
    return keras.layers.Add()([out, shortcut])


def _basic_block(x, filters, stride, name):
    out = relu()(batch_norm(f"{name}_bn1")(conv(filters, 3, stride, name=f"{name}_conv1")(x)))
    out = batch_norm(f"{name}_bn2")(conv(filters, 3, 1, name=f"{name}_conv2")(out))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = batch_norm(f"{name}_shortcut_bn")(conv(filters, 1, stride, name=f"{name}_shortcut")(x))
    return relu()(keras.layers.Add()([out, shortcut]))


def _head(x, num_classes):
    x = keras.layers.GlobalAveragePooling2D()(x)
    return dense(num_classes, name="classifier")(x)


def preact_resnet18(x, num_classes):
    x = conv(64, 3, 1, name="stem")(x)
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _preact_block(x, filters, stride, f"stage{stage + 1}_block{block + 1}")
    x = relu()(batch_norm("final_bn")(x))
    return _head(x, num_classes)


def resnet18(x, num_classes):
    x = relu()(batch_norm("stem_bn")(conv(64, 3, 1, name="stem")(x)))
    for stage, filters in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, stride, f"stage{stage + 1}_block{block + 1}")
    return _head(x, num_classes)


def wide_resnet(x, num_classes, depth=28, width=10):
    """WRN-depth-width (Zagoruyko & Komodakis) with pre-activation blocks; 28-10, 34-10, 34-4, ..."""
    if (depth - 4) % 6 != 0:
        raise ValueError(f"wide_resnet depth must be 6n+4 (e.g. 28, 34), got {depth}")
    if width < 1:
        raise ValueError(f"wide_resnet width must be positive, got {width}")
    blocks = (depth - 4) // 6
    x = conv(16, 3, 1, name="stem")(x)
    for stage, filters in enumerate((16 * width, 32 * width, 64 * width)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _preact_block(x, filters, stride, f"stage{stage + 1}_block{block + 1}")
    x = relu()(batch_norm("final_bn")(x))
    return _head(x, num_classes)
