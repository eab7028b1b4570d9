"""The parts the attacks are composed of (`tfadv.attacks.parts`, `losses.margin`): each does what it says, and
every built-in attack and TRADES' KL ascent runs the shared parts (counted by wrapping them), so that a copy of
one of them inside an attack fails here."""

import ast
import functools
import os
import pkgutil

import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT
from tfadv import attacks, evaluation, training
from tfadv.attacks import losses, parts, rng
from tfadv.evaluation import families, specs

EPS = {"linf": 0.125, "l2": 1.0, "l1": 4.0}


def _images(count=6, seed=0):
    # pixels at and near the box's faces, so that clipping to [0, 1] has work to do
    values = np.random.default_rng(seed).uniform(-0.3, 1.3, size=(count, 8, 8, 1))
    return tf.constant(np.clip(values, 0.0, 1.0), tf.float32)


def _keys(positions, seed=0):
    return rng.example_keys(tf.constant(positions, tf.int64), seed, 17)


def _norms(delta, norm):
    flat = delta.numpy().reshape(delta.shape[0], -1).astype(np.float64)
    return {"linf": np.abs(flat).max(1), "l2": np.linalg.norm(flat, axis=1), "l1": np.abs(flat).sum(1)}[norm]


# -- the random start --------------------------------------------------------------------------------------------

START_CASES = [("ball", "linf"), ("ball", "l2"), ("ball", "l1"), ("sphere", "linf"), ("sphere", "l2"),
               ("normal", "linf")]


@pytest.mark.parametrize("kind,norm", START_CASES)
def test_the_random_start_lies_in_the_ball_and_clips_into_the_box(kind, norm):
    x = _images(8)
    radius = 0.001 if kind == "normal" else EPS[norm]
    delta = parts.random_start(x, radius, norm, keys=_keys(range(8)), kind=kind)
    sizes = _norms(delta, norm)
    if kind == "ball":
        assert sizes.max() <= radius * (1 + 1e-5)
        assert sizes.mean() > 0.5 * radius  # spread through the ball, not collapsed at its centre
    elif kind == "sphere":
        np.testing.assert_allclose(sizes, radius, rtol=1e-5)  # on the sphere
    else:
        assert 0.5 * radius < delta.numpy().std() < 1.5 * radius  # radius * N(0, 1)
    inside = x + attacks.clip_to_box(x, delta)
    assert inside.numpy().min() >= 0.0 and inside.numpy().max() <= 1.0
    if kind != "normal":
        assert _norms(inside - x, norm).max() <= sizes.max() * (1 + 1e-6) + 1e-7  # clipping only shrinks it


@pytest.mark.parametrize("kind,norm", START_CASES)
def test_the_same_key_draws_the_same_start_and_another_key_another(kind, norm):
    x = _images(4)
    draw = functools.partial(parts.random_start, x, 0.5, norm, kind=kind)
    first = draw(keys=_keys(range(4))).numpy()
    np.testing.assert_array_equal(draw(keys=_keys(range(4))).numpy(), first)
    other = draw(keys=_keys(range(4), seed=1)).numpy()
    assert all(not np.allclose(a, b) for a, b in zip(first, other))
    # an example's start is its own: the same wherever it sits in the batch
    np.testing.assert_array_equal(draw(keys=_keys([2, 0, 3, 1])).numpy(), first[[2, 0, 3, 1]])
    # another stream shifts every draw (FAB's restarts use stream 1)
    assert not np.allclose(draw(keys=_keys(range(4)), stream=1).numpy(), first)


@pytest.mark.parametrize("kind,norm", START_CASES[:5])
def test_a_stateless_seed_draws_a_reproducible_start(kind, norm):
    x = _images(3)
    draw = functools.partial(parts.random_start, x, 0.3, norm, kind=kind)
    first = draw(tf.constant([4, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(draw(tf.constant([4, 2], tf.int64)).numpy(), first)
    assert not np.allclose(draw(tf.constant([4, 3], tf.int64)).numpy(), first)
    if kind == "ball":
        assert _norms(tf.constant(first), norm).max() <= 0.3 * (1 + 1e-5)


def test_the_random_start_refuses_what_it_does_not_draw():
    x = _images(2)
    with pytest.raises(ValueError, match="unknown random start"):
        parts.random_start(x, 0.1, "linf", kind="cube")
    with pytest.raises(ValueError, match="l-inf and l2"):
        parts.random_start(x, 0.1, "l1", kind="sphere")


# -- keeping the best --------------------------------------------------------------------------------------------

def test_keep_best_keeps_each_examples_best_over_restarts():
    # three examples, three restarts of scripted (point, value, success): example 0 succeeds at restart 1 and keeps
    # that point although restart 2 scores higher without succeeding; example 1 never succeeds and keeps its
    # highest value (restart 2); example 2 succeeds at restarts 0 and 1 and keeps the higher-scoring success (1)
    restarts = [
        (tf.constant([0.0, 10.0, 20.0]), tf.constant([1.0, 5.0, 0.5]), tf.constant([False, False, True])),
        (tf.constant([1.0, 11.0, 21.0]), tf.constant([2.0, 3.0, 9.0]), tf.constant([True, False, True])),
        (tf.constant([2.0, 12.0, 22.0]), tf.constant([7.0, 6.0, 9.5]), tf.constant([False, False, False])),
    ]
    best = restarts[0]
    for candidate in restarts[1:]:
        best = parts.keep_best(best, candidate, parts.succeeds_or_scores_higher(best, candidate))
    points, values, won = (part.numpy() for part in best)
    np.testing.assert_array_equal(points, [1.0, 12.0, 21.0])
    np.testing.assert_array_equal(values, [2.0, 6.0, 9.0])
    np.testing.assert_array_equal(won, [True, False, True])


def test_keep_best_broadcasts_the_choice_over_each_examples_image():
    best = (tf.zeros([3, 2, 2, 1]), tf.fill([3], np.inf))
    candidate = (tf.ones([3, 2, 2, 1]), tf.constant([1.0, 5.0, 0.5]))
    kept, norms = parts.keep_best(best, candidate, candidate[1] < tf.constant([2.0, 2.0, 2.0]))
    np.testing.assert_array_equal(kept.numpy().reshape(3, -1).mean(1), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(norms.numpy(), [1.0, np.inf, 0.5])


# -- the margin --------------------------------------------------------------------------------------------------

def test_the_margin_is_the_true_logit_minus_the_highest_other():
    logits = np.array([[4.0, 1.0, 3.0, 0.0], [0.5, 2.0, 2.0, -1.0], [-3.0, -2.0, -7.0, -2.5]], np.float32)
    labels = np.array([0, 1, 2])
    hand = [logits[i, y] - max(v for j, v in enumerate(logits[i]) if j != y) for i, y in enumerate(labels)]
    assert hand == [1.0, 0.0, -5.0]
    np.testing.assert_array_equal(losses.margin(tf.constant(logits), tf.constant(labels)).numpy(), hand)
    np.testing.assert_array_equal(attacks.cw_margin(tf.constant(logits), tf.constant(labels)).numpy(),
                                  [-1.0, 0.0, 5.0])
    # float32 whatever the logits' dtype
    assert losses.margin(tf.constant(logits, tf.float16), tf.constant(labels)).dtype == tf.float32


# -- the projected-step loop -------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_the_projected_step_loop_never_leaves_the_ball_or_the_box(norm):
    x = _images(6)
    eps = EPS[norm]
    noise = np.random.default_rng(1)

    def gradient(x_adv):  # large gradients in random directions, pushing out of the ball and the box
        return tf.constant(noise.normal(scale=50.0, size=x_adv.shape), tf.float32)

    delta = attacks.clip_to_box(x, parts.random_start(x, eps, norm, keys=_keys(range(6))))
    for _ in range(6):
        delta = parts.projected_step(x, delta, gradient(x + delta), eps=eps, step_size=eps, norm=norm)
        assert _norms(delta, norm).max() <= eps * (1 + 1e-5) + 1e-6
        assert (x + delta).numpy().min() >= 0.0 and (x + delta).numpy().max() <= 1.0
    x_adv = parts.projected_ascent(x, tf.zeros_like(x), gradient, eps=eps, step_size=eps / 2, steps=5, norm=norm)
    assert _norms(x_adv - x, norm).max() <= eps * (1 + 1e-5) + 1e-6
    assert x_adv.numpy().min() >= 0.0 and x_adv.numpy().max() <= 1.0


def test_the_loop_ascends_a_linear_objective_to_the_corner_of_the_ball():
    # objective w . x: the l-inf loop from 0 with steps eps/2 reaches x + eps sign(w), clipped to the box
    x = tf.fill([2, 2, 2, 1], 0.5)
    w = tf.constant(np.array([1.0, -1.0, 2.0, -0.5] * 2).reshape(2, 2, 2, 1), tf.float32)
    x_adv = parts.projected_ascent(x, tf.zeros_like(x), lambda _: w, eps=0.2, step_size=0.1, steps=3, norm="linf")
    np.testing.assert_allclose(x_adv.numpy(), 0.5 + 0.2 * np.sign(w.numpy()), atol=1e-6)


# -- every attack runs the shared parts --------------------------------------------------------------------------

SHARED = ("random_start", "projected_ascent", "constrain", "keep_best")

# the built-in attack families (registered by the built-in modules of tfadv.evaluation.families) -> (a small name
# of the family, the shared parts it runs). DeepFool (a linearisation stepping to the nearest boundary, no restarts,
# no random start, no loss to keep the best of) uses none of them.
BUILT_IN = {
    "fgsm": ("fgsm", {"projected_ascent", "constrain"}),
    "pgd": ("pgd2_r2", {"random_start", "projected_ascent", "constrain", "keep_best"}),
    "cw": ("cw2_l2_r2", {"random_start", "projected_ascent", "constrain", "keep_best", "margin"}),
    "dlr": ("dlr2_l1", {"random_start", "projected_ascent", "constrain", "margin"}),
    "apgd_ce": ("apgd_ce2_r2", {"random_start", "constrain", "keep_best"}),
    "apgd_dlr": ("apgd_dlr2_l2", {"random_start", "constrain", "keep_best", "margin"}),
    "apgd_t": ("apgd_t2", {"random_start", "constrain", "keep_best", "margin"}),
    "deepfool": ("deepfool2", set()),
    "square": ("square5", {"keep_best", "margin"}),
    "fab_t": ("fab_t2_r2", {"random_start", "keep_best"}),
    "cwl2": ("cwl2_2_b1", {"keep_best", "margin"}),
}


@pytest.fixture
def counted(monkeypatch):
    """{part: calls} of the shared parts (and `losses.margin`) while the fixture is active."""
    calls = {name: 0 for name in SHARED + ("margin",)}

    def counting(module, name):
        original = getattr(module, name)

        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in SHARED:
        counting(parts, name)
    counting(losses, "margin")
    return calls


@pytest.fixture(scope="module")
def model():
    weights = tf.constant(np.random.default_rng(0).normal(size=(64, 10)), tf.float32)
    return lambda images: tf.reshape(images, [-1, 64]) @ weights


def test_the_table_names_every_built_in_family():
    modules = {f"{families.__name__}.{name}" for name in families.BUILT_IN_MODULES}
    built_in = {family for family, entry in specs.registered_attacks().items() if entry.run.__module__ in modules}
    assert built_in == set(BUILT_IN)


@pytest.mark.parametrize("family", sorted(family for family, (_, used) in BUILT_IN.items() if used))
def test_every_built_in_attack_runs_the_shared_parts(family, counted, model):
    name, used = BUILT_IN[family]
    spec = evaluation.parse_attack(name, EPS)
    assert spec.family == family
    x = _images(4)
    y = tf.argmax(model(x), -1, output_type=tf.int32)  # every example classified correctly: each has work to do
    spec.run(model, x, y, _keys(range(4)))
    assert {part for part, count in counted.items() if count} >= used, counted


def test_deepfool_runs_none_of_the_parts(counted, model):
    # what the table says of it, checked: if DeepFool grows a random start or restarts, they are to be the shared
    # ones (and the table updated)
    x = _images(4)
    evaluation.parse_attack("deepfool2", EPS).run(model, x, tf.argmax(model(x), -1, output_type=tf.int32))
    assert not any(counted.values()), counted


@pytest.mark.parametrize("method", ["trades", "pgd", "bat", "fgsm_rs"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_training_attacks_run_the_shared_loop_from_the_keyed_start(method, norm, counted):
    import keras

    network = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    config = training.AttackConfig(EPS[norm], EPS[norm] / 4, 3, norm=norm)
    trainer = training.TRAINERS[method](network, config)
    x, y = _images(4), tf.constant([0, 1, 2, 3])
    if method == "trades":
        x_adv = trainer.adversarial_examples(x)
    elif method == "bat":
        x_adv = trainer.adversarial_examples(x, y, network(x))
    else:
        x_adv = trainer.adversarial_examples(x, y)
    assert counted["projected_ascent"] == 1 and counted["random_start"] == 1, counted
    assert _norms(x_adv - x, norm).max() <= EPS[norm] * (1 + 1e-5) + 1e-6


def _called_names(path):
    """The names of the functions a module calls (`f(...)` and `module.f(...)`)."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Call):
            function = node.func
            names.add(function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", ""))
    return names


def family_module_files():
    """The files of the attack family modules on tfadv.evaluation.families' path (a family added as one module,
    its algorithm included, is one of them)."""
    return [os.path.join(module.module_finder.path, module.name + ".py")
            for module in pkgutil.iter_modules(families.__path__)]


def test_no_attack_composes_its_own_step_projection_or_loop():
    """The shared parts are the only place where a step is projected (`project`, `steepest_step` with a
    projection, the step loop `repeat`) or a ball start is drawn from `rng` in tfadv/attacks, the attack family
    modules and TRADES: an attack that builds its own copy of the loop or of the start fails here."""
    files = [os.path.join(ROOT, "tfadv", "attacks", name) for name in os.listdir(os.path.join(ROOT, "tfadv", "attacks"))
             if name.endswith(".py") and name not in ("parts.py", "ops.py", "rng.py", "__init__.py")]
    files += family_module_files()
    assert os.path.join(ROOT, "tfadv", "evaluation", "families", "fab.py") in files
    files.append(os.path.join(ROOT, "tfadv", "training", "trades.py"))
    offenders = []
    for path in files:
        names = _called_names(path)
        if names & {"project", "repeat"}:
            offenders.append((os.path.basename(path), sorted(names & {"project", "repeat"})))
        draws = names & {"uniform", "normal", "stateless_uniform", "stateless_normal"}
        if draws and os.path.basename(path) != "square.py":  # Square's windows and signs are its own search
            offenders.append((os.path.basename(path), sorted(draws)))
    assert not offenders, offenders
