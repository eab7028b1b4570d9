"""Evaluates a SavedModel or run dir under attacks (evaluation.evaluate_model) with the dataset and eps it records, or
--flagfile (a training flagfile), --dataset and --eps (pixel levels); --shard=i/n for one slice of the examples.

The flags are the fields of tfadv.evaluation.config.EvalConfig; the body is tfadv.evaluation.pipeline: the config
validated once, then plan -> run -> write."""

from tfadv import cli

cli.quiet_tensorflow()
from absl import app  # noqa: E402
from tfadv.evaluation import pipeline  # noqa: E402

cli.define_evaluation_flags()

if __name__ == "__main__":
    app.run(pipeline.main, flags_parser=cli.training_flagfile_parser)
