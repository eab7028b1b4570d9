"""Command-line plumbing shared by the scripts: absl flag definitions, one-line errors with exit code 2."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

from absl import flags


USAGE_ERROR = 2

# A line of TensorFlow's C++ logging (absl / glog format): severity letter I, W, E or F, then MMDD, the time, the
# thread id and file:line], e.g. "I0000 00:00:1795800731.795202   32031 port.cc:153] oneDNN custom operations ...".
_CPP_LOG_LINE = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] ")
_ABSL_PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def quiet_tensorflow():
    """Keeps TensorFlow's C++ start-up chatter out of the user's terminal: sets TF_CPP_MIN_LOG_LEVEL=3 unless the
    user set it, and imports TensorFlow with its start-up log lines filtered at that level.

    TF_CPP_MIN_LOG_LEVEL alone is not enough (TF 2.21): the libraries' static initializers log through absl before
    TensorFlow applies the variable ("oneDNN custom operations are on", "Could not find cuda drivers", absl's
    "All log messages before absl::InitializeLog()" line), even when it is set in the shell. So the import runs
    with file descriptor 2 captured, and the captured lines are written back except C++ log lines below the
    level (I = 0, W = 1, E = 2, F = 3) and, at level >= 1, absl's InitializeLog notice. TF_ENABLE_ONEDNN_OPTS is
    left alone (it changes numerics)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    with _filtered_stderr(_min_log_level()):
        import tensorflow  # noqa: F401


def _min_log_level() -> int:
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_cpp_log(text: bytes, level: int) -> bytes:
    """`text` (captured stderr) without the C++ log lines below `level` (and absl's InitializeLog notice when
    level >= 1); every other line is kept as it was."""
    kept = []
    for line in text.splitlines(keepends=True):
        match = _CPP_LOG_LINE.match(line)
        if match and "IWEF".index(match.group(1).decode()) < level:
            continue
        if level >= 1 and line.rstrip(b"\r\n") == _ABSL_PREAMBLE:
            continue
        kept.append(line)
    return b"".join(kept)


@contextlib.contextmanager
def _filtered_stderr(level: int):
    """Captures file descriptor 2 (C++ and Python writes alike) while the block runs; then writes back what
    `filter_cpp_log` keeps. If fd 2 cannot be duplicated, the block runs unfiltered."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = filter_cpp_log(capture.read(), level)
            if kept:
                os.write(2, kept)


def quiet_logging():
    """TensorFlow's Python INFO/WARNING chatter off; our own progress lines stay."""
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def fail(message: str, code: int = USAGE_ERROR):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _command_line_flags(argv, flag_values):
    """(name, value, as typed, flagfile path or None) for each flag of a command line, in order: `--name=value`,
    `--name value`, `--name` / `--noname` of a boolean, `--flagfile=PATH` / `--flagfile PATH`; stops at `--`."""
    items, i = [], 1
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            continue
        name, equals, value = arg.lstrip("-").partition("=")
        flag = flag_values[name] if name in flag_values else None
        if not equals:
            if name == "flagfile" or (flag is not None and not flag.boolean):
                if i >= len(argv):
                    continue
                value, i = argv[i], i + 1
                arg = f"--{name}={value}"
            elif flag is None and name.startswith("no") and name[2:] in flag_values:
                name, value = name[2:], "false"
            else:
                value = "true"
        items.append((name, value, arg, value if name == "flagfile" else None))
    return items


def _same_value(flag, first: str, second: str) -> bool:
    if first == second:
        return True
    try:
        parser = flag.parser
        return parser.parse(first) == parser.parse(second)
    except Exception:  # an unknown flag or a malformed value: the parser reports it
        return False


def overridden_flags(argv, flag_values=None) -> list:
    """["--lr=0.1 is overridden by --flagfile=F (which sets --lr=0.05)", ...]: each flag given before a
    `--flagfile` that sets it to another value (absl, like `training_flagfile_parser`, lets the later one win,
    so the typed value would be accepted and not applied). Nothing when the flag comes after the flagfile (it
    wins) or the values agree. Every `--flagfile` of the command line is read as absl reads it
    (`config.read_flag_values`): ConfigError for one that includes itself, is not UTF-8 text or holds a line
    that is no flag; OSError for one that cannot be read. `flag_values`: the defined flags (default: absl's FLAGS)."""
    from tfadv import config as config_lib

    flag_values = flags.FLAGS if flag_values is None else flag_values
    given = {}  # name -> (value, as typed) of the latest command-line setting
    overridden = {}  # name -> (as typed, flagfile, its value), when a flagfile replaced the command line's value
    for name, value, typed, flagfile in _command_line_flags(argv, flag_values):
        if flagfile is None:
            given[name] = (value, typed)
            overridden.pop(name, None)
            continue
        values = config_lib.read_flag_values(flagfile)
        for key, raw in values.items():
            if key in given and key in flag_values and not _same_value(flag_values[key], given[key][0], raw):
                overridden[key] = (given.pop(key)[1], flagfile, raw)
    return [f"{typed} is overridden by --flagfile={flagfile} (which sets --{key}={raw})"
            for key, (typed, flagfile, raw) in overridden.items()]


def refuse_overridden_flags(argv, flag_values=None):
    """Exit 2 with one line for a flagfile of the command line that cannot be read, includes itself, is not text
    or holds a line that is no flag, and for flags given before a `--flagfile` that overrides them (accepted,
    not applied): all of them named on the line, with the fix (put them after --flagfile)."""
    from tfadv import config as config_lib

    try:
        overridden = overridden_flags(argv, flag_values)
    except config_lib.ConfigError as error:
        fail(str(error))
    except OSError as error:
        fail(f"--flagfile: cannot read {error.filename}: {error.strerror or error}")
    if overridden:
        fail(f"{'; '.join(overridden)}: the flagfile would win; put flags after --flagfile")


def parse_flags_or_exit(argv):
    """An `app.run(flags_parser=...)` parser: a bad flag is one line on stderr and exit code 2, and so is a flag
    given before a `--flagfile` that overrides it or a flagfile absl would ignore or crash on
    (`refuse_overridden_flags`). Asking for help is exit 0. With the training flags defined (train.py), each
    `--flagfile=PRESET` is followed by the preset's per-method flagfile for --defense (`config.training_argv`)."""
    if not any(arg in HELP_FLAGS for arg in argv[1:]):
        argv = _with_method_flagfiles(argv)
        refuse_overridden_flags(argv)
    return _parse(argv)


def _with_method_flagfiles(argv):
    from tfadv import config as config_lib

    if not config_lib.flag_names() - {"flagfile"} <= set(flags.FLAGS):
        return argv
    try:
        return config_lib.training_argv(argv, flags.FLAGS)
    except config_lib.ConfigError as error:
        fail(str(error))
    except OSError as error:
        fail(f"--flagfile: cannot read {error.filename}: {error.strerror or error}")


HELP_FLAGS = ("-h", "-?", "--help", "--helpshort", "--helpfull", "--helpxml")


def _parse(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(str(error))
    except SystemExit:
        # absl prints the help asked for and exits 1; asking for help is not an error
        if any(arg in HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)
        raise


def training_flagfile_parser(argv):
    """An `app.run(flags_parser=...)` parser for scripts that define only their own flags but accept a training
    flagfile (e.g. `--flagfile=flags/cifar10.cfg` for the dataset and eps): each `--flagfile=PATH` is replaced,
    in place, by the `--name=value` lines of that file (nested flagfiles followed) for the flags this script
    defines; training-only flags in it are skipped; an unknown name is still an error. Flags after
    `--flagfile` override it, as with absl's own flagfiles; a flag before it that it overrides is refused, and so is
    a flagfile that includes itself, is not text or holds a line that is no flag (`refuse_overridden_flags`)."""
    from tfadv import config as config_lib

    if not any(arg in HELP_FLAGS for arg in argv[1:]):
        refuse_overridden_flags(argv)
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
    return _parse(expanded)


def define_train_flags():
    """The training flags, generated from the run config's fields (`tfadv.config.define_flags`), declared key
    flags of the calling module, so that the script's short `--help` lists them with their meaning."""
    from tfadv import config as config_lib

    config_lib.define_flags()
    caller = sys._getframe(1).f_globals.get("__name__", "__main__")
    module = sys.argv[0] if caller == "__main__" else caller  # absl names the main module by sys.argv[0]
    for name in sorted(config_lib.flag_names() - {"flagfile"}):
        flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])


def define_evaluation_flags():
    """evaluate.py's flags, generated from the evaluation config's fields (`tfadv.evaluation.config.define_flags`),
    declared key flags of the calling module (its short `--help` lists them)."""
    from tfadv.evaluation import config as evaluation_config

    names = evaluation_config.define_flags()
    caller = sys._getframe(1).f_globals.get("__name__", "__main__")
    module = sys.argv[0] if caller == "__main__" else caller  # absl names the main module by sys.argv[0]
    for name in names:
        flags.FLAGS.register_key_flag_for_module(module, flags.FLAGS[name])


def train_config_from_flags():
    """The TrainConfig of the parsed flags; a malformed value (e.g. a non-integer --lr_decay_epochs entry) is a
    usage error."""
    from tfadv import config as config_lib

    try:
        return config_lib.from_parsed_flags(argv=sys.argv)
    except config_lib.ConfigError as error:
        fail(str(error))
