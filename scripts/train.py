"""Train a (robust) classifier: `python scripts/train.py --defense=pgd --flagfile=flags/digits.cfg --output_dir=runs/x`.

Flags given after --flagfile override it. Bad flags: one line on stderr, exit code 2, nothing written.
Several workers: run the same command on each with --distribute=multi_worker and its own TF_CONFIG (docs/scaling.md).
"""

from tfadv import cli

cli.quiet_tensorflow()

from absl import app  # noqa: E402

from tfadv import data, experiment  # noqa: E402
from tfadv.config import ConfigError  # noqa: E402

cli.define_train_flags()


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    config = cli.train_config_from_flags()
    try:
        experiment.train(config)
    except (ConfigError, experiment.RunError) as error:
        cli.fail(str(error))
    except data.DataUnavailableError as error:
        cli.fail(str(error), code=1)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
