"""Paper 003 §3.1, the fading-Gaussian example: Eq. 9 vs Monte Carlo, Lemma 1 (Eq. 10-11), ALS training."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import script_server
from tfadv import fading_gaussian, losses, targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def problem():
    return fading_gaussian.fading_gaussian(10)


@pytest.fixture(scope="module")
def test_samples(problem):
    return fading_gaussian.sample(problem, 200000, seed=1)


def test_data_model_follows_the_empirical_illustration(problem):
    np.testing.assert_allclose(problem.std, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    np.testing.assert_allclose(problem.mean, problem.std ** 2)
    inputs, labels = fading_gaussian.sample(problem, 100000, seed=3)
    assert inputs.dtype == np.float32 and set(np.unique(labels)) == {-1, 1}
    assert abs(np.mean(labels)) < 0.02
    signed = labels[:, None] * inputs  # y x ~ N(mu, diag(sigma^2)) for both labels
    np.testing.assert_allclose(signed.mean(axis=0), problem.mean, atol=0.01)
    np.testing.assert_allclose(signed.std(axis=0), problem.std, atol=0.01)
    again, _ = fading_gaussian.sample(problem, 100000, seed=3)
    np.testing.assert_array_equal(inputs, again)


def test_bayes_classifier_is_all_ones_and_breaks_even_at_the_expected_eps(problem):
    bayes = fading_gaussian.bayes_weights(problem)
    np.testing.assert_allclose(bayes, np.ones(10))
    # Eq. 9 with w = 1: the numerator sum(sigma^2) - eps d vanishes at eps = sum(sigma^2) / d = 0.385
    np.testing.assert_allclose(fading_gaussian.adversarial_accuracy(problem, bayes, 0.385), 0.5, atol=1e-12)
    np.testing.assert_allclose(fading_gaussian.adversarial_accuracy(problem, bayes, 0.0),
                               fading_gaussian.standard_normal_cdf(np.sqrt(3.85)), atol=1e-12)


@pytest.mark.parametrize("which", ["bayes", "lemma1", "random"])
def test_closed_form_agrees_with_monte_carlo(problem, test_samples, which):
    weights = {"bayes": fading_gaussian.bayes_weights(problem),
               "lemma1": fading_gaussian.robust_weights(problem, 0.2),
               "random": np.random.default_rng(5).standard_normal(10)}[which]
    eps = np.array([0.0, 0.1, 0.25, 0.4])
    closed = fading_gaussian.adversarial_accuracy(problem, weights, eps)
    estimate = fading_gaussian.monte_carlo_adversarial_accuracy(weights, eps, *test_samples)
    np.testing.assert_allclose(estimate, closed, atol=0.01)
    assert np.all(np.diff(closed) < 0)


def test_optimal_perturbation_is_the_worst_point_of_the_ball(problem):
    inputs, labels = fading_gaussian.sample(problem, 500, seed=2)
    weights = np.random.default_rng(0).standard_normal(10)
    eps = 0.3
    worst = fading_gaussian.optimal_perturbation(weights, labels, eps)
    assert np.allclose(np.abs(worst), eps)
    worst_margins = labels * ((inputs + worst) @ weights)
    np.testing.assert_allclose(worst_margins, labels * (inputs @ weights) - eps * np.sum(np.abs(weights)),
                               rtol=1e-5, atol=1e-5)
    generator = np.random.default_rng(1)
    for _ in range(20):
        vertex = eps * generator.choice([-1.0, 1.0], size=inputs.shape)
        inside = generator.uniform(-eps, eps, size=inputs.shape)
        for delta in (vertex, inside):
            assert np.all(labels * ((inputs + delta) @ weights) >= worst_margins - 1e-6)


def test_lemma1_is_the_most_robust_linear_classifier(problem):
    eps_grid = np.linspace(0.0, 1.4, 57)
    bayes = fading_gaussian.bayes_weights(problem)
    envelope = fading_gaussian.optimal_adversarial_accuracy(problem, eps_grid)
    random_weights = np.random.default_rng(4).standard_normal((200, 10))
    for eps, best in zip(eps_grid, envelope):
        robust = fading_gaussian.robust_weights(problem, eps)
        reached = fading_gaussian.adversarial_accuracy(problem, robust, eps)
        np.testing.assert_allclose(reached, best, atol=1e-12)  # Eq. 10 attains Eq. 11
        assert reached >= fading_gaussian.adversarial_accuracy(problem, bayes, eps) - 1e-12
        for weights in np.concatenate([random_weights, np.abs(random_weights)]):
            assert fading_gaussian.adversarial_accuracy(problem, weights, eps) <= best + 1e-12
    np.testing.assert_allclose(fading_gaussian.robust_weights(problem, 0.0), bayes)
    np.testing.assert_allclose(envelope[0], fading_gaussian.adversarial_accuracy(problem, bayes, 0.0))
    # beyond eps = max mu_j = 1 no linear classifier beats a coin; the envelope stays continuous there
    assert np.all(envelope[eps_grid > 1.0] < 0.5)
    just_below, just_above = fading_gaussian.optimal_adversarial_accuracy(problem, [1.0 - 1e-6, 1.0 + 1e-6])
    assert abs(just_below - just_above) < 1e-5
    assert envelope[np.searchsorted(eps_grid, 0.3)] - fading_gaussian.adversarial_accuracy(problem, bayes, 0.3) > 0.15


def test_two_logit_als_is_the_margin_loss_of_section_3_1():
    margins = np.linspace(-4.0, 4.0, 33)
    for alpha in (0.0, 0.005, 0.1, 0.4):
        for label in (-1, 1):
            # logit 0 is class -1, logit 1 is class +1; y w^T x is the margin
            logits = tf.constant(np.stack([np.zeros_like(margins), label * margins], axis=-1), tf.float32)
            one_hot = tf.one_hot(np.full(margins.shape, int(label > 0)), 2)
            loss = losses.soft_cross_entropy(targets.als(one_hot, logits, alpha), logits).numpy()
            np.testing.assert_allclose(loss, fading_gaussian.als_margin_loss(margins, alpha), atol=1e-5)


def test_expected_als_loss_is_smallest_along_the_bayes_direction(problem, test_samples):
    inputs, labels = test_samples
    bayes = fading_gaussian.bayes_weights(problem)
    others = [fading_gaussian.robust_weights(problem, 0.3), problem.mean]
    scales = np.geomspace(0.1, 10.0, 100)
    for alpha in (0.005, 0.1, 0.4):
        sampled = np.mean(fading_gaussian.als_margin_loss(labels * (inputs @ bayes), alpha))
        assert abs(fading_gaussian.expected_als_loss(problem, bayes, alpha) - sampled) < 0.005

        def best(direction):
            return min(fading_gaussian.expected_als_loss(problem, scale * direction / np.linalg.norm(direction),
                                                         alpha) for scale in scales)

        for other in others:
            assert best(bayes) < best(other)


@pytest.mark.parametrize("alpha", [0.005, 0.1])
def test_converged_als_training_recovers_the_bayes_direction(problem, alpha):
    inputs, labels = fading_gaussian.sample(problem, 20000, seed=0)
    trained = fading_gaussian.train_als(inputs, labels, alpha, steps=300)
    bayes = fading_gaussian.bayes_weights(problem)
    cosine = trained.weights @ bayes / (np.linalg.norm(trained.weights) * np.linalg.norm(bayes))
    assert cosine > 0.98
    eps = np.linspace(0.0, 0.4, 9)
    als_curve = fading_gaussian.adversarial_accuracy(problem, trained.weights, eps)
    bayes_curve = fading_gaussian.adversarial_accuracy(problem, bayes, eps)
    assert abs(als_curve[0] - bayes_curve[0]) < 0.005  # §3.1: standard accuracy barely changes
    assert np.all(np.abs(als_curve - bayes_curve) < 0.03)
    assert np.all(als_curve <= fading_gaussian.optimal_adversarial_accuracy(problem, eps) + 1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_early_stopped_gradient_descent_is_more_robust_than_bayes(problem, alpha):
    # from w = 0 the first steps follow mu = sigma^2 (high-SNR features first), whatever alpha is
    inputs, labels = fading_gaussian.sample(problem, 5000, seed=0)
    trained = fading_gaussian.train_als(inputs, labels, alpha, steps=20, learning_rate=0.5, optimizer="sgd")
    bayes = fading_gaussian.bayes_weights(problem)
    assert (fading_gaussian.adversarial_accuracy(problem, trained.weights, 0.3)
            > fading_gaussian.adversarial_accuracy(problem, bayes, 0.3) + 0.05)


def test_bad_arguments_are_refused(problem):
    with pytest.raises(ValueError, match="alpha"):
        fading_gaussian.train_als(np.zeros((4, 10)), np.ones(4), 0.5)
    with pytest.raises(ValueError, match="all zero"):
        fading_gaussian.adversarial_accuracy(problem, np.zeros(10), 0.1)
    with pytest.raises(ValueError, match="eps"):
        fading_gaussian.robust_weights(problem, -0.1)


def test_script_writes_png_and_json(tmp_path):
    script = os.path.join(ROOT, "scripts", "fading_gaussian.py")
    done = script_server.run_script(script, f"--output_dir={tmp_path}", "--num_train=2000", "--num_test=20000",
                                    "--num_eps=5", "--eps_max=0.4", "--steps=200", "--alphas=0.005,0.1",
                                    timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Lemma 1" in done.stdout and "ALS alpha=0.1" in done.stdout
    with open(tmp_path / "fading_gaussian.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "fading_gaussian.json") as handle:
        result = json.load(handle)
    names = [entry["name"] for entry in result["classifiers"]]
    assert names[0] == "Bayes" and names[1].startswith("Lemma 1") and len(names) == 4
    for entry in result["classifiers"]:
        assert len(entry["monte_carlo"]) == len(result["grid_eps"]) == 5
        assert len(entry["closed_form"]) == len(result["eps"])
    assert result["max_monte_carlo_gap"] < 0.02
