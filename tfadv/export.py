"""SavedModel export with a `serving_default` signature that needs nothing from tfadv to load or run.

`serving_default(images)`: images float32 [None, H, W, C] in [0, 1] -> `logits`, `probabilities`, `classes`.
The exported network is a float32 copy (mixed-precision training keeps float32 weights), so TF Serving and
other pipelines get float32 numerics on any device.

Input policy (checked inside the graph, so it holds for `tf.saved_model.load`, `saved_model_cli` and TF Serving,
where a violation is an INVALID_ARGUMENT error): a float32 tensor of shape [batch, H, W, C] whose pixels are all
finite and inside [0, 1] exactly (no tolerance: tfadv's data and every tfadv attack clip to [0, 1]). The first
line of TF's status message names the rule and what was seen, e.g.
`assertion failed: [images must be finite float32 pixels in [0, 1]; got values in [0, 255] (did you forget to
divide by 255?)]` (in Python, TF's function call puts `Graph execution error:` / `Detected at node ...` lines
before it). The checks are control dependencies of an identity, so input gradients are unchanged.

`logits_unchecked(images)` (an attribute of the loaded object, not a signature: TF Serving sees only
`serving_default`): the same logits without the input checks, for attacks compiled with XLA, which has no kernel
for the checks' string operations (`load_logits_fn(path, unchecked=True)`; evaluate.py --jit_compile). It
answers any input, valid or not; its logits on valid images equal `serving_default`'s.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import tensorflow as tf

METADATA_FILE = "tfadv.json"
UNCHECKED_LOGITS = "logits_unchecked"  # the loaded object's attribute: logits without the input checks (XLA)


def _float32_config(config):
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**config, "config": {**config.get("config", {}), "name": "float32"}}
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    if config in ("mixed_bfloat16", "mixed_float16", "bfloat16", "float16"):
        return "float32"
    return config


def as_float32(network: keras.Model) -> keras.Model:
    """A float32 copy of a functional network (same weights), whatever its dtype policy."""
    policies = {layer.dtype_policy.name for layer in network.layers}
    if policies <= {"float32"}:
        return network
    copy = keras.Model.from_config(_float32_config(network.get_config()))
    copy.set_weights(network.get_weights())
    return copy


BFLOAT16_POLICY = "mixed_bfloat16"


def _policy_config(config, name: str):
    """`config` (a layer's) with every dtype policy of its layers set to `name`; the tensors it connects
    (`inbound_nodes`, whose "float32" is a tensor dtype) are left alone."""
    if isinstance(config, dict):
        if config.get("class_name") in ("DTypePolicy", "FloatDTypePolicy"):
            return {**config, "config": {**config.get("config", {}), "name": name}}
        return {key: value if key in ("inbound_nodes", "build_config") else
                name if key == "dtype" and isinstance(value, str) else _policy_config(value, name)
                for key, value in config.items()}
    if isinstance(config, list):
        return [_policy_config(value, name) for value in config]
    return config


def as_mixed_bfloat16(network: keras.Model) -> keras.Model:
    """A `mixed_bfloat16` copy of a functional network (same weights, float32 variables): what `tfadv.models.build`
    builds under that global policy. The hidden layers compute in bfloat16; the input normalisation (Normalization
    layers: a 1/255 perturbation must survive it) and the output layers stay float32, so the logits are float32.
    ValueError for a network that is not functional (a subclassed model has no config to rebuild)."""
    try:
        config = network.get_config()
        layers, outputs = config["layers"], config["output_layers"]
        # one output: ["logits", 0, 0]; several: a list of those
        outputs = {outputs[0]} if isinstance(outputs[0], str) else {entry[0] for entry in outputs}
    except (NotImplementedError, KeyError, TypeError) as error:
        raise ValueError(f"{type(network).__name__} {network.name!r} is not a functional Keras network, so no "
                         f"bfloat16 copy of it can be built ({error})") from None
    keep = lambda layer: layer["class_name"] in ("InputLayer", "Normalization") or layer["name"] in outputs  # noqa
    config = {**config, "layers": [layer if keep(layer) else _policy_config(layer, BFLOAT16_POLICY)
                                   for layer in layers]}
    copy = keras.Model.from_config(config)
    copy.set_weights(network.get_weights())
    return copy


def serving_outputs(logits):
    """The standard outputs of a classifier signature."""
    logits = tf.cast(logits, tf.float32)
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits, axis=-1),
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
    }


PIXEL_POLICY = "images must be finite float32 pixels in [0, 1]"


def _pixel_message(finite, low, high):
    """The policy sentence with what was seen: NaN / inf, or the value range plus a hint for the usual causes."""
    values = tf.strings.format(PIXEL_POLICY + "; got values in [{}, {}]", (low, high))
    hint = tf.where(
        tf.logical_and(low >= 0.0, tf.logical_and(high >= 2.0, high <= 255.0)),  # 8-bit levels
        " (did you forget to divide by 255?)",
        tf.where(low < 0.0, " (pass raw pixels clipped to [0, 1]; mean / std normalisation is inside the model)",
                 ""))
    return tf.where(finite, tf.strings.join([values, hint]), PIXEL_POLICY + "; got NaN or inf")


def checked_images(images, image_shape):
    """`images` after run-time checks of the serving input policy, each naming what is expected:

    1. shape [batch, *image_shape] (a loaded signature does not enforce its static shape, so a wrong rank or
       size would otherwise fail deep inside the graph);
    2. every pixel finite and inside [0, 1] exactly (a network maps NaN / inf to a confident constant class and
       happily classifies 0..255 images, so both are refused rather than answered).

    The dtype is pinned by the signature's TensorSpec (float32): a tensor of another dtype is refused before
    the graph runs. The checks only add control dependencies to an identity: values and gradients are those of
    `images`.
    """
    expected = tf.constant(list(image_shape), tf.int32)
    shape = tf.shape(images)
    padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)[1:4]
    valid = tf.logical_and(tf.equal(tf.size(shape), 4), tf.reduce_all(tf.equal(padded, expected)))
    message = (f"serving_default expects images of shape [batch, {', '.join(map(str, image_shape))}], "
               "float32 in [0, 1]; got shape")
    # summarize=-1: every entry of the shape (TF prints 3 by default: [N, 32, 32, 1] would show as [N 32 32...],
    # hiding the channel count that is wrong)
    shape_check = tf.debugging.Assert(valid, [message, shape], summarize=-1)
    with tf.control_dependencies([shape_check]):  # a wrong shape is reported first
        finite = tf.reduce_all(tf.math.is_finite(images))
        low, high = tf.reduce_min(images), tf.reduce_max(images)  # +inf / -inf on an empty batch: accepted
        in_range = tf.logical_and(finite, tf.logical_and(low >= 0.0, high <= 1.0))
        pixel_check = tf.debugging.Assert(in_range, [_pixel_message(finite, low, high)])
    with tf.control_dependencies([shape_check, pixel_check]):
        return tf.identity(images)


def write_saved_model(path: str, networks, serve_fn, image_shape, metadata: Optional[dict] = None,
                      logits_fn=None) -> str:
    """Writes `serve_fn(images) -> dict` as `serving_default`, tracking the variables of `networks`, and
    `logits_fn(images) -> logits` (the same logits without the input checks, for XLA) as the attribute
    `UNCHECKED_LOGITS` of the saved object (no signature).

    Keras' ExportArchive tracks variables (not the Keras objects), which keeps the SavedModel loadable by
    TF Serving, `saved_model_cli` (TF1 sessions) and `tf.saved_model.load`. Written to a temporary directory
    and renamed, so a crash never leaves a half-written model where a server looks.
    """
    archive = keras.export.ExportArchive()
    for network in networks:
        archive.track(network)
    signature = [tf.TensorSpec([None] + list(image_shape), tf.float32, name="images")]
    archive.add_endpoint("serving_default", serve_fn, input_signature=signature)
    if logits_fn is not None:
        # Not an endpoint (ExportArchive makes every endpoint a signature): a tf.function on the saved object,
        # whose variables are those of serving_default (tracked by the archive) since it calls the same networks.
        setattr(archive._tf_trackable, UNCHECKED_LOGITS,
                tf.function(logits_fn, input_signature=signature, autograph=False))
    tmp = path.rstrip("/") + ".partial"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    created = _missing_ancestors(tmp)
    try:
        archive.write_out(tmp, verbose=False)
        if metadata:
            # assets.extra/ is where TF Serving looks for optional side files; it ignores this one.
            os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
            with open(os.path.join(tmp, "assets.extra", METADATA_FILE), "w") as handle:
                json.dump(metadata, handle, indent=2)
    except BaseException:  # a full disk, a signal: no half-written model stays (nor the directories made for it)
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
        for directory in created:
            if os.path.isdir(directory) and not os.listdir(directory):
                os.rmdir(directory)
        raise
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.replace(tmp, path)
    return path


def _missing_ancestors(path: str) -> list:
    """The directories above `path` that do not exist yet, deepest first (what writing `path` creates)."""
    missing, parent = [], os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        missing.append(parent)
        parent = os.path.dirname(parent)
    return missing


def export(network: keras.Model, path: str, metadata: Optional[dict] = None) -> str:
    """Writes a classifier SavedModel to `path` (use `<run>/saved_model/1` for TF Serving); returns `path`."""
    network = as_float32(network)
    image_shape = tuple(network.input_shape[1:])

    def serve(images):
        return serving_outputs(network(checked_images(images, image_shape), training=False))

    def logits(images):  # serve's logits without the checks
        return serving_outputs(network(images, training=False))["logits"]

    return write_saved_model(path, [network], serve, image_shape, metadata, logits_fn=logits)


def read_metadata(path: str) -> dict:
    """tfadv's description of an exported model (dataset, classes, eps), or {} for a foreign SavedModel."""
    candidate = os.path.join(path, "assets.extra", METADATA_FILE)
    if not os.path.exists(candidate):
        return {}
    with open(candidate) as handle:
        return json.load(handle)


def load_logits_fn(path: str, unchecked: bool = False):
    """`logits_fn(images)` from any SavedModel whose serving signature returns `logits` (inference mode).

    `unchecked`: the SavedModel's `UNCHECKED_LOGITS` function instead (the same logits without the input checks,
    which XLA cannot compile) when it has one; `logits_fn.unchecked` says which one was returned (False for a
    SavedModel written before tfadv saved that function, or by another tool)."""
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ValueError(f"{path} has no serving_default signature")
    outputs = signature.structured_outputs
    if "logits" not in outputs:
        raise ValueError(f"{path}: serving_default returns {sorted(outputs)}, not 'logits'")
    input_name = list(signature.structured_input_signature[1].keys())[0]
    unchecked_fn = getattr(loaded, UNCHECKED_LOGITS, None) if unchecked else None

    if unchecked_fn is not None:
        def logits_fn(images):
            return unchecked_fn(images)
    else:
        def logits_fn(images):
            return signature(**{input_name: images})["logits"]

    logits_fn.saved_model = loaded  # keeps the variables alive
    logits_fn.input_shape = tuple(signature.structured_input_signature[1][input_name].shape)
    logits_fn.unchecked = unchecked_fn is not None
    return logits_fn
