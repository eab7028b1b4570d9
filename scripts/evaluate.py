"""Evaluates a SavedModel or run dir under attacks (evaluation.evaluate_model) with the dataset and eps it records, or
--flagfile (a training flagfile), --dataset and --eps (pixel levels); --shard=i/n for one slice of the examples."""

from tfadv import cli

cli.quiet_tensorflow()
from absl import app, flags as F  # noqa: E402
from tfadv import data, evaluation, export, runs  # noqa: E402
from tfadv.evaluation import api  # noqa: E402

F.DEFINE_string("model_dir", None, "a SavedModel directory or a tfadv run directory")
F.DEFINE_list("attacks", list(api.DEFAULT_ATTACKS), "attacks, e.g. fgsm,pgd20,cw20,dlr50,pgd20_l2,pgd50_r5,apgd_t,"
              "transfer_pgd20 (with --source_model); with --suite only when given (then added to it)")
F.DEFINE_list("suite", [], f"named attack suites, comma-separated: {', '.join(evaluation.SUITES)}")
F.DEFINE_string("source_model", None, "transfer attacks: craft on this SavedModel / run dir")
F.DEFINE_boolean("audit", None, "run the gradient-masking audit (default: yes, except under --shard)")
F.DEFINE_integer("audit_square_queries", 1000, "queries of the audit's Square probe if no black-box attack ran")
F.DEFINE_list("diagnostics", [], f"diagnostics: {', '.join(api.DIAGNOSTICS)}")
F.DEFINE_string("plots_dir", None, "where diagnostic PNGs go (default: next to --output, or ./eval_plots)")
F.DEFINE_string("cossat_protocol", None, f"for a Co-SSAT SavedModel: {', '.join(api.COSSAT_PROTOCOLS)}")
F.DEFINE_string("dataset", None, f"the model's dataset ({', '.join(data.DATASETS)}; default: its recorded one)")
F.DEFINE_float("eps", None, "l-inf radius in the dataset's pixel levels (default: the model's recorded eps)")
F.DEFINE_float("eps_l2", None, "l2 radius in pixel levels (default: 0.5 of the pixel range)")
F.DEFINE_float("eps_l1", None, "l1 radius in pixel levels (default: 12 in [0,1] units for 32x32x3, scaled by size)")
F.DEFINE_float("attack_step_size", None, "PGD step size in pixel levels (default: eps/4 for linf, 2.5 eps/steps)")
F.DEFINE_integer("num_examples", 1000, "evaluate on the first N test examples (-1: all)")
F.DEFINE_string("examples", None, "an .npz with x (float [0,1], NHWC) and y (int) to evaluate instead")
F.DEFINE_string("output", None, "write the report as JSON here")
F.DEFINE_string("output_dir", None, "write report.json, report.md and plots/ here")
F.DEFINE_string("save_adversarial", None, "write each attack's adversarial images, example indices and verdicts "
                "(broken, valid) to this .npz (its directory must exist)")
F.DEFINE_boolean("progress", True, "show a progress bar with ETA for each attack (stderr)")
F.DEFINE_integer("eval_batch_size", 256, "examples per attack batch")
F.DEFINE_integer("eot_iter", 1, "APGD attacks average each step's gradient over N passes (EOT)")
F.DEFINE_integer("seed", 0, "random seed of the attacks")
F.DEFINE_string("shard", None, "i/n: evaluate the i-th (0-based) of n slices of the examples (merge_reports.py)")
F.DEFINE_boolean("jit_compile", False, "compile the attacks with XLA")
F.DEFINE_string("data_dir", None, "tensorflow-datasets directory")
F.DEFINE_boolean("download", False, "let tensorflow-datasets download a missing dataset")
FLAGS = F.FLAGS
CHECKED = ("num_examples", "eot_iter", "seed", "audit", "audit_square_queries", "diagnostics", "cossat_protocol",
           "output", "output_dir", "plots_dir", "shard", "save_adversarial")
PASSED = CHECKED[2:] + ("progress", "jit_compile")  # evaluate_model's arguments of the same names


def _examples(spec=None):  # (x, y, where from): --examples, else the first --num_examples of spec's test split
    try:
        if spec is None:
            return (*data.load_examples(FLAGS.examples), FLAGS.examples)
        return (*data.take(data.load(spec.name, FLAGS.data_dir, 0.0, FLAGS.download).test,
                           FLAGS.num_examples), f"{spec.name} test split")
    except (OSError, ValueError, data.DataUnavailableError) as error:  # a dataset that is not there: exit code 1
        cli.fail(str(error) if spec else f"--examples: {error}", code=1 if spec else cli.USAGE_ERROR)


def main(argv):
    len(argv) > 1 and cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    path = runs.find_saved_model(FLAGS.model_dir or "") or cli.fail(
        f"--model_dir={FLAGS.model_dir}: no SavedModel there" if FLAGS.model_dir else "--model_dir is required")
    if FLAGS["attacks"].present and not FLAGS.attacks and not FLAGS.suite:
        cli.fail("--attacks: empty; name at least one attack (e.g. --attacks=pgd20) or a --suite: an evaluation "
                 "without attacks measures no robustness")
    if FLAGS.examples and FLAGS["num_examples"].present:
        cli.fail("--num_examples: not used with --examples (every example of the file is evaluated); drop one of them")
    try:  # every flag first: no model loaded, no attack run, no file touched for a bad one
        api.check_arguments(batch_size=FLAGS.eval_batch_size, **{k: FLAGS[k].value for k in CHECKED})
        given = _examples() if FLAGS.examples else None
        spec, budget = api.evaluation_budget(export.read_metadata(path), FLAGS.dataset, FLAGS.eps, FLAGS.eps_l2,
                                             FLAGS.eps_l1, FLAGS.attack_step_size, given and given[0].shape[1:])
        source_fn = api.load_model(FLAGS.source_model, unchecked=FLAGS.jit_compile)[0] if FLAGS.source_model else None
        specs = api.resolve_attacks(FLAGS.attacks if FLAGS["attacks"].present else None, FLAGS.suite, budget.radii(),
                                    budget.fraction("attack_step_size"), source_fn,
                                    FLAGS.eot_iter if FLAGS["eot_iter"].present else None)
        api.check_options(FLAGS.diagnostics, FLAGS.cossat_protocol)
        x, y, source = given or _examples(spec)
        fields = {"model_dir": FLAGS.model_dir, "dataset": spec.name, "source": source}
        evaluation.evaluate_model(path, x, y, specs, suite=FLAGS.suite, budget=budget, batch_size=FLAGS.eval_batch_size,
                                  model_name=FLAGS.model_dir, examples_source=source, report_fields=fields,
                                  **{k: FLAGS[k].value for k in PASSED})
    except api.EvaluationError as error:
        cli.fail(str(error))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.training_flagfile_parser)
