"""A PyTorch copy of a tfadv Keras network, for measuring tfadv's attacks against PyTorch attack libraries on the
same model (scripts/bench_eval_peers.py, `tfadv.studies.eval_peers`).

Written by hand rather than converted through ONNX (tf2onnx + onnx2torch): the copy is made of the standard
torch layers a PyTorch user would write (nn.Conv2d, nn.BatchNorm2d, nn.Linear on NCHW tensors), with no
converter's layout transposes or graph overhead in the peers' timings, and no further dependency. It follows the
Keras functional graph layer by layer (every layer tfadv.models uses; any other layer is refused), so every tfadv
network (`mlp`, `wide_resnet`, `preact_resnet18`, ...) is covered, with Keras' numerics where they differ from
torch's defaults: "same" padding is TensorFlow's (for a stride-2 3x3 conv on an even size: one row and column
after, none before, where torch's padding=1 pads both sides), BatchNorm's epsilon is the layer's, the
Normalization layer divides by max(sqrt(variance), 1e-7), Flatten flattens in NHWC order. The logits are checked
against the Keras model's by the caller (`eval_peers.check_mirror`).

PyTorch is not a tfadv dependency: importing this module needs it (ModuleNotFoundError otherwise).
"""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"linear": lambda t: t, "relu": F.relu}


def _activation(layer):
    name = getattr(getattr(layer, "activation", None), "__name__", "linear")
    if name not in ACTIVATIONS:
        raise NotImplementedError(f"torch mirror: {layer.name} has activation {name!r} (supported: "
                                  f"{', '.join(ACTIVATIONS)})")
    return name


def same_padding(size, kernel, stride):
    """TensorFlow's "same" padding of one spatial dimension: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _inputs(layer):
    return [tensor._keras_history.operation.name for tensor in layer._inbound_nodes[0].input_tensors]


def _parameter(array):
    return nn.Parameter(torch.from_numpy(np.array(array, np.float32, order="C")), requires_grad=False)


class KerasMirror(nn.Module):
    """The layers of a float32 Keras functional network run in its graph order on NCHW float32 tensors; inference
    only (BatchNorm uses its moving statistics; the module stays in eval mode, its parameters frozen)."""

    def __init__(self, network):
        super().__init__()
        self.layers = nn.ModuleDict()
        self.steps = []  # (name, kind, input names, options)
        self.input_name = self.output_name = None
        for layer in network.operations:
            kind, name = type(layer).__name__, layer.name
            if kind == "InputLayer":
                self.input_name = name
                continue
            if layer.dtype_policy.name != "float32":
                raise ValueError(f"torch mirror: {name} computes in {layer.dtype_policy.name}; mirror the float32 "
                                 f"copy (tfadv.export.as_float32)")
            self.steps.append((name, kind, _inputs(layer), self._convert(layer, kind)))
            self.output_name = name
        self.eval()

    def _convert(self, layer, kind):
        name, options = layer.name, {}
        if kind == "Normalization":
            if layer.invert:
                raise NotImplementedError(f"torch mirror: {name} inverts its normalisation")
            mean = np.array(layer.mean, np.float32).reshape(-1)
            std = np.maximum(np.sqrt(np.array(layer.variance, np.float32).reshape(-1)), np.float32(1e-7))
            shape = (1, -1, 1, 1) if len(layer.input.shape) == 4 else (1, -1)
            self.register_buffer(f"{name}_mean", torch.from_numpy(mean).reshape(shape))
            self.register_buffer(f"{name}_std", torch.from_numpy(std).reshape(shape))
        elif kind == "Conv2D":
            kernel = layer.kernel.numpy()  # [kh, kw, in, out]
            if layer.data_format != "channels_last" or tuple(layer.dilation_rate) != (1, 1) or layer.groups != 1:
                raise NotImplementedError(f"torch mirror: {name}: only channels_last, undilated, ungrouped convs")
            height, width = layer.input.shape[1:3]
            (top, bottom), (left, right) = ((0, 0), (0, 0)) if layer.padding == "valid" else (
                same_padding(height, kernel.shape[0], layer.strides[0]),
                same_padding(width, kernel.shape[1], layer.strides[1]))
            symmetric = top == bottom and left == right
            conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], kernel.shape[:2], tuple(layer.strides),
                             padding=(top, left) if symmetric else 0, bias=layer.use_bias)
            conv.weight = _parameter(kernel.transpose(3, 2, 0, 1))
            if layer.use_bias:
                conv.bias = _parameter(layer.bias.numpy())
            self.layers[name] = conv
            options = {"pad": None if symmetric else (left, right, top, bottom), "activation": _activation(layer)}
        elif kind == "BatchNormalization":
            rank = len(layer.input.shape)
            if layer.axis not in (-1, rank - 1):
                raise NotImplementedError(f"torch mirror: {name} normalises axis {layer.axis}, not the channels")
            channels = layer.input.shape[-1]
            norm = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(channels, eps=layer.epsilon,
                                                                      momentum=1 - layer.momentum)
            norm.weight = _parameter(layer.gamma.numpy() if layer.scale else np.ones(channels))
            norm.bias = _parameter(layer.beta.numpy() if layer.center else np.zeros(channels))
            norm.running_mean.copy_(torch.from_numpy(np.array(layer.moving_mean, np.float32)))
            norm.running_var.copy_(torch.from_numpy(np.array(layer.moving_variance, np.float32)))
            self.layers[name] = norm
        elif kind == "Dense":
            dense = nn.Linear(*layer.kernel.shape, bias=layer.use_bias)
            dense.weight = _parameter(layer.kernel.numpy().T)
            if layer.use_bias:
                dense.bias = _parameter(layer.bias.numpy())
            self.layers[name] = dense
            options = {"activation": _activation(layer)}
        elif kind == "ReLU":
            if layer.max_value is not None or float(layer.negative_slope) != 0 or float(layer.threshold) != 0:
                raise NotImplementedError(f"torch mirror: {name} is not a plain ReLU")
        elif kind == "Activation":
            options = {"activation": _activation(layer)}
        elif kind == "MaxPooling2D":
            if layer.padding != "valid":
                raise NotImplementedError(f"torch mirror: {name} pools with padding {layer.padding!r}")
            options = {"pool": tuple(layer.pool_size), "strides": tuple(layer.strides)}
        elif kind not in ("Add", "Flatten", "GlobalAveragePooling2D", "Dropout"):
            raise NotImplementedError(f"torch mirror: no {kind} layer ({name}); supported: the layers tfadv.models "
                                      f"builds")
        return options

    def forward(self, images):
        values = {self.input_name: images}
        for name, kind, inputs, options in self.steps:
            x = values[inputs[0]]
            if kind == "Normalization":
                x = (x - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")
            elif kind == "Conv2D":
                if options["pad"] is not None:
                    x = F.pad(x, options["pad"])
                x = ACTIVATIONS[options["activation"]](self.layers[name](x))
            elif kind == "Dense":
                x = ACTIVATIONS[options["activation"]](self.layers[name](x))
            elif kind == "BatchNormalization":
                x = self.layers[name](x)
            elif kind == "ReLU":
                x = F.relu(x)
            elif kind == "Activation":
                x = ACTIVATIONS[options["activation"]](x)
            elif kind == "Add":
                for other in inputs[1:]:
                    x = x + values[other]
            elif kind == "Flatten":
                x = (x.permute(0, 2, 3, 1) if x.dim() == 4 else x).flatten(1)  # Keras flattens NHWC
            elif kind == "GlobalAveragePooling2D":
                x = x.mean(dim=(2, 3))
            elif kind == "MaxPooling2D":
                x = F.max_pool2d(x, options["pool"], options["strides"])
            values[name] = x  # Dropout: the identity at inference
        return values[self.output_name]


def mirror(network) -> KerasMirror:
    """The torch copy of a float32 tfadv Keras network: NCHW float32 [0, 1] images -> logits, in eval mode."""
    return KerasMirror(network)


def nchw(images) -> "torch.Tensor":
    """NHWC numpy images as a contiguous NCHW float32 torch tensor."""
    return torch.from_numpy(np.array(np.asarray(images, np.float32).transpose(0, 3, 1, 2), order="C"))
