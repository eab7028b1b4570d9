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


# float32 resolution just below 1: where 1 - softmax(z)[y] (~ the cross-entropy) is below it, softmax rounds the true
# class's probability to 1 (or 1 - 2^-24), so the cross-entropy's gradient p - onehot loses its true-class term
# to rounding and the direction of a CE attack's first step is round-off
CE_RESOLVED = 2.0 ** -23


def _margins(logits, labels):
    """Per example: the true class's logit minus the highest other one (float64)."""
    z = np.asarray(logits, np.float64)
    true = z[np.arange(len(z)), labels]
    return true - np.where(np.eye(z.shape[1], dtype=bool)[labels], -np.inf, z).max(1)


def _decided(logits, labels):
    """Per example: the verdict does not depend on the last bits, its margin being larger than twice the
    tolerance of XLA's logits against the plain graph's (asserted in the first test: 1e-5 + 1e-5 |z|)."""
    return np.abs(_margins(logits, labels)) > 2 * (1e-5 + 1e-5 * np.abs(logits).max(-1))


def test_evaluate_model_with_xla_equals_the_plain_run(exported, digits, tmp_path):
    """With jit_compile the same examples are attacked and every example's attack follows the plain graph's path
    (images within float32 round-off of the plain run's) and gets its verdict, except where the CPU's last bits
    decide: a verdict whose margin is within the XLA logits' tolerance of 0, and a path that parts from the plain
    one on an example whose clean cross-entropy is below float32 resolution (its first CE gradient is
    round-off: measured on an AVX2 AMD EPYC without oneDNN, APGD-CE-10's start on one such example had loss 0.0
    in the plain graph and 1.2e-7 under XLA, their first steps differed in 25 pixels and only XLA's path found a
    misclassification). Each report's robust accuracies are its per-example verdicts', and each output lies in
    the eps-ball and [0, 1]."""
    path = exported["plain"][0]
    x, y = digits.test[0][:40], digits.test[1][:40].astype(np.int32)
    assert export.load_logits_fn(path, unchecked=True).unchecked
    assert not export.load_logits_fn(path).unchecked  # the default stays the checked serving signature
    names = ("pgd10", "apgd_ce10")
    reports, saved = {}, {}
    for jit in (False, True):
        saved_path = str(tmp_path / f"adversarial-{jit}.npz")
        reports[jit] = evaluation.evaluate_model(path, x, y, list(names), budget=EPS, seed=1, batch_size=20,
                                                 audit=False, log=None, jit_compile=jit, save_adversarial=saved_path)
        with np.load(saved_path) as archive:
            saved[jit] = dict(archive)
    assert reports[True]["jit_compile"] is True
    plain_fn = export.load_logits_fn(path)
    unchecked = export.load_logits_fn(path, unchecked=True)
    xla_fn = tf.function(lambda images: unchecked(images), jit_compile=True)
    clean = np.asarray(plain_fn(x))
    clean_correct = {jit: np.isin(np.arange(len(y)), saved[jit][f"{names[0]}/indices"]) for jit in (False, True)}
    # no clean verdict here is left to the last bits (margins of 2 and more), so both runs attack the same examples
    assert _decided(clean, y).all()
    np.testing.assert_array_equal(clean_correct[True], clean_correct[False])
    for jit in (False, True):
        assert reports[jit]["clean_accuracy"] == clean_correct[jit].mean()
    ce = np.log(np.exp(clean - clean.max(1, keepdims=True)).sum(1)) + clean.max(1) - clean[np.arange(len(y)), y]
    parted_allowed = ce < CE_RESOLVED
    worst = {jit: np.ones(len(y), bool) for jit in (False, True)}
    parted = {}
    for name in names:
        indices = {jit: saved[jit][f"{name}/indices"] for jit in (False, True)}
        for jit in (False, True):  # every attack attacks the examples classified correctly
            np.testing.assert_array_equal(indices[jit], np.flatnonzero(clean_correct[jit]), err_msg=name)
        index = indices[False]
        labels = y[index]
        images = {jit: saved[jit][f"{name}/images"] for jit in (False, True)}
        broken = {jit: saved[jit][f"{name}/broken"] for jit in (False, True)}
        for jit in (False, True):
            assert saved[jit][f"{name}/valid"].all(), (name, jit)
            assert images[jit].min() >= 0 and images[jit].max() <= 1, (name, jit)
            assert np.abs(images[jit] - x[index]).max() <= EPS["linf"] * (1 + 1e-6), (name, jit)
            # the report is its verdicts: robust = correct clean and not broken
            robust = np.zeros(len(y), bool)
            robust[index] = ~broken[jit]
            assert reports[jit]["attacks"][name]["robust_accuracy"] == robust.mean(), (name, jit)
            worst[jit] &= robust
            # each verdict is the model's: a broken output is misclassified, an unbroken one not (XLA's verdicts
            # by its own logits, within their tolerance)
            logits = np.asarray(xla_fn(images[jit]) if jit else plain_fn(images[jit]))
            decided = _decided(logits, labels)
            np.testing.assert_array_equal(broken[jit][decided], (_margins(logits, labels) < 0)[decided])
        # the same path: iterates built from the same float32 operations, a few ulp of the [0, 1] pixels per step
        # (a parted path is at least one step, 1e-2, away); 10 steps
        difference = np.abs(images[True] - images[False]).reshape(len(index), -1).max(1)
        same_path = difference <= 4 * 11 * np.finfo(np.float32).eps
        decided = _decided(np.asarray(plain_fn(images[False])), labels)
        np.testing.assert_array_equal(broken[True][same_path & decided], broken[False][same_path & decided],
                                      err_msg=name)
        # a path parts only where the first CE gradient is round-off
        assert not np.any(~same_path & ~parted_allowed[index]), (name, index[~same_path], difference[~same_path])
        parted[name] = index[~same_path].tolist()
    for jit in (False, True):  # the worst case is every attack's verdicts
        assert reports[jit]["worst_case_accuracy"] == (worst[jit] & clean_correct[jit]).mean()
    assert reports[False]["clean_accuracy"] > reports[False]["worst_case_accuracy"]  # the attacks do something
    print({name: (reports[False]["attacks"][name]["robust_accuracy"], reports[True]["attacks"][name]["robust_accuracy"])
           for name in names}, reports[False]["clean_accuracy"], "parted paths:", parted)


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
