"""The one usage-error type: a value a user gave (a flag, or an argument of the Python API) is wrong, and the
message names it and says what is allowed. The scripts turn one into a single line and exit code 2.

`ConfigError` is a bad flag of the run config (its message starts with `--flag:`, `.flag` names it);
`EvaluationError` a bad argument of an evaluation (`tfadv.evaluation.evaluate_model`, `evaluate.py`). Both are
`UsageError`s, so `except UsageError` catches every refusal; both are `ValueError`s, as before."""


class UsageError(ValueError):
    """A value a user gave is wrong; the message names it and what is allowed."""


class ConfigError(UsageError):
    """A bad flag value; the message names the flag and what is allowed."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


class RunError(RuntimeError):
    """A run cannot start or go on (e.g. a finished output_dir without --overwrite, a cluster whose workers never
    came); the message is one line, and train.py prints it with exit code 2."""


class EvaluationError(UsageError):
    """A bad argument of `evaluate_model`; the message names the evaluate.py flag and what is allowed."""
