"""Every 32x32x3 preset on real images: each flagfile (and flags/cifar10.cfg with every --defense) trains 2 short
epochs on the CIFAR-10 subset (validation on a held-out 2 %, final PGD-20, SavedModel), then evaluate.py runs
AutoAttack-standard on a few test images; prints a Markdown table with the steady-state speed (the 2nd epoch)
and the projected time of the preset's full recipe on this CPU and, from the FLOP count, on one GPU.
Finished rows are skipped, so the table can be built in parts. The rows: `tfadv.studies.presets.rows()`.

  python ../shared/data/cifar10_subset/build_tfds.py /tmp/c10
  python scripts/preset_table.py --data_dir=/tmp/c10 --runs_dir=/tmp/preset-runs --markdown=docs/presets.md
"""

from absl import app, flags

from tfadv import cli
from tfadv.studies import jobs, presets

flags.DEFINE_string("data_dir", None, "the CIFAR-10 subset as a tensorflow-datasets directory (build_tfds.py)")
flags.DEFINE_string("runs_dir", None, "one run directory per row (outside the repository)")
flags.DEFINE_integer("train_examples", 256, "training images per short epoch (the rest of the subset is unused)")
flags.DEFINE_integer("autoattack_examples", 8, "test images for evaluate.py --suite=autoattack")
flags.DEFINE_list("only", [], "rows to run (their names, e.g. cifar10-pgd); default all")
flags.DEFINE_string("markdown", None, "also write the table here")
flags.DEFINE_boolean("report_only", False, "run nothing: tabulate the rows already finished (row.json)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.data_dir or not FLAGS.runs_dir:
        raise app.UsageError("--data_dir and --runs_dir are required")
    table = presets.PresetTable(FLAGS.runs_dir, FLAGS.data_dir, FLAGS.train_examples, FLAGS.autoattack_examples)
    rows = table.build(FLAGS.only, FLAGS.report_only)
    jobs.write_markdown(FLAGS.markdown, table.table(rows))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
