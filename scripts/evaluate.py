"""Evaluate a SavedModel (or a tfadv run dir) under attacks: clean, per-attack and worst-case accuracy.

  python scripts/evaluate.py --model_dir=runs/digits-pgd --attacks=fgsm,pgd20,pgd100,cw20 --output=eval.json

The dataset and eps default to what the run recorded; `--flagfile`, `--dataset` and `--eps` (pixel levels)
override them. `--examples=PATH.npz` (arrays x in [0,1] NHWC and y) replaces the dataset's test split.
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402

from tfadv import data, evaluation, export  # noqa: E402

cli.define_train_flags()  # so that a training flagfile can be passed as it is
flags.DEFINE_string("model_dir", None, "a SavedModel directory or a tfadv run directory")
flags.DEFINE_list("attacks", ["fgsm", "pgd20", "cw20"], "attacks, e.g. fgsm,pgd20,pgd100,cw20,dlr50,pgd20_l2,pgd50_r5")
flags.DEFINE_float("eps_l2", None, "l2 radius in pixel levels (default: 0.5 of the pixel range)")
flags.DEFINE_float("eps_l1", None, "l1 radius in pixel levels (default: 12 in [0,1] units for 32x32x3 images, "
                                    "scaled by the number of input values)")
flags.DEFINE_float("attack_step_size", None, "PGD step size in pixel levels (default: eps/4 for linf, 2.5 eps/steps)")
flags.DEFINE_integer("num_examples", 1000, "evaluate on the first N test examples (-1: all)")
flags.DEFINE_string("examples", None, "an .npz with x (float [0,1], NHWC) and y (int) to evaluate instead")
flags.DEFINE_string("output", None, "write the report as JSON here")
flags.DEFINE_integer("eval_batch_size", 256, "examples per attack batch")
FLAGS = flags.FLAGS


def _input_size(spec):
    height, width, channels = spec.image_shape
    return height * width * channels


def _saved_model_path(path):
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    candidate = os.path.join(path, "saved_model", "1")
    if os.path.exists(os.path.join(candidate, "saved_model.pb")):
        return candidate
    cli.fail(f"--model_dir={path}: no SavedModel there (nor in {candidate})")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    if not FLAGS.model_dir:
        cli.fail("--model_dir is required (a SavedModel or a tfadv run directory)")
    path = _saved_model_path(FLAGS.model_dir)
    metadata = export.read_metadata(path)
    dataset = FLAGS.dataset if FLAGS["dataset"].present or "dataset" not in metadata else metadata["dataset"]
    try:
        spec = data.get_spec(dataset)
    except ValueError as error:
        cli.fail(f"--dataset: {error}")
    if FLAGS["eps"].present or "eps" not in metadata:
        eps = spec.to_fraction(FLAGS.eps)
    else:
        eps = float(metadata["eps"])
    if not 0 <= eps <= 1:
        cli.fail(f"--eps: {FLAGS.eps} is outside the pixel range of {dataset} (0..{spec.pixel_max:g} levels)")
    radii = {
        "linf": eps,
        "l2": spec.to_fraction(FLAGS.eps_l2) if FLAGS.eps_l2 is not None else 0.5,
        "l1": spec.to_fraction(FLAGS.eps_l1) if FLAGS.eps_l1 is not None else 12.0 * _input_size(spec) / 3072,
    }
    step = spec.to_fraction(FLAGS.attack_step_size) if FLAGS.attack_step_size is not None else None
    try:
        specs = [evaluation.parse_attack(name, radii, step) for name in FLAGS.attacks]
    except ValueError as error:
        cli.fail(f"--attacks: {error}")

    if FLAGS.examples:
        try:
            x, y = data.load_examples(FLAGS.examples)
        except (OSError, ValueError) as error:
            cli.fail(f"--examples: {error}")
        source = FLAGS.examples
    else:
        try:
            splits = data.load(dataset, FLAGS.data_dir, 0.0, FLAGS.seed, FLAGS.download)
        except data.DataUnavailableError as error:
            cli.fail(str(error), code=1)
        x, y = data.take(splits.test, FLAGS.num_examples)
        source = f"{dataset} test split"

    logits_fn = export.load_logits_fn(path)
    expected = tuple(logits_fn.input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        cli.fail(f"the examples have shape {tuple(x.shape[1:])} but the model takes {expected}")
    print(f"evaluating {path} on {len(y)} examples of the {source}; eps {eps:.4f} (linf), "
          f"{radii['l2']:.4f} (l2), {radii['l1']:.4f} (l1)")
    report = evaluation.evaluate(logits_fn, x, y, specs, FLAGS.eval_batch_size, log=print)
    report.pop("per_example_robust")
    report.update({"model_dir": FLAGS.model_dir, "dataset": dataset, "source": source, "eps": eps,
                   "eps_l2": radii["l2"], "eps_l1": radii["l1"]})
    print(evaluation.format_table(report))
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"report written to {FLAGS.output}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
