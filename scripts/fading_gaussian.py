"""Paper 003 §3.1, the fading-Gaussian experiment (Fig. 1-2): l_inf-adversarial accuracy vs eps of the Bayes
classifier, Lemma 1's best linear classifier and linear classifiers trained with ALS, in closed form (Eq. 9 /
Eq. 11) and by Monte Carlo with the optimal perturbation.

  python scripts/fading_gaussian.py --output_dir=runs/fading-gaussian

Writes fading_gaussian.png and fading_gaussian.json into --output_dir and prints a table.
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402

from tfadv import fading_gaussian  # noqa: E402

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


def parse_alphas(values):
    try:
        alphas = [float(value) for value in values]
    except ValueError:
        cli.fail(f"--alphas: expected comma-separated numbers, got {','.join(values)}")
    if not alphas or any(not 0.0 <= alpha < 0.5 for alpha in alphas):
        cli.fail(f"--alphas: each ALS mass must be in [0, 0.5), got {','.join(values) or 'nothing'}")
    return alphas


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    alphas = parse_alphas(FLAGS.alphas)
    for name, minimum in (("d", 1), ("num_train", 1), ("num_test", 1), ("num_eps", 2), ("steps", 1)):
        if FLAGS[name].value < minimum:
            cli.fail(f"--{name}: must be at least {minimum}, got {FLAGS[name].value}")
    if not FLAGS.eps_max > 0:
        cli.fail(f"--eps_max: must be positive, got {FLAGS.eps_max}")
    if not FLAGS.learning_rate > 0:
        cli.fail(f"--learning_rate: must be positive, got {FLAGS.learning_rate}")
    if FLAGS.optimizer not in fading_gaussian.OPTIMIZERS:
        cli.fail(f"--optimizer: must be one of {', '.join(fading_gaussian.OPTIMIZERS)}, got {FLAGS.optimizer}")
    json_path = os.path.join(FLAGS.output_dir, "fading_gaussian.json")
    if os.path.exists(json_path) and not FLAGS.overwrite:
        cli.fail(f"--output_dir={FLAGS.output_dir} already holds fading_gaussian.json; pass --overwrite or "
                 "choose another directory")

    result = fading_gaussian.experiment(
        dimension=FLAGS.d, alphas=alphas, num_train=FLAGS.num_train, num_test=FLAGS.num_test,
        eps_max=FLAGS.eps_max, num_eps=FLAGS.num_eps, steps=FLAGS.steps, learning_rate=FLAGS.learning_rate,
        optimizer=FLAGS.optimizer, seed=FLAGS.seed)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=1)
    fading_gaussian.plot(result, os.path.join(FLAGS.output_dir, "fading_gaussian.png"))
    print(fading_gaussian.format_table(result))
    print(f"wrote {json_path} and fading_gaussian.png")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
