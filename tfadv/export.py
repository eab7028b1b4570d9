"""SavedModel export with a `serving_default` signature that needs nothing from tfadv to load or run.

`serving_default(images)`: images float32 [None, H, W, C] in [0, 1] -> `logits`, `probabilities`, `classes`.
The exported network is a float32 copy (mixed-precision training keeps float32 weights), so TF Serving and
other pipelines get float32 numerics on any device.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import tensorflow as tf

METADATA_FILE = "tfadv.json"


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


def serving_outputs(logits):
    """The standard outputs of a classifier signature."""
    logits = tf.cast(logits, tf.float32)
    return {
        "logits": logits,
        "probabilities": tf.nn.softmax(logits, axis=-1),
        "classes": tf.argmax(logits, axis=-1, output_type=tf.int32),
    }


def checked_images(images, image_shape):
    """`images` after a run-time shape check that names what is expected (a loaded signature does not
    enforce its static shape, so a wrong rank or size would otherwise fail deep inside the graph)."""
    expected = tf.constant(list(image_shape), tf.int32)
    shape = tf.shape(images)
    padded = tf.concat([shape, tf.zeros([4], tf.int32)], axis=0)[1:4]
    valid = tf.logical_and(tf.equal(tf.size(shape), 4), tf.reduce_all(tf.equal(padded, expected)))
    message = (f"serving_default expects images of shape [batch, {', '.join(map(str, image_shape))}], "
               "float32 in [0, 1]; got shape")
    with tf.control_dependencies([tf.debugging.Assert(valid, [message, shape])]):
        return tf.identity(images)


def write_saved_model(path: str, networks, serve_fn, image_shape, metadata: Optional[dict] = None) -> str:
    """Writes `serve_fn(images) -> dict` as `serving_default`, tracking the variables of `networks`.

    Keras' ExportArchive tracks variables (not the Keras objects), which keeps the SavedModel loadable by
    TF Serving, `saved_model_cli` (TF1 sessions) and `tf.saved_model.load`. Written to a temporary directory
    and renamed, so a crash never leaves a half-written model where a server looks.
    """
    archive = keras.export.ExportArchive()
    for network in networks:
        archive.track(network)
    signature = [tf.TensorSpec([None] + list(image_shape), tf.float32, name="images")]
    archive.add_endpoint("serving_default", serve_fn, input_signature=signature)
    tmp = path.rstrip("/") + ".partial"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    archive.write_out(tmp, verbose=False)
    if metadata:
        # assets.extra/ is where TF Serving looks for optional side files; it ignores this one.
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, "assets.extra", METADATA_FILE), "w") as handle:
            json.dump(metadata, handle, indent=2)
    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    os.replace(tmp, path)
    return path


def export(network: keras.Model, path: str, metadata: Optional[dict] = None) -> str:
    """Writes a classifier SavedModel to `path` (use `<run>/saved_model/1` for TF Serving); returns `path`."""
    network = as_float32(network)
    image_shape = tuple(network.input_shape[1:])

    def serve(images):
        return serving_outputs(network(checked_images(images, image_shape), training=False))

    return write_saved_model(path, [network], serve, image_shape, metadata)


def read_metadata(path: str) -> dict:
    """tfadv's description of an exported model (dataset, classes, eps), or {} for a foreign SavedModel."""
    candidate = os.path.join(path, "assets.extra", METADATA_FILE)
    if not os.path.exists(candidate):
        return {}
    with open(candidate) as handle:
        return json.load(handle)


def load_logits_fn(path: str):
    """`logits_fn(images)` from any SavedModel whose serving signature returns `logits` (inference mode)."""
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures.get("serving_default")
    if signature is None:
        raise ValueError(f"{path} has no serving_default signature")
    outputs = signature.structured_outputs
    if "logits" not in outputs:
        raise ValueError(f"{path}: serving_default returns {sorted(outputs)}, not 'logits'")
    input_name = list(signature.structured_input_signature[1].keys())[0]

    def logits_fn(images):
        return signature(**{input_name: images})["logits"]

    logits_fn.saved_model = loaded  # keeps the variables alive
    logits_fn.input_shape = tuple(signature.structured_input_signature[1][input_name].shape)
    return logits_fn
