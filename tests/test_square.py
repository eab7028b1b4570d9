"""Square Attack: score-based (no gradient), inside the ball and the box, per-example randomness."""

import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks
from tfadv.attacks import rng
from tfadv.attacks.square import p_selection, square, square_run


@pytest.fixture(scope="module")
def setup(natural_mlp, digits):
    # no gradient can flow: the input goes through stop_gradient (Square must not need one)
    fn = lambda images: natural_mlp(tf.stop_gradient(images), training=False)  # noqa: E731
    x, y = digits.test[0][:200], digits.test[1][:200].astype(np.int32)
    return fn, x, y, rng.example_keys(tf.range(200))


def _accuracy(fn, x, y):
    return float(np.mean(np.argmax(fn(x), -1) == y))


@pytest.mark.parametrize("norm,eps", [("linf", 0.125), ("l2", 1.0)])
def test_stays_in_the_ball_and_the_box_and_lowers_accuracy_without_gradients(setup, natural_mlp, norm, eps):
    fn, x, y, keys = setup
    run = tf.function(lambda a, b, k: square_run(fn, a, b, eps=eps, norm=norm, queries=1000, keys=k))(x, y, keys)
    x_adv = run.x_adv.numpy()
    delta = (x_adv - x).reshape(len(y), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    clean, attacked = _accuracy(fn, x, y), _accuracy(fn, x_adv, y)
    # measured (200 images, 1000 queries): l-inf 95.0 -> 50.0 (PGD-20 with gradients: 48.0); l2 95.0 -> 26.5
    assert attacked <= clean - (0.35 if norm == "linf" else 0.5)
    # reported margins are the model's margins at the returned points, and queries stay in budget
    logits = fn(x_adv).numpy()
    own = logits[np.arange(len(y)), y]
    others = np.where(np.eye(10, dtype=bool)[y], -np.inf, logits).max(1)
    np.testing.assert_allclose(run.margin.numpy(), own - others, rtol=1e-5, atol=1e-5)
    assert run.queries.numpy().max() <= 1000


def test_as_strong_as_pgd20_on_an_undefended_model(setup, natural_mlp):
    fn, x, y, keys = setup
    x_adv = tf.function(lambda a, b, k: square(fn, a, b, eps=0.125, queries=5000, keys=k))(x, y, keys)
    pgd = attacks.pgd(lambda a: natural_mlp(a, training=False), x, y, eps=0.125, step_size=0.03, steps=20)
    assert _accuracy(fn, x_adv, y) <= _accuracy(fn, pgd, y) + 0.03


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_example_gets_the_same_result_in_any_batch(setup, norm):
    fn, x, y, keys = setup
    run = tf.function(lambda a, b, k: square(fn, a, b, eps=0.125 if norm == "linf" else 1.0, norm=norm,
                                             queries=300, keys=k))
    whole = run(x, y, keys).numpy()
    part = run(x[37:90], y[37:90], tf.gather(keys, tf.range(37, 90))).numpy()
    np.testing.assert_array_equal(part, whole[37:90])


def test_schedule_halves_p_at_the_published_iterations():
    expected = {0: 0.8, 10: 0.8, 11: 0.4, 50: 0.4, 51: 0.2, 201: 0.1, 501: 0.05, 1001: 0.025, 2001: 0.0125,
                4001: 0.00625, 6001: 0.003125, 8001: 0.0015625, 9999: 0.0015625}
    for iteration, p in expected.items():
        assert float(p_selection(0.8, iteration, 10000)) == pytest.approx(p)
    # rescaled to 10000 queries: with 1000 queries, iteration 2 is 20 -> p halved once
    assert float(p_selection(0.8, 2, 1000)) == pytest.approx(0.4)


def test_bad_arguments_are_refused(setup):
    fn, x, y, _ = setup
    with pytest.raises(ValueError, match="norm"):
        square(fn, x, y, eps=0.1, norm="l1")
    with pytest.raises(ValueError, match="queries"):
        square(fn, x, y, eps=0.1, queries=0)
    with pytest.raises(ValueError, match="images"):
        square(fn, x.reshape(len(y), -1), y, eps=0.1)
