"""Paper 003 §3.1 (Goibert & Dohmatob): the fading-Gaussian example, linear classifiers under an l_inf attack.

How the (PDF-extracted) text is read:

* **Data model.** Y is uniform on {-1, +1} and X_1..X_d | Y = y are independent N(y mu_i, sigma_i^2), i.e.
  x | y ~ N(y mu, diag(sigma^2)). The "empirical illustration" takes sigma_i = 1 - (i - 1) / d (i = 1..d) and
  mu_i = sigma_i^2, so mu_i / sigma_i^2 = 1: as in Tsipras et al. (the paper's [18]) the Bayes classifier is
  w = (1, ..., 1), and the feature-wise signal-to-noise ratio mu_i / sigma_i = sigma_i fades with i.
* **Classifiers** are f_w(x) = sign(w^T x), without a bias. sign(0) = 0 is never a label, so w = 0 is never
  right (the paper's Eq. 11 implicitly allows it; see `optimal_adversarial_accuracy`).
* **Eq. 8-9.** y x ~ N(mu, diag(sigma^2)) for both labels, so the margin y w^T x ~ N(w^T mu, sum_j w_j^2
  sigma_j^2). The l_inf attack of size eps lowers every margin by exactly eps ||w||_1, by the perturbation
  x_adv = x - eps y sign(w) (the minimum of y w^T delta over ||delta||_inf <= eps), hence
  acc_eps(w) = Phi((w^T mu - eps ||w||_1) / ||sigma * w||_2); eps = 0 is the standard accuracy (Eq. 8).
* **Lemma 1 (Eq. 10-11, proof App. 1.3).** The most robust linear classifier at eps is
  w_j = sigma_j^-2 sign(mu_j) (|mu_j| - eps)_+ (we take the hidden constant to be 1), reaching
  Phi(sqrt(Delta(eps))) with Delta(eps) = sum_j sigma_j^-2 ((|mu_j| - eps)_+)^2. Substituting Eq. 10 into
  Eq. 9 gives exactly that value: numerator and squared denominator both equal Delta. The appendix's last
  display drops the sigma_j^-2 of Delta; Eq. 11 keeps it, and so do we. The classifier depends on eps: the
  "Lemma 1" curve is the envelope of the best linear classifier at each eps, an upper bound for every
  fixed w. At eps = 0 it is the Bayes classifier.
* **Bayes.** P(Y = 1 | x) = sigmoid(2 sum_j mu_j x_j / sigma_j^2), so w_j = mu_j / sigma_j^2.
* **ALS with two classes (Eq. 4 and the l_1..l_4 of §3.1).** A two-logit linear model z = (w_-1^T x,
  w_+1^T x) has the effective w = w_+1 - w_-1 and margin m = y w^T x. ALS puts alpha on the smallest logit:
  the wrong class when m > 0, the true class itself when m < 0, so the loss is
  l(m) = (1 - alpha) softplus(-m) + alpha softplus(m) for m > 0 and softplus(-m) for m < 0 (`als_margin_loss`),
  the paper's -l_1..-l_4. It is the maximum of those two convex functions (they differ by alpha m), hence
  convex in m and in the weights.

**What the population optimum of ALS is (our derivation, not in the paper).** Under this model the margin of
any w is N(a, s^2) with a = w^T mu and s = ||w||_Sigma, and a / s is largest along the Bayes direction. For a
convex l, E l(a + s Z) grows with s (a larger s is a mean-preserving spread), so rescaling the Bayes direction
to the same a never loses: the minimiser of the expected ALS loss over linear classifiers is the Bayes
direction, for every alpha < 1/2 (and for alpha = 0, plain logistic regression). A converged, well-sampled ALS
classifier therefore has the Bayes classifier's accuracy curve, up to sampling noise of order sqrt(d / n) —
it does *not* reproduce Fig. 2's gain over Bayes. What does produce such a gain is stopping gradient descent
early: from w = 0 the first gradient step is along mu (here sigma^2, which favours the high-SNR features as
Lemma 1 does), for any alpha including 0. `train_als` trains to convergence by default; `optimizer="sgd"` with
few `steps` reproduces the early-stopped behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, Sequence

import numpy as np

from tfadv import runs

OPTIMIZERS = ("adam", "sgd")


@dataclasses.dataclass(frozen=True)
class GaussianProblem:
    """x | y ~ N(y mean, diag(std^2)), y uniform on {-1, +1}."""

    mean: np.ndarray
    std: np.ndarray

    @property
    def dimension(self) -> int:
        return int(self.mean.shape[0])


def fading_gaussian(dimension: int) -> GaussianProblem:
    """§3.1's "empirical illustration": sigma_i = 1 - (i - 1) / d for i = 1..d and mu_i = sigma_i^2."""
    if dimension < 1:
        raise ValueError(f"the dimension d must be at least 1, got {dimension}")
    std = 1.0 - np.arange(dimension, dtype=np.float64) / dimension
    return GaussianProblem(mean=std ** 2, std=std)


def sample(problem: GaussianProblem, num_examples: int, seed: int):
    """num_examples draws (x float32 [n, d], y int64 [n] in {-1, +1}), reproducible from `seed`."""
    if num_examples < 1:
        raise ValueError(f"the number of examples must be at least 1, got {num_examples}")
    generator = np.random.default_rng(seed)
    labels = generator.choice(np.array([-1, 1], dtype=np.int64), size=num_examples)
    noise = generator.standard_normal((num_examples, problem.dimension))
    inputs = labels[:, None] * problem.mean + problem.std * noise
    return inputs.astype(np.float32), labels


def standard_normal_cdf(z):
    """Phi(z), the paper's Psi, elementwise."""
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * np.vectorize(math.erfc, otypes=[np.float64])(-z / math.sqrt(2.0))


def bayes_weights(problem: GaussianProblem) -> np.ndarray:
    """§3.1 "Bayes classifier": w_j = mu_j / sigma_j^2 (all ones for the fading Gaussian)."""
    return problem.mean / problem.std ** 2


def _check_eps(eps):
    eps = np.asarray(eps, dtype=np.float64)
    if np.any(eps < 0):
        raise ValueError(f"eps must be non-negative, got {eps}")
    return eps


def robust_weights(problem: GaussianProblem, eps: float) -> np.ndarray:
    """Lemma 1, Eq. 10: the most robust linear classifier at eps, w_j = sigma_j^-2 sign(mu_j) (|mu_j| - eps)_+.

    Once eps >= max_j |mu_j| Eq. 10 is w = 0, which never classifies; every non-zero w then has a negative
    numerator in Eq. 9 and the best of them is the single feature j maximising (|mu_j| - eps) / sigma_j
    (see `optimal_adversarial_accuracy`), which is what we return.
    """
    eps = float(_check_eps(eps))
    shrunk = np.maximum(np.abs(problem.mean) - eps, 0.0)
    if np.any(shrunk > 0):
        return np.sign(problem.mean) * shrunk / problem.std ** 2
    best = int(np.argmax((np.abs(problem.mean) - eps) / problem.std))
    weights = np.zeros(problem.dimension)
    weights[best] = np.sign(problem.mean[best]) or 1.0
    return weights


def adversarial_accuracy(problem: GaussianProblem, weights, eps) -> np.ndarray:
    """Eq. 9: Phi((w^T mu - eps ||w||_1) / ||sigma * w||_2), elementwise over `eps`; eps = 0 is Eq. 8."""
    weights = np.asarray(weights, dtype=np.float64)
    if not np.any(weights):
        raise ValueError("the linear classifier's weights are all zero (sign(0) never matches a label)")
    eps = _check_eps(eps)
    spread = np.sqrt(np.sum((problem.std * weights) ** 2))
    return standard_normal_cdf((weights @ problem.mean - eps * np.sum(np.abs(weights))) / spread)


def optimal_adversarial_accuracy(problem: GaussianProblem, eps) -> np.ndarray:
    """Lemma 1, Eq. 11: the best l_inf-adversarial accuracy of any linear classifier, Phi(sqrt(Delta(eps))).

    Delta(eps) = sum_j sigma_j^-2 ((|mu_j| - eps)_+)^2. Where Delta = 0 (eps >= max |mu_j|), Eq. 11's 1/2 is
    reached only by w = 0 (the proof's relaxed ball ||w||_Sigma <= 1 contains it); among classifiers that
    answer, writing v_j = sigma_j |w_j| and b_j = (|mu_j| - eps) / sigma_j <= 0, the Eq. 9 ratio is at most
    b.v / ||v||_2 <= max_j b_j, reached by that single feature. We return Phi(max_j b_j) there, which is
    continuous with Eq. 11 at eps = max |mu_j|.
    """
    eps = _check_eps(eps)
    magnitude = np.abs(problem.mean)
    shrunk = np.maximum(magnitude[None, :] - eps.reshape(-1, 1), 0.0)
    delta = np.sum(shrunk ** 2 / problem.std ** 2, axis=-1)
    single_feature = np.max((magnitude[None, :] - eps.reshape(-1, 1)) / problem.std, axis=-1)
    ratio = np.where(delta > 0, np.sqrt(delta), single_feature)
    return standard_normal_cdf(ratio).reshape(eps.shape)


def optimal_perturbation(weights, labels, eps: float) -> np.ndarray:
    """§3.1 after Eq. 9: delta = -eps y sign(w) [n, d], the l_inf-ball point that lowers every margin most."""
    weights = np.asarray(weights, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    return -float(_check_eps(eps)) * labels[:, None] * np.sign(weights)[None, :]


def monte_carlo_adversarial_accuracy(weights, eps, inputs, labels) -> np.ndarray:
    """The fraction of (x, y) with y w^T (x + delta) > 0 for delta = `optimal_perturbation`, for each eps."""
    weights = np.asarray(weights, dtype=np.float64)
    inputs = np.asarray(inputs, dtype=np.float64)
    eps = _check_eps(eps)
    accuracies = []
    for value in eps.reshape(-1):
        attacked = inputs + optimal_perturbation(weights, labels, value)
        accuracies.append(np.mean(labels * (attacked @ weights) > 0))
    return np.asarray(accuracies).reshape(eps.shape)


def als_margin_loss(margins, alpha: float) -> np.ndarray:
    """The two-class ALS loss as a function of the margin m = y w^T x (the paper's -l_1..-l_4 of §3.1):
    (1 - alpha) softplus(-m) + alpha softplus(m) for m > 0 (alpha on the wrong, smallest logit) and
    softplus(-m) for m <= 0 (the smallest logit is the true one, so the target is hard). Convex in m."""
    margins = np.asarray(margins, dtype=np.float64)
    smooth = (1.0 - alpha) * np.logaddexp(0.0, -margins) + alpha * np.logaddexp(0.0, margins)
    return np.where(margins > 0, smooth, np.logaddexp(0.0, -margins))


def expected_als_loss(problem: GaussianProblem, weights, alpha: float, points: int = 80) -> float:
    """E l(y w^T x) over the data model: the margin is N(w^T mu, ||sigma * w||^2), integrated by
    Gauss-Hermite quadrature with `points` nodes."""
    weights = np.asarray(weights, dtype=np.float64)
    nodes, node_weights = np.polynomial.hermite_e.hermegauss(points)
    spread = np.sqrt(np.sum((problem.std * weights) ** 2))
    margins = weights @ problem.mean + spread * nodes
    return float(np.sum(node_weights * als_margin_loss(margins, alpha)) / math.sqrt(2.0 * math.pi))


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
    alpha: float
    weights: np.ndarray  # the effective w = w_+1 - w_-1
    loss: float  # the mean ALS loss on the training data after the last step


def train_als(inputs, labels, alpha: float, steps: int = 500, learning_rate: float = 0.05,
              optimizer: str = "adam") -> TrainedClassifier:
    """A bias-free two-logit linear Keras model trained full-batch on `targets.als` + `losses.soft_cross_entropy`.

    Logit 0 is class -1, logit 1 is class +1; the kernel starts at zero (the loss is convex in it, so a
    converged run does not depend on the start). Returns the effective w = w_+1 - w_-1 (the model's decision
    is sign(w^T x), as f_w in §3.1). Deterministic: full batch, zero start, no random state.
    """
    import keras
    import tensorflow as tf

    from tfadv import losses, targets

    if not 0.0 <= alpha < 0.5:
        raise ValueError(f"alpha must be in [0, 0.5) (at 1/2 and above ALS rewards wrong margins), got {alpha}")
    if steps < 1:
        raise ValueError(f"the number of training steps must be at least 1, got {steps}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    inputs = tf.constant(np.asarray(inputs, dtype=np.float32))
    labels = np.asarray(labels)
    one_hot = tf.one_hot((labels > 0).astype(np.int32), 2)
    model = keras.Sequential([keras.Input((int(inputs.shape[-1]),)),
                              keras.layers.Dense(2, use_bias=False, kernel_initializer="zeros")])
    update = (keras.optimizers.Adam(learning_rate) if optimizer == "adam"
              else keras.optimizers.SGD(learning_rate))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(inputs)
            loss = tf.reduce_mean(losses.soft_cross_entropy(targets.als(one_hot, logits, alpha), logits))
        update.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    for _ in range(steps):
        step()
    logits = model(inputs)
    loss = float(tf.reduce_mean(losses.soft_cross_entropy(targets.als(one_hot, logits, alpha), logits)))
    kernel = model.layers[-1].kernel.numpy().astype(np.float64)
    return TrainedClassifier(alpha=float(alpha), weights=kernel[:, 1] - kernel[:, 0], loss=loss)


def experiment(dimension: int = 10, alphas: Sequence[float] = (0.005, 0.1, 0.4), num_train: int = 10000,
               num_test: int = 100000, eps_max: float = 0.6, num_eps: int = 13, steps: int = 500,
               learning_rate: float = 0.05, optimizer: str = "adam", seed: int = 0,
               curve_points: int = 121) -> Dict:
    """Fig. 1-2 of §3.1: adversarial accuracy vs eps of Bayes, Lemma 1 (best linear at each eps) and ALS.

    Closed-form curves (Eq. 9 / Eq. 11) on `curve_points` eps in [0, eps_max]; Monte-Carlo estimates with the
    optimal perturbation on `num_test` fresh samples (seed + 1) at `num_eps` of them. ALS classifiers are
    trained on `num_train` samples (seed). Returns a JSON-ready dict.
    """
    if eps_max <= 0:
        raise ValueError(f"eps_max must be positive, got {eps_max}")
    if num_eps < 2 or curve_points < 2:
        raise ValueError("the eps grids need at least 2 points")
    problem = fading_gaussian(dimension)
    curve_eps = np.linspace(0.0, eps_max, curve_points)
    grid_eps = np.linspace(0.0, eps_max, num_eps)
    test_inputs, test_labels = sample(problem, num_test, seed + 1)
    train_inputs, train_labels = sample(problem, num_train, seed)

    def fixed(name, weights, extra=None):
        entry = {"name": name, "weights": weights.tolist(),
                 "closed_form": adversarial_accuracy(problem, weights, curve_eps).tolist(),
                 "closed_form_at_grid": adversarial_accuracy(problem, weights, grid_eps).tolist(),
                 "monte_carlo": monte_carlo_adversarial_accuracy(weights, grid_eps, test_inputs,
                                                                 test_labels).tolist()}
        entry.update(extra or {})
        return entry

    classifiers = [fixed("Bayes", bayes_weights(problem))]
    robust = [robust_weights(problem, value) for value in grid_eps]
    classifiers.append({
        "name": "Lemma 1 (best linear at each eps)",
        "weights_at_grid": [weights.tolist() for weights in robust],
        "closed_form": optimal_adversarial_accuracy(problem, curve_eps).tolist(),
        "closed_form_at_grid": optimal_adversarial_accuracy(problem, grid_eps).tolist(),
        "monte_carlo": [float(monte_carlo_adversarial_accuracy(weights, value, test_inputs, test_labels))
                        for weights, value in zip(robust, grid_eps)]})
    for alpha in alphas:
        trained = train_als(train_inputs, train_labels, alpha, steps=steps, learning_rate=learning_rate,
                            optimizer=optimizer)
        name = f"ALS alpha={alpha:g}" + (" (plain CE)" if alpha == 0 else "")
        classifiers.append(fixed(name, trained.weights,
                                 {"alpha": trained.alpha, "train_loss": trained.loss,
                                  "cosine_to_bayes": _cosine(trained.weights, bayes_weights(problem))}))
    worst = max(float(np.max(np.abs(np.subtract(entry["monte_carlo"], entry["closed_form_at_grid"]))))
                for entry in classifiers)
    return {"config": {"dimension": dimension, "alphas": [float(a) for a in alphas], "num_train": num_train,
                       "num_test": num_test, "eps_max": eps_max, "num_eps": num_eps, "steps": steps,
                       "learning_rate": learning_rate, "optimizer": optimizer, "seed": seed},
            "mean": problem.mean.tolist(), "std": problem.std.tolist(),
            "eps": curve_eps.tolist(), "grid_eps": grid_eps.tolist(),
            "classifiers": classifiers, "max_monte_carlo_gap": worst}


def _cosine(first, second) -> float:
    return float(np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second)))


def format_table(result: Dict) -> str:
    """Closed-form adversarial accuracy (Monte Carlo in brackets), one row per grid eps, in percent."""
    classifiers = result["classifiers"]
    names = [entry["name"].replace(" (best linear at each eps)", "") for entry in classifiers]
    widths = [max(len(name), 11) + 2 for name in names]
    lines = ["eps    " + "".join(f"{name:>{width}}" for name, width in zip(names, widths))]
    for index, eps in enumerate(result["grid_eps"]):
        cells = "".join(f"{100 * entry['closed_form_at_grid'][index]:>{width - 7}.1f} "
                        f"({100 * entry['monte_carlo'][index]:4.1f})" for entry, width in zip(classifiers, widths))
        lines.append(f"{eps:<7.3f}" + cells)
    lines.append(f"largest |closed form - Monte Carlo|: {100 * result['max_monte_carlo_gap']:.2f} points")
    for entry in classifiers:
        if "cosine_to_bayes" in entry:
            lines.append(f"{entry['name']}: cosine to Bayes w {entry['cosine_to_bayes']:.4f}, "
                         f"train loss {entry['train_loss']:.4f}")
    return "\n".join(lines)


def plot(result: Dict, path: str):
    """Left, like Fig. 2: accuracy vs eps, closed-form lines, Monte-Carlo markers. Right, like Fig. 1: each
    classifier's w, scaled to ||w||_1 = d (Bayes is all ones); Lemma 1 at the middle grid eps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curves, weights) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    markers = "os^vDP*X"
    features = np.arange(1, len(result["mean"]) + 1)
    middle = len(result["grid_eps"]) // 2
    for index, entry in enumerate(result["classifiers"]):
        color, marker = f"C{index}", markers[index % len(markers)]
        linestyle = "--" if "Lemma" in entry["name"] else "-"
        curves.plot(result["eps"], entry["closed_form"], color=color, linestyle=linestyle)
        curves.plot(result["grid_eps"], entry["monte_carlo"], color=color, marker=marker, linestyle="none",
                    markersize=5, markerfacecolor="none")
        curves.plot([], [], color=color, marker=marker, markerfacecolor="none", linestyle=linestyle,
                    label=entry["name"])
        if "weights" in entry:
            w, label = np.asarray(entry["weights"]), entry["name"]
        else:
            w = np.asarray(entry["weights_at_grid"][middle])
            label = f"Lemma 1 at eps={result['grid_eps'][middle]:.2f}"
        weights.plot(features, w * len(w) / np.sum(np.abs(w)), color=color, marker=marker, label=label,
                     linestyle=linestyle)
    curves.set_xlabel("l_inf attack size eps")
    curves.set_ylabel("adversarial accuracy")
    curves.set_ylim(0, 1.01)
    curves.set_title(f"fading Gaussian, d={len(features)}: lines Eq. 9 / Eq. 11, markers Monte Carlo")
    curves.legend(fontsize=8, loc="lower left")
    weights.set_xlabel("feature i (sigma_i = 1 - (i-1)/d)")
    weights.set_ylabel("w_i, scaled to ||w||_1 = d")
    weights.set_xticks(features)
    weights.set_title("classifier weights")
    weights.legend(fontsize=7)
    for axis in (curves, weights):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    runs.save_figure(figure, path, dpi=120)
    plt.close(figure)
