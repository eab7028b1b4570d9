"""Every tfadv SavedModel (plain and Co-SSAT) carries `logits_unchecked`: the serving logits without the input
checks, which XLA compiles (the checks' string ops it cannot), as an attribute of the saved object, not a
signature. It loads with TensorFlow alone, equals `serving_default`'s logits on valid images, with and without
XLA, and `evaluate_model(path, ..., jit_compile=True)` uses it and reports what the plain run reports. A
SavedModel exported before it existed is refused under jit_compile with a request to re-export."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import cossat, evaluation, export, models
from tfadv.evaluation import api

EPS = {"linf": 0.125, "l2": 1.0, "l1": 4.0}


@pytest.fixture(scope="module")
def exported(natural_mlp, tmp_path_factory):
    """{kind: (path, in-process logits function)} for a plain export of the trained MLP and a Co-SSAT export."""
    root = tmp_path_factory.mktemp("xla_export")
    plain = export.export(natural_mlp, str(root / "plain" / "1"), metadata={"dataset": "digits"})
    keras.utils.set_random_seed(1)
    base = models.build("mlp", (8, 8, 1), 10, (0.3,), (0.37,))
    x = np.random.default_rng(1).random((64, 8, 8, 1)).astype(np.float32)
    dlr = cossat.detector_metrics(natural_mlp(x, training=False))["dlr"].numpy()
    # the median DLR as threshold: both branches of the Co-SSAT decision are taken on random images
    model = cossat.CoSSAT(natural_mlp, base, cossat.Detector("dlr", {"dlr": cossat.Threshold(float(np.median(dlr)))}))
    both = cossat.export(model, str(root / "cossat" / "1"))
    return {"plain": (plain, lambda images: natural_mlp(images, training=False)), "cossat": (both, model.logits)}


WITHOUT_TFADV = r"""
import json, sys
import numpy as np
import tensorflow as tf
x = np.random.default_rng(0).random((32, 8, 8, 1)).astype(np.float32)
x[0] = 0.0; x[1] = 1.0  # both ends of [0, 1]
out = {}
for path in sys.argv[1:]:
    loaded = tf.saved_model.load(path)
    served = loaded.signatures["serving_default"](images=tf.constant(x))
    unchecked = loaded.logits_unchecked(tf.constant(x))
    compiled = tf.function(lambda images: loaded.logits_unchecked(images), jit_compile=True)(tf.constant(x))
    out[path] = {"signatures": sorted(loaded.signatures), "served": served["logits"].numpy().tolist(),
                 "use_base": served["use_base"].numpy().tolist() if "use_base" in served else None,
                 "unchecked": unchecked.numpy().tolist(), "xla": compiled.numpy().tolist(),
                 # no checks: images serving_default refuses are answered (no error)
                 "unchecked_255": loaded.logits_unchecked(tf.constant(x * 255)).shape.as_list()}
assert not any(name.startswith("tfadv") for name in sys.modules), "tfadv was imported"
print(json.dumps(out))
"""


def test_unchecked_logits_load_without_tfadv_and_compile_with_xla(exported, tmp_path):
    script = tmp_path / "check.py"
    script.write_text(WITHOUT_TFADV)
    paths = {kind: path for kind, (path, _) in exported.items()}
    result = subprocess.run([sys.executable, str(script), *paths.values()], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=""))
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype(np.float32)
    x[0], x[1] = 0.0, 1.0
    for kind, path in paths.items():
        seen = out[path]
        assert seen["signatures"] == ["serving_default"], kind  # TF Serving sees the checked signature only
        served, unchecked, xla = (np.array(seen[k], np.float32) for k in ("served", "unchecked", "xla"))
        assert served.shape == (32, 10)
        np.testing.assert_array_equal(unchecked, served, err_msg=kind)  # the same graph minus the checks
        np.testing.assert_allclose(xla, served, rtol=1e-5, atol=1e-5, err_msg=kind)  # XLA: a few ulp at most
        # the same class wherever that tolerance decides it: two logits closer than twice it may swap under
        # XLA's rounding, which differs from one CPU to another
        top = np.sort(served, -1)[:, -2:]
        decided = top[:, 1] - top[:, 0] > 2 * (1e-5 + 1e-5 * np.abs(top).max(-1))
        np.testing.assert_array_equal(np.argmax(xla, -1)[decided], np.argmax(served, -1)[decided], err_msg=kind)
        np.testing.assert_allclose(served, np.asarray(exported[kind][1](x)), rtol=1e-5, atol=1e-5)
        assert seen["unchecked_255"] == [32, 10]  # no checks: 0..255 pixels answered (serving_default refuses them)
        if kind == "cossat":  # the Co-SSAT decision logits, both branches exercised
            assert 0 < np.mean(seen["use_base"]) < 1


def test_evaluate_model_with_xla_equals_the_plain_run(exported, digits):
    path = exported["plain"][0]
    x, y = digits.test[0][:40], digits.test[1][:40].astype(np.int32)
    assert export.load_logits_fn(path, unchecked=True).unchecked
    assert not export.load_logits_fn(path).unchecked  # the default stays the checked serving signature
    reports = {jit: evaluation.evaluate_model(path, x, y, ["pgd10", "apgd_ce10"], budget=EPS, seed=1, batch_size=20,
                                              audit=False, log=None, jit_compile=jit) for jit in (False, True)}
    assert reports[True]["jit_compile"] is True
    for name in ("pgd10", "apgd_ce10"):
        assert reports[True]["attacks"][name]["robust_accuracy"] == reports[False]["attacks"][name]["robust_accuracy"]
    assert reports[True]["clean_accuracy"] == reports[False]["clean_accuracy"]
    assert reports[True]["worst_case_accuracy"] == reports[False]["worst_case_accuracy"]
    assert reports[False]["clean_accuracy"] > reports[False]["worst_case_accuracy"]  # the attacks do something
    print({name: reports[False]["attacks"][name]["robust_accuracy"] for name in ("pgd10", "apgd_ce10")},
          reports[False]["clean_accuracy"])


def test_a_savedmodel_without_unchecked_logits_is_refused_under_xla(natural_mlp, digits, tmp_path):
    network = natural_mlp

    def serve(images):  # the serving graph tfadv wrote before logits_unchecked existed
        return export.serving_outputs(network(export.checked_images(images, (8, 8, 1)), training=False))

    old = export.write_saved_model(str(tmp_path / "old" / "1"), [network], serve, (8, 8, 1))
    assert not hasattr(tf.saved_model.load(old), export.UNCHECKED_LOGITS)
    x, y = digits.test[0][:8], digits.test[1][:8].astype(np.int32)
    with pytest.raises(api.EvaluationError) as caught:
        evaluation.evaluate_model(old, x, y, ["pgd2"], budget=EPS, audit=False, log=None, jit_compile=True)
    message = str(caught.value)
    assert message.startswith("--jit_compile: ") and "re-export" in message and "\n" not in message, message
    plain = evaluation.evaluate_model(old, x, y, ["pgd2"], budget=EPS, audit=False, log=None)  # still fine without
    assert 0 < plain["clean_accuracy"]

    # a foreign SavedModel without input checks (no logits_unchecked either) compiles through its signature
    module = tf.Module()
    module.network = network
    module.serve = tf.function(lambda images: {"logits": network(images, training=False)},
                               input_signature=[tf.TensorSpec([None, 8, 8, 1], tf.float32, name="images")])
    foreign = str(tmp_path / "foreign")
    tf.saved_model.save(module, foreign, signatures={"serving_default": module.serve})
    logits_fn, _ = api.load_model(foreign, unchecked=True)
    assert not logits_fn.unchecked
    api.check_xla(logits_fn, x[:1])  # accepted
    np.testing.assert_allclose(logits_fn(x).numpy(), network(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
