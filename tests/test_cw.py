"""Carlini-Wagner L2: a minimum-norm attack that finds smaller l2 perturbations than l2 PGD needs."""

import numpy as np
import pytest
import tensorflow as tf

from tfadv import attacks, evaluation
from tfadv.attacks.cw import carlini_wagner_l2


@pytest.fixture(scope="module")
def setup(natural_mlp, digits):
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    x, y = digits.test[0][:100], digits.test[1][:100].astype(np.int32)
    result = tf.function(lambda a, b: carlini_wagner_l2(fn, a, b))(x, y)
    return fn, x, y, result


def _pgd_min_eps(fn, x, y, bisections=12, steps=50):
    """Per example, the smallest l2 radius (to 8 / 2^12) at which l2 PGD-50 misclassifies it, and the class its
    point fell in at that radius (-1 where it never did)."""
    lower, upper, reached = np.zeros(len(y)), np.full(len(y), 8.0), np.full(len(y), -1)
    run = tf.function(lambda a, b, e: attacks.pgd(fn, a, b, eps=e[:, None, None, None],
                                                  step_size=2.5 * e[:, None, None, None] / steps, steps=steps,
                                                  norm="l2"))
    for _ in range(bisections):
        middle = (lower + upper) / 2
        predicted = np.argmax(fn(run(x, y, tf.constant(middle, tf.float32))), -1)
        wrong = predicted != y
        upper, lower = np.where(wrong, middle, upper), np.where(wrong, lower, middle)
        reached = np.where(wrong, predicted, reached)
    return upper, reached


def test_returns_real_adversarials_in_the_box_with_consistent_norms(setup):
    fn, x, y, result = setup
    found = result.found.numpy()
    assert found.mean() >= 0.95
    x_adv = result.x_adv.numpy()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert np.all(np.argmax(fn(x_adv), -1)[found] != y[found])
    norms = np.linalg.norm((x_adv - x).reshape(len(y), -1), axis=1)
    np.testing.assert_allclose(norms[found], result.norms.numpy()[found], atol=1e-5)
    assert np.all(np.isinf(result.norms.numpy()[~found]))


def test_finds_smaller_perturbations_than_l2_pgd_needs_at_the_boundary(setup):
    """C&W-L2 against the radius l2 PGD-50 needs (bisected per example, to 8 / 2^12): both are upper bounds on
    the smallest misclassifying perturbation.

    Untargeted C&W descends toward the boundary of the wrong class whose logit leads, which need not be the
    nearest boundary. With the model an AVX2 machine trains (its float32 kernels give other weights than the
    AVX-512 machine's; bit-identical with oneDNN forced on or off), 24 of 100 examples end more than 10 %
    beyond the smallest norm a 5 x 500-step FAB-T / 5 x 200-step PGD search found, all in another class than
    that search's; 20 binary-search steps without early abort, 10 000 steps, or a looser tanh box (0.999,
    0.99) change none of them, while C&W targeted at the search's class reaches its norm (0.99-1.00x). That
    share is a property of the trained model, so the untargeted median compared with PGD's (0.53 vs 0.62
    measured on the AVX-512 model, 0.494 vs 0.4805 on the AVX2 one) is not a property of C&W. The untargeted
    share no larger than PGD's radius is kept (94 % and 86 % measured).

    What C&W does at a given boundary is compared at that boundary: targeted at the class PGD's point fell in
    at its radius (PGD exhibits a point of that class within the radius), C&W's minimum-norm search must not
    need more, up to the bisection's resolution, on nearly every example, nor at the median. Measured on the
    AVX2 model: 96 of 97 examples, median 0.484 vs 0.516 (the other one 4 % beyond).
    """
    fn, x, y, result = setup
    pgd_needs, pgd_class = _pgd_min_eps(fn, x, y)
    cw = result.norms.numpy()
    ok = result.found.numpy()
    assert np.mean(cw[ok] <= pgd_needs[ok]) >= 0.8
    same = ok & (cw > 0) & (pgd_class >= 0)  # attacked (not misclassified clean) and broken by PGD
    assert same.mean() >= 0.9
    targeted = tf.function(lambda a, b, t: carlini_wagner_l2(fn, a, b, targets=t))(
        x[same], y[same], pgd_class[same].astype(np.int32))
    assert targeted.found.numpy().all()
    norms, needs = targeted.norms.numpy(), pgd_needs[same]
    resolution = 8.0 / 2 ** 12
    assert np.mean(norms <= needs + resolution) >= 0.95, np.sort(norms / needs)[-5:]
    assert np.median(norms) < np.median(needs)


def test_at_a_budget_it_is_scored_like_any_attack(natural_mlp, digits):
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    x, y = digits.test[0][:60], digits.test[1][:60]
    tiny = evaluation.parse_attack("cwl2_100_b4", {"l2": 1e-4})
    assert tiny.kind == "cwl2" and tiny.steps == 100 and tiny.search_steps == 4
    report = evaluation.evaluate(fn, x, y, [tiny])
    assert report["attacks"]["cwl2_100_b4"]["robust_accuracy"] >= report["clean_accuracy"] - 0.02
    report = evaluation.evaluate(fn, x, y, [evaluation.parse_attack("cwl2", {"l2": 4.0})])
    assert report["attacks"]["cwl2"]["robust_accuracy"] <= 0.02


def test_targeted_mode_reaches_the_target(natural_mlp, digits):
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    x, y = digits.test[0][:20], digits.test[1][:20].astype(np.int32)
    targets = (y + 1) % 10
    run = tf.function(lambda a, b, t: carlini_wagner_l2(fn, a, b, targets=t, steps=300, binary_search_steps=5))
    result = run(x, y, targets)
    hit = result.found.numpy()
    assert hit.mean() >= 0.9
    assert np.all(np.argmax(fn(result.x_adv), -1)[hit] == targets[hit])


def test_bad_arguments_are_refused(natural_mlp, digits):
    fn = lambda images: natural_mlp(images, training=False)  # noqa: E731
    with pytest.raises(ValueError, match="steps"):
        carlini_wagner_l2(fn, digits.test[0][:2], digits.test[1][:2], steps=0)
    with pytest.raises(ValueError, match="positive"):
        carlini_wagner_l2(fn, digits.test[0][:2], digits.test[1][:2], learning_rate=0.0)
