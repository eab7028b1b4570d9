"""The real-CIFAR-10 study at CPU scale: each row trains with flags/cifar10_cpu.cfg plus its flags on the CIFAR-10
subset (train 4000 = 3600 + 400 held out / test 660), then evaluate.py runs AutoAttack-standard with the
gradient-masking audit on the first --autoattack_examples test images. Finished rows are skipped and an
interrupted one resumes, so the study can be run in parts (--only, or stop it and start it again). Prints the
study table (clean and PGD-20 on all 660 test images, AutoAttack on n, binomial standard errors, the audit's
warnings, training minutes), the claims table (each paper's claim: reproduced / not reproduced / mixed / pending)
and writes the figures. The rows are `tfadv.studies.cifar.ROWS`, the verdict rules `tfadv.studies.claims`.

  python ../shared/data/cifar10_subset/build_tfds.py /tmp/c10
  python scripts/cifar_study.py --data_dir=/tmp/c10 --runs_dir=/tmp/c10-study --markdown=docs/cifar10_study.md \
      --plots_dir=docs/plots --archive_dir=docs/cifar10_study

--archive_dir keeps each finished row's results (a few kB of JSON and CSV) where they outlive the run
directories: an archived row stays in the tables and is not trained again on another machine, unless a row still
to run needs its weights (a teacher, a Co-SSAT base). On a CPU without bfloat16 instructions (no amx_bf16 or
avx512_bf16 in /proc/cpuinfo) add --mixed_precision=none: the preset's bfloat16 is emulated there, about 8x slower.
"""

import os

from absl import app, flags

from tfadv import cli
from tfadv.studies import cifar, jobs

flags.DEFINE_string("data_dir", None, "the CIFAR-10 subset as a tensorflow-datasets directory (build_tfds.py)")
flags.DEFINE_string("runs_dir", None, "one run directory per row (outside the repository)")
flags.DEFINE_integer("autoattack_examples", 300, "test images for AutoAttack-standard")
flags.DEFINE_list("only", [], "rows to run (their keys); default all, in the order of tfadv.studies.cifar.ROWS")
flags.DEFINE_boolean("report_only", False, "run nothing: tabulate the finished rows")
flags.DEFINE_string("markdown", None, "also write the tables here")
flags.DEFINE_string("plots_dir", None, "write the figures here")
flags.DEFINE_string("archive_dir", None, "keep each finished row's results here (docs/cifar10_study)")
flags.DEFINE_enum("mixed_precision", None, ["none", "bfloat16", "float16", "auto"],
                  "train every row in this precision instead of the preset's bfloat16 (none: float32, on a CPU "
                  "without bfloat16 instructions, where bfloat16 is emulated and about 8x slower)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.data_dir or not FLAGS.runs_dir:
        raise app.UsageError("--data_dir and --runs_dir are required")
    if unknown := cifar.unknown_rows(FLAGS.only):
        raise app.UsageError(f"--only: unknown rows {unknown}; valid: {', '.join(cifar.ROWS)}, {cifar.COSSAT}")
    study = cifar.Study(FLAGS.runs_dir, FLAGS.data_dir, FLAGS.autoattack_examples, FLAGS.archive_dir,
                        FLAGS.mixed_precision)
    if not FLAGS.report_only:
        study.run(FLAGS.only)
    links_from = os.path.dirname(FLAGS.markdown or "") or "."
    jobs.write_markdown(FLAGS.markdown, study.report(FLAGS.plots_dir, links_from))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
