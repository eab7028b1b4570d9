"""Calibrate the Co-SSAT detector on an SSAT run and export SSAT + base + detector as ONE SavedModel.

  python scripts/build_cossat.py --ssat=runs/digits-ssat --base=runs/digits-pgd --flagfile=flags/digits.cfg \\
      --output_dir=runs/digits-cossat

A training flagfile may be passed as it is: only this script's flags are read from it (the dataset and eps come
from the SSAT run). What the build does and writes: tfadv.cossat_build.build, which this script calls.
"""

from tfadv import cli

cli.quiet_tensorflow()

from absl import app, flags  # noqa: E402

from tfadv import cossat_build, data  # noqa: E402
from tfadv.config import ConfigError  # noqa: E402

flags.DEFINE_string("ssat", None, "the SSAT run directory")
flags.DEFINE_string("base", None, "the base (e.g. PGD-AT) run directory")
flags.DEFINE_string("output_dir", None, "the Co-SSAT build's directory")
flags.DEFINE_boolean("overwrite", False, "replace a finished build in --output_dir")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory (default: the SSAT run's)")
flags.DEFINE_boolean("download", False, "let tensorflow-datasets download a missing dataset")
flags.DEFINE_string("detector_mode", "dlr", "dlr (DLR <= tau selects the base model) or vote (3 of 5 metrics)")
flags.DEFINE_float("min_recall", 0.9,
                   "calibration: the threshold must flag at least this share of targeted examples")
flags.DEFINE_string("calibration_balance", "balanced_accuracy",
                    "the calibration set has 2 targeted (positive) per untargeted (negative) example: "
                    "balanced_accuracy = tau maximises (TPR + TNR) / 2 at --min_recall; subsample = keep as many "
                    "positives as negatives (random, seeded by the SSAT run's --seed) and maximise accuracy; none = "
                    "maximise accuracy on the 2:1 set (biased toward flagging)")
flags.DEFINE_integer("calibration_examples", 1000, "training examples used for calibration (-1: all)")
flags.DEFINE_integer("calibration_steps", 20, "steps of the calibration attacks")
flags.DEFINE_integer("routing_examples", -1, "clean test examples for the routing report (-1: all)")
FLAGS = flags.FLAGS
ARGUMENTS = ("detector_mode", "min_recall", "calibration_balance", "calibration_examples", "calibration_steps",
             "routing_examples", "data_dir", "download", "overwrite")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    cli.quiet_logging()
    try:
        cossat_build.build(FLAGS.ssat, FLAGS.base, FLAGS.output_dir, **{name: FLAGS[name].value for name in ARGUMENTS})
    except ConfigError as error:
        cli.fail(str(error))
    except data.DataUnavailableError as error:
        cli.fail(str(error), code=1)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.training_flagfile_parser)
