"""No dead work inside the attacks (issue 24): a point an attack has broken is not attacked again, and the
result is the one without compaction.

Per attack, on a small digits model, in a graph with an unknown batch dimension (as the evaluation runner
compiles it): the per-example set of broken points with compaction (`compact=True`, opt-in) equals the one with
`compact=False` (which attacks every point to the end), every output is valid (inside the eps-ball and [0, 1]),
and the model is called on fewer examples (counted by a wrapper around `logits_fn`), so these tests fail if the
compaction is removed. Compaction follows the reference code (auto-attack `autopgd_base.py` and `fab_base.py`
`perturb`: each target / restart only on the points still robust; `square.py`: only `idx_to_fool` queried).
"""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import small_dense_network
from tfadv.attacks import rng
from tfadv.attacks.fab import fab_targeted
from tfadv.attacks.square import square_run

apgd_module = importlib.import_module("tfadv.attacks.apgd")  # `tfadv.attacks.apgd` is also the function

EPS = {"linf": 0.125, "l2": 1.0}
COUNT = 60


@pytest.fixture(scope="module")
def setting(digits):
    net = small_dense_network(digits, seed=3)
    x, y = digits.test[0][:COUNT], digits.test[1][:COUNT].astype(np.int32)
    return net, x, y, rng.example_keys(tf.range(COUNT, dtype=tf.int64), 2, 24)


def _counting(net):
    """(logits_fn, counter): logits_fn adds the number of examples it is called on to counter, also in a graph."""
    seen = tf.Variable(0, dtype=tf.int64, trainable=False)

    def logits_fn(images):
        with tf.control_dependencies([seen.assign_add(tf.cast(tf.shape(images)[0], tf.int64))]):
            return tf.identity(net(images, training=False))

    return logits_fn, seen


ATTACKS = {  # name -> (norm, run(logits_fn, x, y, keys, compact) -> (x_adv, norms or None))
    "apgd_ce_r3": ("linf", lambda fn, x, y, k, c: (apgd_module.apgd(
        fn, x, y, eps=EPS["linf"], steps=8, restarts=3, keys=k, compact=c), None)),
    "apgd_t": ("linf", lambda fn, x, y, k, c: (apgd_module.apgd_targeted(
        fn, x, y, eps=EPS["linf"], steps=8, keys=k, compact=c), None)),
    "apgd_t_l2_r2": ("l2", lambda fn, x, y, k, c: (apgd_module.apgd_targeted(
        fn, x, y, eps=EPS["l2"], norm="l2", steps=6, num_targets=4, restarts=2, keys=k, compact=c), None)),
    # FAB-T scored at eps, as the evaluation does (specs.at_budget): compaction stops a point within eps
    "fab_t": ("linf", lambda fn, x, y, k, c: fab_targeted(fn, x, y, steps=8, keys=k, stop_within=EPS["linf"],
                                                          compact=c)),
    "fab_t_r2": ("linf", lambda fn, x, y, k, c: fab_targeted(fn, x, y, steps=8, num_targets=3, restarts=2,
                                                             eps=EPS["linf"], keys=k, stop_within=EPS["linf"],
                                                             compact=c)),
    "square": ("linf", lambda fn, x, y, k, c: (square_run(fn, x, y, eps=EPS["linf"], queries=150, keys=k,
                                                          compact=c, compact_every=20).x_adv, None)),
    "square_l2": ("l2", lambda fn, x, y, k, c: (square_run(fn, x, y, eps=EPS["l2"], norm="l2", queries=100, keys=k,
                                                           compact=c, compact_every=20).x_adv, None)),
}


def _run(net, name, x, y, keys, compact):
    """(x_adv, norms or None, examples the model was called on) of one attack compiled with an unknown batch."""
    fn, seen = _counting(net)
    run = ATTACKS[name][1]
    compiled = tf.function(lambda a, b, k: run(fn, a, b, k, compact), input_signature=[
        tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int64)])
    x_adv, norms = compiled(tf.constant(x), tf.constant(y), keys)
    return x_adv.numpy(), None if norms is None else norms.numpy(), int(seen.numpy())


def _broken(net, x, y, x_adv, norms, norm):
    """Misclassified and within eps; a minimum-norm attack's point counts when its own norm is within eps."""
    wrong = np.argmax(net(x_adv, training=False).numpy(), -1) != y
    if norms is None:
        return wrong
    return wrong & (norms <= EPS[norm] * (1 + 1e-6))


@pytest.mark.parametrize("name", list(ATTACKS))
def test_compaction_breaks_the_same_points_with_fewer_model_calls(setting, name):
    net, x, y, keys = setting
    norm = ATTACKS[name][0]
    results = {compact: _run(net, name, x, y, keys, compact) for compact in (False, True)}
    broken = {compact: _broken(net, x, y, x_adv, norms, norm) for compact, (x_adv, norms, _) in results.items()}
    np.testing.assert_array_equal(broken[True], broken[False], err_msg=name)
    assert 0 < broken[True].sum() < COUNT, (name, broken[True].sum())  # the attack broke some points, not all
    for compact, (x_adv, norms, _) in results.items():
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        delta = (x_adv - x).reshape(COUNT, -1)
        size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
        if norms is None:
            assert size.max() <= EPS[norm] * (1 + 1e-5) + 1e-6, (name, compact)
        else:  # a minimum-norm attack: its reported norm is the distance of its point
            found = np.isfinite(norms)
            np.testing.assert_allclose(size[found], norms[found], atol=1e-5)
    calls = {compact: seen for compact, (_, _, seen) in results.items()}
    print(f"{name}: {broken[True].sum()} of {COUNT} broken; model called on {calls[False]} -> {calls[True]} examples")
    assert calls[True] < calls[False], (name, calls)


U = 2.0 ** -24  # float32 unit round-off


def _gamma(n):
    """Higham's gamma_n = n u / (1 - n u): a float32 sum of n products, in any order (FMA or not), is within
    gamma_n * sum |products| of the exact sum."""
    return n * U / (1.0 - n * U)


def _margins_and_roundoff(net, x, y):
    """(margin, bound) [B] in float64 for the Flatten-Dense(relu)-Dense network of `small_dense_network`: the
    exact margin z_y - max_{j != y} z_j at x, and a bound on how far any float32 evaluation of it may be from it
    whatever the summation order (which the matmul kernel, its blocking and so the batch's size pick). Forward
    error analysis: a Dense output of n inputs plus its bias is off by at most gamma_{n+1} (|W|^T |h| + |b|)
    plus |W|^T |error of h| (ReLU is 1-Lipschitz), and the margin adds the error of z_y, the largest error of
    the others (a max moves by at most that) and one rounding of the subtraction."""
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Flatten", "Dense", "Dense"], kinds
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    error = np.zeros_like(h)
    for layer in net.layers[1:]:
        w, b = (np.asarray(v, np.float64) for v in (layer.kernel.numpy(), layer.bias.numpy()))
        z = h @ w + b
        error = np.abs(error) @ np.abs(w) + _gamma(w.shape[0] + 1) * ((np.abs(h) + error) @ np.abs(w) + np.abs(b))
        if layer.activation is keras.activations.relu:
            z = np.maximum(z, 0.0)
        else:
            assert layer.activation is keras.activations.linear
        h = z
    rows = np.arange(len(y))
    others = np.where(np.eye(h.shape[1], dtype=bool)[y], -np.inf, h)
    margin = h[rows, y] - others.max(1)
    bound = error[rows, y] + error.max(1)
    return margin, bound + U * (np.abs(margin) + bound)


def test_square_compaction_returns_the_same_points_margins_and_query_counts(setting):
    """Square's compaction only stops proposing for misclassified points, whose results were frozen anyway: the
    same points and query counts, exactly. The margins are the model's at those points, but each is computed in
    the batch it was last queried in (the whole batch, or the still-robust points gathered), and a batch of
    another size may run the matmul on other kernels or blocking, so float32 sums in another order: on an
    AVX2-only AMD EPYC (TensorFlow without oneDNN) 2 of 60 margins differ by 2.4e-7 (relative 2.9e-6). So both
    runs' margins must be within the float32 round-off bound of the exact (float64) margin at the returned
    points, which bounds their difference; a margin of another point or another iteration is off by far more."""
    net, x, y, keys = setting
    fn = lambda images: net(images, training=False)  # noqa: E731
    for norm in ("linf", "l2"):
        runs = [tf.function(lambda a, b, k, c=compact: square_run(fn, a, b, eps=EPS[norm], norm=norm, queries=120,
                                                                  keys=k, compact=c, compact_every=7))(x, y, keys)
                for compact in (False, True)]
        for field in ("x_adv", "queries"):
            np.testing.assert_array_equal(getattr(runs[1], field).numpy(), getattr(runs[0], field).numpy(),
                                          err_msg=f"{norm} {field}")
        exact, bound = _margins_and_roundoff(net, runs[0].x_adv.numpy(), y)
        assert bound.max() < 0.01 * np.median(np.abs(exact)), bound.max()  # far below the margins' own scale
        for compact, run in zip((False, True), runs):
            found = run.margin.numpy().astype(np.float64)
            excess = np.abs(found - exact) - bound
            assert excess.max() <= 0.0, (norm, compact, np.flatnonzero(excess > 0), excess.max())
        difference = np.abs(runs[1].margin.numpy().astype(np.float64) - runs[0].margin.numpy())
        assert (difference <= 2 * bound).all(), (norm, difference.max())
        assert 0 < np.sum(runs[1].margin.numpy() <= 0) < COUNT


def test_fab_t_without_a_radius_skips_only_the_clean_misclassified_points(setting):
    """Without `stop_within` FAB-T is a minimum-norm attack: only points misclassified clean (norm 0, which no
    run can beat) are skipped, and the points and norms are those without compaction."""
    net, x, y, keys = setting
    fn = lambda images: net(images, training=False)  # noqa: E731
    x = np.concatenate([x[:20], np.full_like(x[:3], 0.5)])  # grey images: some are misclassified clean
    y = np.concatenate([y[:20], [0, 1, 2]]).astype(np.int32)
    keys = keys[:23]
    assert np.any(np.argmax(fn(x).numpy(), -1) != y)
    runs = [tf.function(lambda a, b, c=compact: fab_targeted(fn, a, b, steps=6, num_targets=3, restarts=2, keys=keys,
                                                             compact=c))(x, y) for compact in (False, True)]
    np.testing.assert_array_equal(runs[1][0].numpy(), runs[0][0].numpy())
    np.testing.assert_array_equal(runs[1][1].numpy(), runs[0][1].numpy())


def test_the_evaluations_fab_t_stops_a_point_once_it_is_within_its_budget(setting, monkeypatch):
    """The evaluation's FAB-T (specs.build_spec("fab_t")) passed no stop_within, so it went on attacking points
    already within eps through every target: dead work, and a point other than the reference's. The same points
    break with and without it, the model sees fewer examples with it."""
    from tfadv.attacks import fab
    from tfadv.evaluation import specs

    net, x, y, keys = setting
    spec = specs.build_spec("fab_t", EPS, steps=8, norm="linf")
    results = {}
    for stops in (True, False):
        if not stops:
            original = fab.fab_targeted
            monkeypatch.setattr(fab, "fab_targeted", lambda *a, **k: original(*a, **{**k, "stop_within": None}))
        fn, seen = _counting(net)
        x_adv = tf.function(lambda a, b, k: spec.run(fn, a, b, k))(tf.constant(x), tf.constant(y), keys).numpy()
        results[stops] = (np.argmax(net(x_adv, training=False).numpy(), -1) != y, int(seen.numpy()))
    np.testing.assert_array_equal(results[True][0], results[False][0])
    assert 0 < results[True][0].sum() < COUNT
    assert results[True][1] < results[False][1], results
