"""Each attack of AutoAttack-standard's cascade (each on the points still robust) timed with and without
compaction (issue 24) on the same images: seconds (tracing excluded), ratio, and whether the broken sets are equal.
A measurement, not a test: on a shared machine the seconds are noisy.
  python scripts/bench_autoattack.py --model_dir=/tmp/dw-digits --num_examples=450
  python scripts/bench_autoattack.py --model_dir=runs/c10cpu30/pgd --data_dir=/work/cifar_tfds --num_examples=100
"""

import time

from tfadv import cli

cli.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from tfadv import attacks, data, evaluation, export, runs  # noqa: E402
from tfadv.attacks import fab, rng, square  # noqa: E402
from tfadv.evaluation import api, specs as specs_lib  # noqa: E402

flags.DEFINE_string("model_dir", None, "a tfadv run directory (SavedModel, else its final checkpoint) or SavedModel")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory")
flags.DEFINE_integer("num_examples", 100, "first N test examples (-1: all)")
flags.DEFINE_list("attacks", list(specs_lib.AUTOATTACK), "the cascade's attacks (AutoAttack-standard's four)")
FLAGS = flags.FLAGS


def _model(location):
    if path := runs.find_saved_model(location):
        return export.load_logits_fn(path), api.evaluation_budget(export.read_metadata(path))
    network, config = runs.load_run_network(location)
    return (lambda images: network(images, training=False)), (config.spec, config.budget())


def _attack(spec, fn, compact):
    """x, y, keys -> the image the evaluation scores (FAB-T at the budget, as specs.at_budget)."""
    if spec.family in ("apgd_ce", "apgd_t"):
        run = attacks.apgd if spec.family == "apgd_ce" else attacks.apgd_targeted
        return lambda x, y, k: run(fn, x, y, eps=spec.eps, norm=spec.norm, steps=spec.steps, keys=k, compact=compact)
    if spec.family == "fab_t":
        return lambda x, y, k: specs_lib.at_budget(x, *fab.fab_targeted(
            fn, x, y, norm=spec.norm, steps=spec.steps, keys=k, compact=compact,
            stop_within=spec.eps if compact else None), spec.eps)
    return lambda x, y, k: square.square(fn, x, y, eps=spec.eps, norm=spec.norm, queries=spec.steps, keys=k,
                                         compact=compact)


def main(_):
    fn, (spec, budget) = _model(FLAGS.model_dir or cli.fail("--model_dir is required"))
    x, y = data.take(data.load(spec.name, FLAGS.data_dir).test, FLAGS.num_examples)
    x, y = x.astype(np.float32), y.astype(np.int32)
    robust = np.argmax(fn(x).numpy(), -1) == y
    print(f"{FLAGS.model_dir}: {spec.name}, {len(y)} images, clean accuracy {robust.mean():.4f}")
    signature = [tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
                 tf.TensorSpec([None], tf.int64)]
    total = {False: 0.0, True: 0.0}
    for salt, name in enumerate(FLAGS.attacks):
        attack = evaluation.parse_attack(name, budget.radii())
        todo = np.flatnonzero(robust)
        images, labels, keys = x[todo], y[todo], rng.example_keys(tf.constant(todo, tf.int64), 0, salt)
        broken, seconds = {}, {}  # per compact: the attacked points it broke, its seconds
        for compact in (False, True):
            run = tf.function(_attack(attack, fn, compact), input_signature=signature)
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


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
