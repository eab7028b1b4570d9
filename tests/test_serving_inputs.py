"""The serving input policy of every exported SavedModel (plain and Co-SSAT): `serving_default` refuses NaN / inf
pixels, pixels outside [0, 1] and tensors of another dtype with an error naming the rule, answers valid images
exactly as the in-process network does, and keeps input gradients intact (tfadv's own evaluation attacks the
loaded signature). Everything below loads the SavedModel with `tf.saved_model.load` (or a TF1 session, the
path of TF Serving and saved_model_cli), never through tfadv."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, cossat, export, models

POLICY = "images must be finite float32 pixels in [0, 1]"
SHAPE = (8, 8, 1)


def _network(seed):
    keras.utils.set_random_seed(seed)
    return models.build("mlp", SHAPE, 10, (0.3,), (0.37,))


@pytest.fixture(scope="module")
def valid_images():
    images = np.random.default_rng(0).random((16,) + SHAPE).astype(np.float32)
    images[0, 0, 0, 0], images[1, 0, 0, 0] = 0.0, 1.0  # both ends of [0, 1] are valid
    return images


@pytest.fixture(scope="module", params=["plain", "cossat"])
def exported(request, tmp_path_factory):
    """(kind, path of the SavedModel, the in-process logits function it must equal)."""
    path = str(tmp_path_factory.mktemp(request.param) / "saved_model" / "1")
    if request.param == "plain":
        network = _network(0)
        export.export(network, path, metadata={"dataset": "digits"})
        return request.param, path, lambda x: network(x, training=False)
    ssat, base = _network(1), _network(2)
    x = np.random.default_rng(1).random((64,) + SHAPE).astype(np.float32)
    dlr = cossat.detector_metrics(ssat(x, training=False))["dlr"].numpy()
    # the median DLR as threshold: both branches of the Co-SSAT decision are exercised by random images
    model = cossat.CoSSAT(ssat, base, cossat.Detector("dlr", {"dlr": cossat.Threshold(float(np.median(dlr)))}))
    cossat.export(model, path)
    return request.param, path, model.logits


@pytest.fixture(scope="module")
def served(exported):
    """The loaded SavedModel (kept alive: the signature references its variables) and its signature."""
    loaded = tf.saved_model.load(exported[1])
    return loaded, loaded.signatures["serving_default"]


def _status_line(error):
    """The first line of the op's status message, which is what TF Serving returns with INVALID_ARGUMENT. TF's
    Python function call prepends `Graph execution error:` and `Detected at node ...` lines (plus stack
    frames when it has them); those are skipped here."""
    lines = error.message.splitlines()
    while lines and (lines[0] in ("Graph execution error:", "", "<stack traces unavailable>")
                     or lines[0].startswith(("Detected at node", " "))):
        lines.pop(0)
    return lines[0]


def _bad_inputs(valid):
    one_ulp_above = np.nextafter(np.float32(1), np.float32(2))
    cases = {}
    for name, value in [("nan", np.nan), ("+inf", np.inf), ("-inf", -np.inf)]:
        images = valid.copy()
        images[3, 4, 5, 0] = value
        cases[name] = (images, f"{POLICY}; got NaN or inf")
    pixels_255 = np.round(valid * 255).astype(np.float32)
    assert pixels_255.min() == 0 and pixels_255.max() == 255
    cases["0..255"] = (pixels_255, f"{POLICY}; got values in [0, 255] (did you forget to divide by 255?)")
    negative = valid.copy()
    negative[2, 1, 1, 0] = -0.001
    cases["negative"] = (negative, f"{POLICY}; got values in [-0.001, 1] (pass raw pixels clipped to [0, 1]; "
                                   "mean / std normalisation is inside the model)")
    above = valid.copy()
    above[5, 2, 2, 0] = one_ulp_above  # no tolerance: [0, 1] exactly
    cases["one ulp above 1"] = (above, f"{POLICY}; got values in [0, 1.00000012]")
    return cases


def test_invalid_pixels_are_refused_with_the_policy_on_the_first_line(served, valid_images):
    _, serve = served
    cases = _bad_inputs(valid_images)
    for name, (images, expected) in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as caught:
            serve(images=tf.constant(images))
        line = _status_line(caught.value)
        assert line == f"assertion failed: [{expected}]", (name, caught.value.message)
        assert caught.value.error_code == tf.errors.INVALID_ARGUMENT


def test_standardised_images_report_their_range(served, valid_images):
    _, serve = served
    images = (valid_images - 0.3) / 0.37
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        serve(images=tf.constant(images))
    line = _status_line(caught.value)
    low, high = map(float, re.search(r"got values in \[(\S+), (\S+)\]", line).groups())
    assert (np.float32(low), np.float32(high)) == (images.min(), images.max())
    assert line.endswith("(pass raw pixels clipped to [0, 1]; mean / std normalisation is inside the model)]")


def test_a_wrong_shape_is_still_reported_first(served, valid_images):
    _, serve = served
    images = valid_images[:, :, :, 0] * 255  # wrong rank and wrong range: the shape is named
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        serve(images=tf.constant(images))
    line = _status_line(caught.value)
    assert line.startswith("assertion failed: [serving_default expects images of shape [batch, 8, 8, 1], "
                           "float32 in [0, 1]; got shape] [16 8 8]"), line


def test_valid_images_give_the_in_process_logits(exported, served, valid_images):
    _, _, local = exported
    _, serve = served
    out = serve(images=tf.constant(valid_images))
    np.testing.assert_allclose(out["logits"].numpy(), np.asarray(local(valid_images)), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["classes"].numpy(), np.argmax(out["logits"].numpy(), -1))
    if "use_base" in out:  # Co-SSAT: both branches of the decision are compared
        assert 0 < out["use_base"].numpy().mean() < 1
    empty = serve(images=tf.zeros((0,) + SHAPE))  # an empty batch is valid (min = +inf, max = -inf)
    assert empty["logits"].shape == (0, 10)


def test_other_dtypes_are_refused(served, valid_images):
    _, serve = served
    for dtype, images in [("uint8", np.round(valid_images * 255).astype(np.uint8)),
                          ("uint8", (valid_images > 0.5).astype(np.uint8)),  # even with values inside [0, 1]
                          ("double", valid_images.astype(np.float64))]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"expected to be a float tensor but is a "
                                                                 f"{dtype} tensor"):
            serve(images=tf.constant(images))
    # A numpy array is converted to the signature's float32 by TF's Python wrapper before the graph runs (as
    # TF Serving's REST API converts JSON numbers): a uint8 array of 0..255 pixels then fails the range check.
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        serve(images=np.round(valid_images * 255).astype(np.uint8))
    assert _status_line(caught.value).endswith("got values in [0, 255] (did you forget to divide by 255?)]")


def test_input_gradients_through_the_loaded_signature_are_unchanged(exported, served, valid_images):
    _, _, local = exported
    _, serve = served
    x = tf.constant(valid_images)
    labels = tf.constant(np.arange(len(valid_images)) % 10, tf.int32)

    def gradient(logits_fn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits_fn(x)))
        return tape.gradient(loss, x).numpy()

    served_gradient = gradient(lambda images: serve(images=images)["logits"])
    assert np.all(np.isfinite(served_gradient)) and np.abs(served_gradient).sum() > 0
    np.testing.assert_allclose(served_gradient, gradient(local), rtol=1e-4, atol=1e-6)
    # tfadv's evaluation path: load_logits_fn + a compiled attack stays inside [0, 1], so the checks never fire
    logits_fn = export.load_logits_fn(exported[1])
    np.testing.assert_allclose(gradient(logits_fn), served_gradient, rtol=1e-6, atol=1e-8)
    adversarial = tf.function(lambda images, y: attacks.pgd(logits_fn, images, y, eps=0.3, step_size=0.1, steps=5))(
        x, labels).numpy()
    assert 0.0 <= adversarial.min() and adversarial.max() <= 1.0
    assert np.abs(adversarial - valid_images).max() <= 0.3 + 1e-6


def test_the_tf1_session_path_of_tf_serving_refuses_with_invalid_argument(exported, valid_images):
    """TF Serving and saved_model_cli run the SavedModel in a session; a refused input is INVALID_ARGUMENT."""
    local = np.asarray(exported[2](valid_images))  # eager, before the session makes its graph the default
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], exported[1])
        signature = meta_graph.signature_def["serving_default"]
        feed, fetch = signature.inputs["images"].name, signature.outputs["logits"].name
        logits = session.run(fetch, {feed: valid_images})
        np.testing.assert_allclose(logits, local, rtol=1e-5, atol=1e-5)
        cases = _bad_inputs(valid_images)
        for name in ("nan", "0..255", "negative"):
            images, expected = cases[name]
            with pytest.raises(tf.errors.InvalidArgumentError) as caught:
                session.run(fetch, {feed: images})
            assert caught.value.error_code == tf.errors.INVALID_ARGUMENT
            assert _status_line(caught.value) == f"assertion failed: [{expected}]", caught.value.message


CHECK_WITHOUT_TFADV = r"""
import json, sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
x = np.random.default_rng(0).random((4, 8, 8, 1)).astype(np.float32)
results = {"valid": serve(images=tf.constant(x))["classes"].numpy().tolist()}
for name, images in [("nan", np.full_like(x, np.nan)), ("255", x * 255), ("negative", np.full_like(x, -0.25))]:
    try:
        serve(images=tf.constant(images))
        results[name] = "accepted"
    except tf.errors.InvalidArgumentError as error:
        results[name] = error.message
assert not any(name.startswith("tfadv") for name in sys.modules), "tfadv was imported"
print(json.dumps(results))
"""


def test_the_checks_live_in_the_graph_not_in_tfadv(exported, tmp_path):
    script = tmp_path / "check.py"
    script.write_text(CHECK_WITHOUT_TFADV)
    result = subprocess.run([sys.executable, str(script), exported[1]], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=""))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(results["valid"]) == 4
    assert f"assertion failed: [{POLICY}; got NaN or inf]" in results["nan"]
    assert "(did you forget to divide by 255?)]" in results["255"]
    assert f"assertion failed: [{POLICY}; got values in [-0.25, -0.25] (pass raw pixels" in results["negative"]
