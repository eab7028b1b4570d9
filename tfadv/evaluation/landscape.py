"""Diagnostics of a model's local geometry, for `scripts/evaluate.py --diagnostics=...`.

  gradients    min / mean / max over examples of ||grad_x CE||_2^2 (paper 002 Table 2's statistic) on all,
               correctly and wrongly classified examples; the same for ||grad_x CE||_1 (the dual of l-inf)
  lipschitz    empirical local Lipschitz constant (Yang et al. 2020; paper 000 App. B Eq. 20): the mean over
               examples of max (upper) and min (lower) over x' in the eps-ball of ||f(x) - f(x')||_1 / ||x - x'||_inf,
               f = softmax, each searched by signed-gradient steps from a random start
  linearity    local linearity: gradient alignment cos(grad l(x), grad l(x + eta)), eta ~ U[-eps, eps]
               (Andriushchenko & Flammarion 2020, used by paper 001), and Qin et al.'s linearity gap
               max_delta |l(x + delta) - l(x) - delta . grad l(x)|
  landscape    the cross-entropy on the plane x + a d_adv + b d_rand, a, b in [-eps, eps] (paper 001 Fig. 6,
               paper 004 Fig. 5); d_adv = sign of the input gradient, d_rand a random sign vector
  confidence   the sorted softmax profile top-1 ... top-K averaged over clean, PGD and CW inputs (paper 000 Table 6)
  eps_sweep / step_sweep   robust accuracy vs eps and vs PGD steps (paper 002 Fig. 1)
All functions take `logits_fn` in inference mode and [0,1] images; they batch internally.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
import tensorflow as tf

from tfadv import attacks, graphs, runs


def _batched(fn, arrays, batch_size=256):
    n = len(arrays[0])
    parts = [fn(*[tf.constant(a[s:s + batch_size]) for a in arrays]) for s in range(0, n, batch_size)]
    if not parts:
        return None
    if isinstance(parts[0], (tuple, list)):
        return tuple(np.concatenate([p[i].numpy() for p in parts]) for i in range(len(parts[0])))
    return np.concatenate([p.numpy() for p in parts])


def _flat(t):
    return tf.reshape(t, [tf.shape(t)[0], -1])


def gradient_magnitudes(logits_fn: Callable, x, y, batch_size=256) -> dict:
    """Paper 002 Table 2: per example the squared l2 norm ||grad_x L(x, y)||_2^2 of the cross-entropy's input
    gradient, then its min / mean / max over all, correctly and wrongly classified examples
    (`result["squared_l2_norm"][collection]`); the l1 norm the same way under `result["l1_norm"]`."""
    def run(images, labels):
        _, gradient = attacks.input_gradient(logits_fn, images, labels, "ce")
        correct = tf.equal(tf.argmax(logits_fn(images), -1, output_type=tf.int32), labels)
        flat = _flat(gradient)
        return tf.reduce_sum(tf.square(flat), -1), tf.reduce_sum(tf.abs(flat), -1), correct

    squared, l1, correct = _batched(graphs.function(run, reduce_retracing=True), (x, np.asarray(y, np.int32)),
                                    batch_size)

    def stats(values):
        if not len(values):
            return {"count": 0}
        return {"count": int(len(values)), "min": float(values.min()), "mean": float(values.mean()),
                "max": float(values.max())}

    def collections(values):
        return {"all": stats(values), "correct": stats(values[correct]), "wrong": stats(values[~correct])}

    return {"statistic": "squared_l2_norm", "squared_l2_norm": collections(squared), "l1_norm": collections(l1)}


def local_lipschitz(logits_fn: Callable, x, eps: float, steps: int = 10, batch_size=256) -> dict:
    step = eps / 4

    def ratio(images, candidate):
        p, q = tf.nn.softmax(logits_fn(images)), tf.nn.softmax(logits_fn(candidate))
        distance = tf.reduce_max(tf.abs(_flat(candidate - images)), -1)
        return tf.reduce_sum(tf.abs(p - q), -1) / (distance + 1e-12)

    def search(images, sign):
        delta = attacks.clip_to_box(images, attacks.random_init(images, eps, "linf"))

        def body(delta):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                value = tf.reduce_sum(ratio(images, images + delta))
            gradient = tape.gradient(value, delta)
            delta = delta + sign * step * tf.sign(gradient)
            return attacks.clip_to_box(images, tf.clip_by_value(delta, -eps, eps))

        delta = attacks.repeat(body, delta, steps)
        return ratio(images, images + delta)

    run = graphs.function(lambda images: (search(images, 1.0), search(images, -1.0)), reduce_retracing=True)
    upper, lower = _batched(run, (x,), batch_size)
    return {"upper": float(np.mean(upper)), "lower": float(np.mean(lower)), "eps": eps, "steps": steps}


def local_linearity(logits_fn: Callable, x, y, eps: float, steps: int = 10, batch_size=256) -> dict:
    def run(images, labels):
        loss0, g0 = attacks.input_gradient(logits_fn, images, labels, "ce")
        noise = tf.random.uniform(tf.shape(images), -eps, eps)
        _, g1 = attacks.input_gradient(logits_fn, attacks.clip_to_box(images, noise) + images, labels, "ce")
        cosine = tf.reduce_sum(_flat(g0) * _flat(g1), -1) / (
            tf.norm(_flat(g0), axis=-1) * tf.norm(_flat(g1), axis=-1) + 1e-12)

        def gap(delta):
            values = attacks.cross_entropy(logits_fn(images + delta), labels)
            return tf.abs(values - loss0 - tf.reduce_sum(_flat(delta) * _flat(g0), -1))

        def body(delta):
            with tf.GradientTape() as tape:
                tape.watch(delta)
                total = tf.reduce_sum(gap(delta))
            delta = delta + (eps / 4) * tf.sign(tape.gradient(total, delta))
            return attacks.clip_to_box(images, tf.clip_by_value(delta, -eps, eps))

        delta = attacks.repeat(body, attacks.clip_to_box(images, attacks.random_init(images, eps, "linf")), steps)
        return cosine, gap(delta)

    cosine, gap = _batched(graphs.function(run, reduce_retracing=True), (x, np.asarray(y, np.int32)), batch_size)
    return {"gradient_alignment": float(np.mean(cosine)), "linearity_gap": float(np.mean(gap)), "eps": eps}


def loss_landscape(logits_fn: Callable, x, y, eps: float, points: int = 21, examples: int = 1, seed: int = 0) -> dict:
    """Cross-entropy on a (points x points) grid over a, b in [-eps, eps] for the first `examples` images."""
    x = np.asarray(x[:examples], np.float32)
    y = np.asarray(y[:examples], np.int32)
    _, gradient = attacks.input_gradient(logits_fn, tf.constant(x), tf.constant(y), "ce")
    adversarial = np.sign(gradient.numpy())
    random = np.random.default_rng(seed).choice([-1.0, 1.0], size=x.shape).astype(np.float32)
    grid = np.linspace(-eps, eps, points).astype(np.float32)
    surfaces = []
    for i in range(len(x)):
        a, b = np.meshgrid(grid, grid, indexing="ij")
        images = np.clip(x[i][None] + a.reshape(-1, 1, 1, 1) * adversarial[i][None]
                         + b.reshape(-1, 1, 1, 1) * random[i][None], 0, 1).astype(np.float32)
        labels = np.full(len(images), y[i], np.int32)
        losses = attacks.cross_entropy(tf.cast(logits_fn(tf.constant(images)), tf.float32), labels).numpy()
        surfaces.append(losses.reshape(points, points))
    return {"grid": grid.tolist(), "surfaces": [s.tolist() for s in surfaces], "eps": eps}


def plot_landscape(result: dict, path: str, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.asarray(result["grid"])
    surface = np.asarray(result["surfaces"][0])
    a, b = np.meshgrid(grid, grid, indexing="ij")
    fig = plt.figure(figsize=(5, 4))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(a, b, surface, cmap="viridis")
    ax.set_xlabel("adversarial direction")
    ax.set_ylabel("random direction")
    ax.set_zlabel("cross-entropy")
    ax.set_title(title or "loss landscape")
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=120)
    plt.close(fig)


def confidence_profile(logits_fn: Callable, x, y, eps: float, steps: int = 20, batch_size=256) -> Dict[str, list]:
    def profile(images):
        return tf.sort(tf.nn.softmax(tf.cast(logits_fn(images), tf.float32)), axis=-1, direction="DESCENDING")

    def run(images, labels):
        pgd = attacks.pgd(logits_fn, images, labels, eps=eps, step_size=eps / 4, steps=steps, loss="ce")
        cw = attacks.pgd(logits_fn, images, labels, eps=eps, step_size=eps / 4, steps=steps, loss="cw")
        return profile(images), profile(pgd), profile(cw)

    clean, pgd, cw = _batched(graphs.function(run, reduce_retracing=True), (x, np.asarray(y, np.int32)), batch_size)
    return {"clean": clean.mean(0).tolist(), "pgd": pgd.mean(0).tolist(), "cw": cw.mean(0).tolist()}


def accuracy_sweep(logits_fn: Callable, x, y, eps_values: Sequence[float], steps_values: Sequence[int],
                   batch_size=256) -> dict:
    """PGD-CE robust accuracy for each eps (at max(steps_values) steps) and for each step count (at the last
    eps); step size eps/4, random start."""
    y = np.asarray(y, np.int32)

    def accuracy(eps, steps):
        fn = graphs.function(lambda images, labels: tf.equal(tf.argmax(logits_fn(attacks.pgd(
            logits_fn, images, labels, eps=eps, step_size=max(eps, 1e-12) / 4, steps=steps)), -1,
            output_type=tf.int32), labels), reduce_retracing=True)
        return float(_batched(fn, (x, y), batch_size).mean())

    steps_max = max(steps_values)
    by_eps = [accuracy(float(e), steps_max) for e in eps_values]
    by_steps = [accuracy(float(eps_values[-1]), int(s)) for s in steps_values]
    return {"eps": [float(e) for e in eps_values], "accuracy_vs_eps": by_eps, "steps_for_eps_sweep": steps_max,
            "steps": [int(s) for s in steps_values], "accuracy_vs_steps": by_steps,
            "eps_for_step_sweep": float(eps_values[-1])}


def plot_sweep(result: dict, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(result["eps"], result["accuracy_vs_eps"], marker="o")
    left.set_xlabel("eps (fraction of the pixel range)")
    left.set_ylabel(f"PGD-{result['steps_for_eps_sweep']} accuracy")
    right.plot(result["steps"], result["accuracy_vs_steps"], marker="o")
    right.set_xscale("log")
    right.set_xlabel("PGD steps")
    right.set_ylabel(f"accuracy at eps {result['eps_for_step_sweep']:.4f}")
    for ax in (left, right):
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    runs.save_figure(fig, path, dpi=120)
    plt.close(fig)
