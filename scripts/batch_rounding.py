"""How often an example's outcome changes with the evaluation batch size alone: the same model, examples, attack and
per-example random keys, evaluated at several --eval_batch_size values (a shard of a sharded evaluation sees other
batches than one run does). Differences come only from float rounding: the CPU's kernels may sum in another
order for another batch shape. Prints, per batch size, the examples whose clean or robust outcome differs from
the first batch size, and the largest logit difference on the clean images.

  python scripts/batch_rounding.py --model_dir=runs/c10cpu-pgd --data_dir=/tmp/c10 --attacks=pgd20 \
      --batch_sizes=660,256,100,37
"""

from tfadv import cli

cli.quiet_tensorflow()

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from tfadv import data, evaluation, export, runs  # noqa: E402
from tfadv.evaluation import api, runner  # noqa: E402

flags.DEFINE_string("model_dir", None, "a tfadv run directory or SavedModel")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory")
flags.DEFINE_list("attacks", ["pgd20"], "attacks")
flags.DEFINE_list("batch_sizes", ["660", "256", "100", "37"], "batch sizes; the first is the reference")
flags.DEFINE_integer("num_examples", -1, "first N test examples (-1: all)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    path = runs.find_saved_model(FLAGS.model_dir or "") or cli.fail(f"--model_dir={FLAGS.model_dir}: no SavedModel")
    spec, budget = api.evaluation_budget(export.read_metadata(path))
    x, y = data.take(data.load(spec.name, FLAGS.data_dir).test, FLAGS.num_examples)
    logits_fn = export.load_logits_fn(path)
    specs = [evaluation.parse_attack(name, budget.radii()) for name in FLAGS.attacks]
    results, logits = {}, {}
    for size in (int(b) for b in FLAGS.batch_sizes):
        report = runner.Evaluator(logits_fn, specs, size, seed=0)(x, y)
        results[size] = (np.asarray(report["per_example_correct"]["clean"]), np.asarray(report["per_example_robust"]))
        logits[size] = np.concatenate([np.asarray(logits_fn(x[s:s + size])) for s in range(0, len(x), size)])
    first = int(FLAGS.batch_sizes[0])
    print(f"{spec.name}, {len(y)} examples, attacks {', '.join(FLAGS.attacks)}; reference batch size {first}")
    for size, (correct, robust) in results.items():
        clean_flips = int(np.sum(correct != results[first][0]))
        robust_flips = int(np.sum(robust != results[first][1]))
        print(f"batch {size:>5}: clean outcome differs on {clean_flips}, robust on {robust_flips} of {len(y)}; "
              f"largest clean logit difference {np.max(np.abs(logits[size] - logits[first])):.2e}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
