"""Command-line plumbing shared by the scripts: absl flag definitions, one-line errors with exit code 2."""

from __future__ import annotations

import os
import sys

from absl import flags


USAGE_ERROR = 2


def quiet_tensorflow():
    """Keeps TensorFlow's C++ start-up chatter out of the user's terminal (set before TF is imported)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def quiet_logging():
    """TensorFlow's Python INFO/WARNING chatter off; our own progress lines stay."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def fail(message: str, code: int = USAGE_ERROR):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_flags_or_exit(argv):
    """An `app.run(flags_parser=...)` parser: a bad flag is one line on stderr and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(str(error))


def training_flagfile_parser(argv):
    """An `app.run(flags_parser=...)` parser for scripts that define only their own flags but accept a training
    flagfile (e.g. `--flagfile=flags/cifar10.cfg` for the dataset and eps): each `--flagfile=PATH` is replaced,
    in place, by the `--name=value` lines of that file (nested flagfiles followed) for the flags this script
    defines; training-only flags in it are skipped; an unknown name is still an error. Flags after
    `--flagfile` override it, as with absl's own flagfiles."""
    from tfadv import config as config_lib

    defined = set(flags.FLAGS)
    training_names = config_lib.flag_names()
    expanded = [argv[0]]
    for arg in argv[1:]:
        name, equals, value = arg.lstrip("-").partition("=")
        if not arg.startswith("--") or name != "flagfile" or not equals:
            expanded.append(arg)
            continue
        try:
            values = config_lib.read_flag_values(value)
        except OSError as error:
            fail(f"--flagfile: cannot read {value}: {error.strerror or error}")
        except config_lib.ConfigError as error:
            fail(str(error))
        for key, raw in values.items():
            if key in defined:
                expanded.append(f"--{key}={raw}")
            elif key not in training_names:
                fail(f"--flagfile={value}: unknown flag --{key}")
    return parse_flags_or_exit(expanded)


def define_train_flags():
    """The training flags, generated from the run config's fields (`tfadv.config.define_flags`)."""
    from tfadv import config as config_lib

    config_lib.define_flags()


def train_config_from_flags():
    """The TrainConfig of the parsed flags; a malformed value (e.g. a non-integer --lr_decay_epochs entry) is a
    usage error."""
    from tfadv import config as config_lib

    try:
        return config_lib.from_parsed_flags(argv=sys.argv)
    except config_lib.ConfigError as error:
        fail(str(error))
