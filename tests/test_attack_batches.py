"""Every attack on batches of 1, 2 and 7 examples, eager and compiled (fixed shapes and a None batch dimension).

The evaluation runner compiles each attack once with `tf.function(reduce_retracing=True)` and calls it on the
examples still robust, so the last batch of a cascade can hold a single example. A `tf.while_loop` whose loop
variables start with a static batch of 1 used to get a None batch after one iteration (broadcasting a
[None, 1, 1, 1] mask against [1, H, W, C] has an unknown batch) and APGD / APGD-T / C&W raised
`ValueError: ... enters the loop with shape (1, 8, 8, 1), but has shape (None, 8, 8, 1) after one iteration`.

Each attack must return images inside its eps-ball (minimum-norm attacks: report the norm they reached) and
[0, 1], and an example's result must not depend on the batch it is in: running it alone, in a pair or in the
batch of seven gives the same image.
"""

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_dense_network
from tfadv import attacks
from tfadv.attacks import rng
from tfadv.attacks.cw import carlini_wagner_l2
from tfadv.attacks.deepfool import deepfool
from tfadv.attacks.fab import fab_targeted
from tfadv.attacks.square import square

EPS = {"linf": 0.125, "l2": 1.0}


@pytest.fixture(scope="module")
def model(digits):
    """A small MLP trained for a few epochs on digits (so that the attacks have real work to do)."""
    net = small_dense_network(digits, seed=1)
    x, y = digits.test[0][:7], digits.test[1][:7].astype(np.int32)
    return (lambda images: net(images, training=False)), x, y


def _attacks(fn):
    """name -> (norm, radius or None for a minimum-norm attack, run(x, y, keys) -> (x_adv, norms or None))."""
    linf, l2 = EPS["linf"], EPS["l2"]
    return {
        "fgsm": ("linf", linf, lambda x, y, k: (attacks.fgsm(fn, x, y, eps=linf), None)),
        "pgd": ("linf", linf, lambda x, y, k: (attacks.pgd(fn, x, y, eps=linf, step_size=0.05, steps=4, keys=k),
                                               None)),
        "pgd_l2_restarts": ("l2", l2, lambda x, y, k: (attacks.pgd(fn, x, y, eps=l2, norm="l2", step_size=0.3,
                                                                   steps=3, restarts=2, keys=k), None)),
        "apgd_ce": ("linf", linf, lambda x, y, k: (attacks.apgd(fn, x, y, eps=linf, norm="linf", loss="ce", steps=6,
                                                                restarts=1, keys=k), None)),
        "apgd_dlr_l2_restarts": ("l2", l2, lambda x, y, k: (attacks.apgd(fn, x, y, eps=l2, norm="l2", loss="dlr",
                                                                         steps=6, restarts=2, keys=k), None)),
        "apgd_t": ("linf", linf, lambda x, y, k: (attacks.apgd_targeted(fn, x, y, eps=linf, norm="linf", steps=5,
                                                                        num_targets=3, restarts=1, keys=k), None)),
        "square": ("linf", linf, lambda x, y, k: (square(fn, x, y, eps=linf, queries=12, keys=k), None)),
        "square_l2": ("l2", l2, lambda x, y, k: (square(fn, x, y, eps=l2, norm="l2", queries=12, keys=k), None)),
        "fab_t": ("linf", None, lambda x, y, k: fab_targeted(fn, x, y, steps=8, num_targets=2, restarts=2, eps=linf,
                                                            keys=k)),
        "fab_t_l2": ("l2", None, lambda x, y, k: fab_targeted(fn, x, y, norm="l2", steps=8, num_targets=2, keys=k)),
        "cwl2": ("l2", None, lambda x, y, k: tuple(carlini_wagner_l2(fn, x, y, steps=10, binary_search_steps=2)[:2])),
        "deepfool": ("l2", None, lambda x, y, k: deepfool(fn, x, y, norm="l2", max_iterations=5)),
        "deepfool_linf": ("linf", None, lambda x, y, k: deepfool(fn, x, y, norm="linf", max_iterations=5)),
    }


NAMES = ["fgsm", "pgd", "pgd_l2_restarts", "apgd_ce", "apgd_dlr_l2_restarts", "apgd_t", "square", "square_l2",
         "fab_t", "fab_t_l2", "cwl2", "deepfool", "deepfool_linf"]
SIGNATURE = [tf.TensorSpec([None, 8, 8, 1], tf.float32), tf.TensorSpec([None], tf.int32),
             tf.TensorSpec([None], tf.int64)]


def _size(delta, norm):
    flat = delta.reshape(len(delta), -1)
    return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


def _check(name, norm, radius, x, x_adv, norms):
    x_adv = np.asarray(x_adv)
    assert x_adv.shape == x.shape, name
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, name
    size = _size(x_adv - x, norm)
    if radius is not None:
        assert np.all(size <= radius + 1e-5), (name, size)
    else:  # a minimum-norm attack reports the distance of the point it returns (or +inf / 0 and x)
        norms = np.asarray(norms)
        finite = np.isfinite(norms)
        np.testing.assert_allclose(size[finite], norms[finite], rtol=1e-4, atol=1e-5, err_msg=name)
        assert np.all(size[~finite] == 0.0), name


@pytest.mark.parametrize("name", NAMES)
def test_batches_of_one_two_and_seven_agree_eager_and_compiled(model, name):
    fn, x, y = model
    norm, radius, run = _attacks(fn)[name]
    keys = rng.example_keys(tf.range(7, dtype=tf.int64), seed=3)

    def call(mode, rows):
        images, labels, k = tf.constant(x[rows]), tf.constant(y[rows]), tf.gather(keys, rows)
        return runners[mode](images, labels, k)

    runners = {
        "eager": run,
        # one compiled function retraced for each fixed batch shape (1, 2, 7)
        "fixed": tf.function(run),
        # one compiled function for any batch size, as the runner's reduce_retracing ends up with
        "none": tf.function(run, input_signature=SIGNATURE),
    }
    whole = {}
    for mode in runners:
        out, norms = call(mode, np.arange(7))
        _check(f"{name}/{mode}/7", norm, radius, x, out, norms)
        whole[mode] = np.asarray(out)
    # the three ways of running give the same images (up to float rounding of fused compiled kernels)
    np.testing.assert_allclose(whole["fixed"], whole["eager"], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(whole["none"], whole["eager"], atol=1e-5, err_msg=name)
    for rows in ([4], [2, 5]):
        rows = np.asarray(rows)
        for mode in runners if len(rows) == 1 else ("fixed", "none"):  # eager is slow: one single example
            out, norms = call(mode, rows)
            _check(f"{name}/{mode}/{len(rows)}", norm, radius, x[rows], out, norms)
            # per-example results: the same image whether run alone, in a pair or in the batch of seven
            np.testing.assert_allclose(np.asarray(out), whole[mode][rows], atol=1e-5,
                                       err_msg=f"{name}/{mode}/{rows}")


def test_the_runner_on_batches_of_one(model, digits):
    """The evaluation runner compiles each attack once (reduce_retracing) and feeds it batches of the examples
    still robust; when a cascade leaves a single example, the first trace has a static batch of one (APGD-T
    crashed there). batch_size=1 gives the same per-example results as one batch of 8."""
    batch_size = 1
    from tfadv import evaluation

    fn, _, _ = model
    x, y = digits.test[0][:60], digits.test[1][:60].astype(np.int32)
    correct = np.flatnonzero(np.argmax(fn(x), -1) == y)[:8]
    assert len(correct) == 8
    x, y = x[correct], y[correct]
    names = ("fgsm", "pgd5", "apgd_ce5", "apgd_t5", "square30", "fab_t5", "deepfool5_l2", "cwl2_5_b2")
    eps = {"linf": 0.125, "l2": 1.0}
    specs = [evaluation.parse_attack(name, eps) for name in names]
    reports = [evaluation.evaluate(fn, x, y, specs, batch_size=size) for size in (8, batch_size)]
    for name in names:
        assert reports[1]["attacks"][name]["attacked"] == 8
        assert reports[1]["attacks"][name]["robust_accuracy"] == reports[0]["attacks"][name]["robust_accuracy"], name
    np.testing.assert_array_equal(reports[1]["per_example_robust"], reports[0]["per_example_robust"])
