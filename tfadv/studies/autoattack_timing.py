"""Each attack of AutoAttack-standard's cascade (each on the points still robust) timed with and without
compaction (issue 24) on the same images: seconds (tracing excluded), ratio, and whether the broken sets are equal
(scripts/bench_autoattack.py). A measurement, not a test: on a shared machine the seconds are noisy."""

import time


def load_model(location):
    """(logits function, (dataset spec, budget)) of a run directory (its SavedModel, else its final checkpoint)
    or a SavedModel."""
    from tfadv import export, runs
    from tfadv.evaluation import api

    if path := runs.find_saved_model(location):
        return export.load_logits_fn(path), api.evaluation_budget(export.read_metadata(path))
    network, config = runs.load_run_network(location)
    return (lambda images: network(images, training=False)), (config.spec, config.budget())


def attack_fn(spec, fn, compact):
    """x, y, keys -> the image the evaluation scores (FAB-T at the budget, as specs.at_budget)."""
    from tfadv import attacks
    from tfadv.attacks import fab, square
    from tfadv.evaluation import specs as specs_lib

    if spec.family in ("apgd_ce", "apgd_t"):
        run = attacks.apgd if spec.family == "apgd_ce" else attacks.apgd_targeted
        return lambda x, y, k: run(fn, x, y, eps=spec.eps, norm=spec.norm, steps=spec.steps, keys=k, compact=compact)
    if spec.family == "fab_t":
        return lambda x, y, k: specs_lib.at_budget(x, *fab.fab_targeted(
            fn, x, y, norm=spec.norm, steps=spec.steps, keys=k, compact=compact,
            stop_within=spec.eps if compact else None), spec.eps)
    return lambda x, y, k: square.square(fn, x, y, eps=spec.eps, norm=spec.norm, queries=spec.steps, keys=k,
                                         compact=compact)


def time_cascade(model_dir, data_dir, num_examples, names):
    """Runs the cascade of attacks `names` on the first `num_examples` test images of the model at `model_dir`,
    each attack twice (without and with compaction) on the points still robust, printing a line per attack and
    the cascade's totals."""
    import numpy as np
    import tensorflow as tf

    from tfadv import data, evaluation
    from tfadv.attacks import rng

    fn, (spec, budget) = load_model(model_dir)
    x, y = data.take(data.load(spec.name, data_dir).test, num_examples)
    x, y = x.astype(np.float32), y.astype(np.int32)
    robust = np.argmax(fn(x).numpy(), -1) == y
    print(f"{model_dir}: {spec.name}, {len(y)} images, clean accuracy {robust.mean():.4f}")
    signature = [tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
                 tf.TensorSpec([None], tf.int64)]
    total = {False: 0.0, True: 0.0}
    for salt, name in enumerate(names):
        attack = evaluation.parse_attack(name, budget.radii())
        todo = np.flatnonzero(robust)
        images, labels, keys = x[todo], y[todo], rng.example_keys(tf.constant(todo, tf.int64), 0, salt)
        broken, seconds = {}, {}  # per compact: the attacked points it broke, its seconds
        for compact in (False, True):
            run = tf.function(attack_fn(attack, fn, compact), input_signature=signature)
            run.get_concrete_function()  # tracing is not timed, the first call's graph optimisation is
            start = time.perf_counter()
            x_adv = run(images, labels, keys).numpy()
            seconds[compact] = time.perf_counter() - start
            broken[compact] = np.argmax(fn(x_adv).numpy(), -1) != y[todo]
            total[compact] += seconds[compact]
        robust[todo[broken[True]]] = False
        print(f"{name:8s} on {len(todo):4d}: {seconds[False]:8.1f} s without compaction, {seconds[True]:8.1f} s with "
              f"({seconds[False] / seconds[True]:5.2f}x); broken {broken[False].sum()} / {broken[True].sum()}, "
              f"equal sets: {np.array_equal(broken[False], broken[True])}; robust after: {robust.mean():.4f}")
    print(f"cascade: {total[False]:.1f} s without compaction, {total[True]:.1f} s with "
          f"({total[False] / total[True]:.2f}x)")
