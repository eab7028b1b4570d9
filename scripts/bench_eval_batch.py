"""Evaluation batch size and XLA per attack (issue 24 item 2): each attack alone on the same images, through the
Evaluator, at several --eval_batch_size values, with and without XLA (`--jit_compile`); warm seconds and robust
accuracy per configuration, as a Markdown table (`tfadv.studies.eval_batch`). A measurement: run it quietly.
  python scripts/bench_eval_batch.py --model_dir=runs/digits-pgd --num_examples=300
  python scripts/bench_eval_batch.py --model_dir=runs/study/pgd --data_dir=/work/cifar_tfds --num_examples=100 \
      --attacks=apgd_ce,apgd_t10,fab_t10,square500 --batch_sizes=32,100
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402

from absl import app, flags  # noqa: E402

from tfadv.errors import UsageError  # noqa: E402
from tfadv.studies import eval_batch  # noqa: E402

flags.DEFINE_string("model_dir", None, "a tfadv run directory or SavedModel")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory of the model's dataset")
flags.DEFINE_integer("num_examples", 100, "first N test images")
flags.DEFINE_list("attacks", ["apgd_ce", "apgd_t", "fab_t", "square"], "attack names, each timed alone")
flags.DEFINE_list("batch_sizes", ["32", "64", "128", "256", "512"], "evaluation batch sizes")
flags.DEFINE_list("xla", ["off", "on"], "XLA modes: off, on")
flags.DEFINE_string("json", None, "also write the rows here")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1 or not FLAGS.model_dir:
        cli.fail("--model_dir is required (flags are --name=value)")
    if not set(FLAGS.xla) <= {"off", "on"}:
        cli.fail(f"--xla: off and/or on, got {FLAGS.xla}")
    if not all(b.isdigit() and int(b) > 0 for b in FLAGS.batch_sizes):
        cli.fail(f"--batch_sizes: positive integers, got {FLAGS.batch_sizes}")
    try:
        rows = eval_batch.measure(FLAGS.model_dir, FLAGS.data_dir, FLAGS.num_examples, FLAGS.attacks,
                                  [int(b) for b in FLAGS.batch_sizes], [mode == "on" for mode in FLAGS.xla])
    except (UsageError, ValueError, OSError) as error:
        cli.fail(str(error).splitlines()[0] if str(error) else type(error).__name__)
    print(eval_batch.markdown(rows, f"{FLAGS.model_dir}, {FLAGS.num_examples} images"))
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
