"""Paper 003 §3.1, the fading-Gaussian experiment (Fig. 1-2): l_inf-adversarial accuracy vs eps of the Bayes
classifier, Lemma 1's best linear classifier and linear classifiers trained with ALS, in closed form (Eq. 9 /
Eq. 11) and by Monte Carlo with the optimal perturbation.

  python scripts/fading_gaussian.py --output_dir=runs/fading-gaussian

Writes fading_gaussian.png and fading_gaussian.json into --output_dir and prints a table (`tfadv.studies.fading`).
"""

from tfadv import cli

cli.quiet_tensorflow()

from absl import app, flags  # noqa: E402

from tfadv import fading_gaussian  # noqa: E402
from tfadv.errors import UsageError  # noqa: E402
from tfadv.studies import fading  # noqa: E402

flags.DEFINE_integer("d", 10, "number of features d (sigma_i = 1 - (i-1)/d, mu_i = sigma_i^2)")
flags.DEFINE_list("alphas", ["0.005", "0.1", "0.4"], "ALS smoothing masses, each in [0, 0.5) (0 = plain "
                  "cross-entropy)")
flags.DEFINE_integer("num_train", 10000, "training samples for the ALS classifiers")
flags.DEFINE_integer("num_test", 100000, "Monte-Carlo samples")
flags.DEFINE_float("eps_max", 0.6, "largest l_inf attack size")
flags.DEFINE_integer("num_eps", 13, "attack sizes in [0, eps_max] for the table and the Monte-Carlo points")
flags.DEFINE_integer("steps", 500, "full-batch training steps per ALS classifier")
flags.DEFINE_float("learning_rate", 0.05, "learning rate of the ALS training")
flags.DEFINE_string("optimizer", "adam", f"optimizer of the ALS training: {', '.join(fading_gaussian.OPTIMIZERS)} "
                    "(sgd with few steps = early stopping)")
flags.DEFINE_integer("seed", 0, "seed of the training samples (the Monte-Carlo samples use seed + 1)")
flags.DEFINE_string("output_dir", None, "where fading_gaussian.png and fading_gaussian.json go")
flags.DEFINE_boolean("overwrite", False, "replace an existing fading_gaussian.json in --output_dir")
flags.mark_flag_as_required("output_dir")
FLAGS = flags.FLAGS
OPTIONS = ("d", "num_train", "num_test", "eps_max", "num_eps", "steps", "learning_rate", "optimizer", "seed")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    try:
        fading.write(FLAGS.output_dir, FLAGS.overwrite, FLAGS.alphas, **{name: FLAGS[name].value for name in OPTIONS})
    except UsageError as error:
        cli.fail(str(error))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
