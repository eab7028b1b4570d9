"""Merges the reports of `evaluate.py --shard=i/n` (all n shards of one evaluation, any order) into the report one
run over all the examples gives (tfadv.evaluation.shards.merge_reports):

    python scripts/merge_reports.py shard0.json shard1.json shard2.json --output=all.json
"""

from tfadv import cli

cli.quiet_tensorflow()
from absl import app, flags as F  # noqa: E402
from tfadv.errors import EvaluationError  # noqa: E402
from tfadv.evaluation import config, pipeline, reports, shards  # noqa: E402

F.DEFINE_string("output", None, "write the merged report as JSON here")
F.DEFINE_string("output_dir", None, "write report.json, report.md and plots/ here")
FLAGS = F.FLAGS


def main(argv):
    paths = argv[1:]
    paths or cli.fail("give the shard reports to merge: merge_reports.py A.json B.json ... --output=ALL.json")
    try:
        config.check_values(output=FLAGS.output, output_dir=FLAGS.output_dir)
        merged = shards.merge_reports(shards.load_reports(paths), paths)
    except EvaluationError as error:
        cli.fail(str(error))
    print(reports.format_table(merged))
    pipeline.write(merged, pipeline.Output(FLAGS.output, FLAGS.output_dir,
                                           model_name=merged.get("model_dir") or "model"))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
