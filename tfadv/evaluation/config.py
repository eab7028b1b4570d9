"""The configuration of an evaluation: one dataclass field per `scripts/evaluate.py` flag (the flags are generated
from the fields, names, defaults and help texts as before), validated once, before any model is loaded or any
file is written.

    config = EvalConfig(model_dir="runs/digits-pgd", suite=["autoattack"], num_examples=200).validate()
    report = pipeline.evaluate(config)          # plan -> run -> write

A bad value is an EvaluationError naming the flag (`--eps: ...`) when the config came from the command line
(`from_parsed_flags`), and naming the argument (`eps: ...`) when it was built in Python. What needs the model or
the data (the budget, the attacks' class counts, the examples) is checked where the plan reads them
(`tfadv.evaluation.pipeline.plan`), also once.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import List, Optional

from tfadv import data
from tfadv.errors import EvaluationError
from tfadv.evaluation import shards, specs as specs_lib

DIAGNOSTICS = ("eps_l", "gradients", "lipschitz", "linearity", "landscape", "confidence", "sweep")
COSSAT_PROTOCOLS = {"white_box": ["white_box"], "half_white_box": ["half_white_box"], "aa_dispatch": ["aa_dispatch"],
                    "both": ["white_box", "half_white_box"], "all": ["white_box", "half_white_box", "aa_dispatch"]}
DEFAULT_ATTACKS = ("fgsm", "pgd20", "cw20")
NUM_EXAMPLES = 1000  # --num_examples when not given
MAX_SEED = 2 ** 31 - 1
ATTACK_PRECISIONS = ("float32", "bfloat16")
FLAGS_ORIGIN, PYTHON_ORIGIN = "flags", "python"


def _field(default, kind: str, help_text: str, flag_default=dataclasses.MISSING):
    """A config field that is the flag `kind` (string, list, float, integer, boolean) of the same name. A field
    whose value None means "not given" (--attacks, --num_examples, --eot_iter) shows its effective default as
    `flag_default`: the flag's default, read back as None when the flag is absent."""
    metadata = {"kind": kind, "help": help_text}
    if flag_default is not dataclasses.MISSING:
        metadata["flag_default"] = flag_default
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class EvalConfig:
    """What `scripts/evaluate.py` evaluates and how; each field is the flag of the same name (help: `--help`)."""

    model_dir: Optional[str] = _field(None, "string", "a SavedModel directory or a tfadv run directory")
    attacks: Optional[List[str]] = _field(
        None, "list", "attacks, e.g. fgsm,pgd20,cw20,dlr50,pgd20_l2,pgd50_r5,apgd_t,transfer_pgd20 (with "
                      "--source_model); with --suite only when given (then added to it)", list(DEFAULT_ATTACKS))
    suite: List[str] = _field([], "list", f"named attack suites, comma-separated: {', '.join(specs_lib.SUITES)}")
    source_model: Optional[str] = _field(None, "string", "transfer attacks: craft on this SavedModel / run dir")
    audit: Optional[bool] = _field(None, "boolean", "run the gradient-masking audit (default: yes, except under "
                                                    "--shard)")
    audit_square_queries: int = _field(1000, "integer", "queries of the audit's Square probe if no black-box attack "
                                                        "ran")
    diagnostics: List[str] = _field([], "list", f"diagnostics: {', '.join(DIAGNOSTICS)}")
    plots_dir: Optional[str] = _field(None, "string", "where diagnostic PNGs go (default: next to --output, or "
                                                      "./eval_plots)")
    cossat_protocol: Optional[str] = _field(None, "string", f"for a Co-SSAT SavedModel: "
                                                            f"{', '.join(COSSAT_PROTOCOLS)}")
    dataset: Optional[str] = _field(None, "string", f"the model's dataset ({', '.join(data.DATASETS)}; default: its "
                                                    f"recorded one)")
    eps: Optional[float] = _field(None, "float", "l-inf radius in the dataset's pixel levels (default: the model's "
                                                 "recorded eps)")
    eps_l2: Optional[float] = _field(None, "float", "l2 radius in pixel levels (default: 0.5 of the pixel range)")
    eps_l1: Optional[float] = _field(None, "float", "l1 radius in pixel levels (default: 12 in [0,1] units for "
                                                    "32x32x3, scaled by size)")
    attack_step_size: Optional[float] = _field(None, "float", "PGD step size in pixel levels (default: eps/4 for "
                                                              "linf, 2.5 eps/steps)")
    num_examples: Optional[int] = _field(None, "integer", "evaluate on the first N test examples (-1: all)",
                                         NUM_EXAMPLES)
    examples: Optional[str] = _field(None, "string", "an .npz with x (float [0,1], NHWC) and y (int) to evaluate "
                                                     "instead")
    output: Optional[str] = _field(None, "string", "write the report as JSON here")
    output_dir: Optional[str] = _field(None, "string", "write report.json, report.md and plots/ here")
    save_adversarial: Optional[str] = _field(None, "string", "write each attack's adversarial images, example "
                                                             "indices and verdicts (broken, valid) to this .npz (its "
                                                             "directory must exist)")
    progress: bool = _field(True, "boolean", "show a progress bar with ETA for each attack (stderr)")
    eval_batch_size: int = _field(256, "integer", "examples per attack batch")
    eot_iter: Optional[int] = _field(None, "integer", "APGD attacks average each step's gradient over N passes (EOT)",
                                     1)
    seed: int = _field(0, "integer", "random seed of the attacks")
    shard: Optional[str] = _field(None, "string", "i/n: evaluate the i-th (0-based) of n slices of the examples "
                                                  "(merge_reports.py)")
    jit_compile: bool = _field(False, "boolean", "compile the attacks with XLA")
    attack_precision: str = _field("float32", "string", f"what the attacks' iterations compute in: "
                                                        f"{', '.join(ATTACK_PRECISIONS)} (a bfloat16 copy of the "
                                                        f"model; needs a run directory or a keras.Model); the clean "
                                                        f"pass and every success are the float32 model's")
    data_dir: Optional[str] = _field(None, "string", "tensorflow-datasets directory")
    download: bool = _field(False, "boolean", "let tensorflow-datasets download a missing dataset")
    # not flags: how errors name a value (FLAGS_ORIGIN: --flag; PYTHON_ORIGIN: the argument)
    origin: str = dataclasses.field(default=PYTHON_ORIGIN, compare=False, repr=False)

    def error(self, flag: str, message: str) -> EvaluationError:
        """The EvaluationError for a bad `flag` (a field name): `--flag: message` from the command line, `flag:
        message` from Python."""
        return EvaluationError(f"{'--' if self.origin == FLAGS_ORIGIN else ''}{flag}: {message}")

    def named(self, error: EvaluationError) -> EvaluationError:
        """`error` (raised as "--flag: ...") with the value named as this config's origin names it."""
        if self.origin == FLAGS_ORIGIN:
            return error
        head, colon, rest = str(error).partition(":")  # "--eps: ...", "--attacks/--suite: ...", "--model_dir is ..."
        if not head.startswith("--"):
            return error
        return EvaluationError(re.sub(r"--(\w+)", r"\1", head) + colon + rest)

    def validate(self) -> "EvalConfig":
        """This config, or an EvaluationError for its first bad value: sizes, counts, the seed, where the report
        goes (touching nothing), suites, diagnostics and Co-SSAT protocols by name, and --shard with what cannot be
        merged from shards. Loads no model and no data: a bad value costs no attack and leaves no file."""
        if self.attacks is not None and not self.attacks and not self.suite:
            raise self.error("attacks", "empty; name at least one attack (e.g. --attacks=pgd20) or a --suite: an "
                                        "evaluation without attacks measures no robustness")
        if self.examples and self.num_examples is not None:
            raise self.error("num_examples", "not used with --examples (every example of the file is evaluated); "
                                             "drop one of them")
        try:
            check_values(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in _CHECKED})
        except EvaluationError as error:
            raise self.named(error) from None
        bad = [name for name in self.suite if name not in specs_lib.SUITES]
        if bad:
            raise self.error("suite", f"unknown {', '.join(map(repr, bad))}; valid: {', '.join(specs_lib.SUITES)}")
        unknown = [d for d in self.diagnostics if d not in DIAGNOSTICS]
        if unknown:
            raise self.error("diagnostics", f"unknown {unknown}; valid: {', '.join(DIAGNOSTICS)}")
        if self.cossat_protocol is not None and self.cossat_protocol not in COSSAT_PROTOCOLS:
            raise self.error("cossat_protocol", f"unknown {self.cossat_protocol!r}; valid: "
                                                f"{', '.join(COSSAT_PROTOCOLS)}")
        if self.attack_precision not in ATTACK_PRECISIONS:
            raise self.error("attack_precision", f"unknown {self.attack_precision!r}; valid: "
                                                 f"{', '.join(ATTACK_PRECISIONS)}")
        if self.attack_precision != "float32" and self.cossat_protocol:
            raise self.error("attack_precision", "the Co-SSAT protocols attack the SavedModel's outputs in float32; "
                                                 "run them with --attack_precision=float32")
        try:
            parsed = shards.parse_shard(self.shard)
        except EvaluationError as error:
            raise self.named(error) from None
        self._parsed_shard = parsed
        self._shard_total = None  # the example count the shard was checked against here
        if parsed is not None:
            total = self.num_examples if self.num_examples is not None else (None if self.examples else NUM_EXAMPLES)
            if total not in (None, -1):  # before the model or the data is read
                shards.check_shard_size(parsed, total)
                self._shard_total = total
            why = "cannot be merged from shards (it needs every example at once); run it without --shard"
            if self.audit:
                raise self.error("audit", f"the gradient-masking audit {why} (under --shard it is skipped unless asked "
                                          f"for)")
            if self.diagnostics:
                raise self.error("diagnostics", f"{', '.join(self.diagnostics)} {why}")
            if self.cossat_protocol:
                raise self.error("cossat_protocol", f"the Co-SSAT protocols {why}")
        return self

    @property
    def parsed_shard(self):
        """(index, count) of `shard` as `validate` read it (None without one)."""
        return self._parsed_shard

    @property
    def shard_total(self) -> Optional[int]:
        """The example count (--num_examples) `validate` checked the shard against; None if it could not."""
        return self._shard_total


_CHECKED = ("eps", "eps_l2", "eps_l1", "attack_step_size", "num_examples", "eval_batch_size", "eot_iter",
            "audit_square_queries", "seed", "output", "output_dir", "plots_dir", "save_adversarial")


def check_values(*, eps=None, eps_l2=None, eps_l1=None, attack_step_size=None, num_examples=None,
                 eval_batch_size=None, eot_iter=None, audit_square_queries=None, seed=None, output=None,
                 output_dir=None, plots_dir=None, save_adversarial=None):
    """EvaluationError ("--flag: ...") for the first bad value; None means "not given". Touches no file."""
    for flag, value in (("eps", eps), ("eps_l2", eps_l2), ("eps_l1", eps_l1)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise EvaluationError(f"--{flag}: must be a finite, non-negative size in pixel levels, got {value}")
    if attack_step_size is not None and not (math.isfinite(attack_step_size) and attack_step_size > 0):
        raise EvaluationError(f"--attack_step_size: must be a finite, positive size in pixel levels, got "
                              f"{attack_step_size} (a step of 0 or less does not attack: it would report clean "
                              f"accuracy as robust)")
    if num_examples is not None and (num_examples == 0 or num_examples < -1):
        raise EvaluationError(f"--num_examples: must be a positive number of examples or -1 (all), got {num_examples}")
    for flag, value, least in (("eval_batch_size", eval_batch_size, 1), ("eot_iter", eot_iter, 1),
                               ("audit_square_queries", audit_square_queries, 0)):  # 0 queries: no Square probe
        if value is not None and (isinstance(value, bool) or int(value) != value or value < least):
            raise EvaluationError(f"--{flag}: must be an integer >= {least}, got {value}")
    if seed is not None and (isinstance(seed, bool) or int(seed) != seed or not 0 <= seed <= MAX_SEED):
        raise EvaluationError(f"--seed: must be an integer in 0..{MAX_SEED} (2**31 - 1), got {seed}")
    for flag, value, directory in (("output", output, False), ("output_dir", output_dir, True),
                                   ("plots_dir", plots_dir, True)):
        reason = unwritable_reason(value, directory) if value else None
        if reason:
            raise EvaluationError(f"--{flag}: {reason}")
    reason = save_path_reason(save_adversarial) if save_adversarial else None
    if reason:
        raise EvaluationError(f"--save_adversarial: {reason}")


def unwritable_reason(path: str, directory: bool = True) -> Optional[str]:
    """Why `path` cannot become a directory (`directory`) or a file written by tfadv; None if it can. Touches
    nothing: the nearest existing ancestor must be a writable directory."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if directory and not os.path.isdir(path):
            return f"{path} is an existing file, not a directory"
        if not directory and os.path.isdir(path):
            return f"{path} is an existing directory, not a file"
        if not os.access(path if directory else os.path.dirname(path), os.W_OK | os.X_OK):
            return f"{path} is not writable"
        return None
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot create {path}: {parent} is a file, not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not writable"
    return None


def save_path_reason(path: str) -> Optional[str]:
    """Why `path` cannot be the .npz of the adversarial examples; None if it can. Its directory must exist and be
    writable (unlike --output, no directory is created: the file is written after every attack, so a typo must
    be caught before any runs). Touches nothing."""
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        return f"{path} is a directory; give a file path such as {os.path.join(path, 'adversarial.npz')}"
    if not os.path.isdir(directory):
        return f"the directory {directory} does not exist" if not os.path.exists(directory) else \
            f"{directory} is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{path} is not writable"
    return None


# ----------------------------------------------------------------------------------------------------------
# flags: generated from the fields

def flag_fields() -> list:
    """The fields that are flags, in definition order."""
    return [f for f in dataclasses.fields(EvalConfig) if "kind" in f.metadata]


def define_flags(flag_values=None):
    """Defines evaluate.py's flags, one per EvalConfig field (names, defaults and help texts as before)."""
    from absl import flags

    flag_values = flag_values if flag_values is not None else flags.FLAGS
    define = {"string": flags.DEFINE_string, "list": flags.DEFINE_list, "float": flags.DEFINE_float,
              "integer": flags.DEFINE_integer, "boolean": flags.DEFINE_boolean}
    for field in flag_fields():
        default = field.metadata.get("flag_default", field.default if field.default is not dataclasses.MISSING
                                     else field.default_factory())
        define[field.metadata["kind"]](field.name, default, field.metadata["help"], flag_values=flag_values)
    return [field.name for field in flag_fields()]


def from_parsed_flags(flag_values=None) -> EvalConfig:
    """The EvalConfig of parsed absl flags (not validated: call `validate`); a flag with a "not given" default
    (--attacks, --num_examples, --eot_iter) is None unless it was given."""
    from absl import flags

    flag_values = flag_values if flag_values is not None else flags.FLAGS
    values = {}
    for field in flag_fields():
        flag = flag_values[field.name]
        absent = "flag_default" in field.metadata and not flag.present
        values[field.name] = None if absent else flag.value
    return EvalConfig(**values, origin=FLAGS_ORIGIN)
