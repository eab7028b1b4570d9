"""Each attack of AutoAttack-standard's cascade (each on the points still robust) timed with and without
compaction (issue 24) on the same images: seconds (tracing excluded), ratio, and whether the broken sets are equal.
A measurement, not a test: on a shared machine the seconds are noisy (`tfadv.studies.autoattack_timing`).
  python scripts/bench_autoattack.py --model_dir=/tmp/dw-digits --num_examples=450
  python scripts/bench_autoattack.py --model_dir=runs/c10cpu30/pgd --data_dir=/work/cifar_tfds --num_examples=100
"""

from tfadv import cli

cli.quiet_tensorflow()

from absl import app, flags  # noqa: E402

from tfadv.evaluation import specs as specs_lib  # noqa: E402
from tfadv.studies import autoattack_timing  # noqa: E402

flags.DEFINE_string("model_dir", None, "a tfadv run directory (SavedModel, else its final checkpoint) or SavedModel")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory")
flags.DEFINE_integer("num_examples", 100, "first N test examples (-1: all)")
flags.DEFINE_list("attacks", list(specs_lib.AUTOATTACK), "the cascade's attacks (AutoAttack-standard's four)")
FLAGS = flags.FLAGS


def main(_):
    model_dir = FLAGS.model_dir or cli.fail("--model_dir is required")
    autoattack_timing.time_cascade(model_dir, FLAGS.data_dir, FLAGS.num_examples, FLAGS.attacks)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
