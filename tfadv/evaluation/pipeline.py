"""One evaluation path: `plan(config)` decides everything once, `run(plan)` executes it, `write(report, output)`
writes the report files. `scripts/evaluate.py` is its flags plus `main`; `tfadv.evaluation.evaluate_model` (the
Python API) builds the same EvalConfig and takes the same path.

    plan(config)   the config validated (once); the model and its metadata; the budget (pixel levels -> fractions,
                   `tfadv.config.budget`); the AttackSpecs, built directly (a name typed is parsed once, AutoAttack
                   and the transfer attack are built from their fields); the examples, checked once; the shard;
                   whether the audit, which diagnostics and which Co-SSAT protocols run; where the files go.
    run(plan)      the runner (tfadv.evaluation.Evaluator) over the examples or the shard, then the audit, the
                   diagnostics and the Co-SSAT protocols the plan asked for: the report dict.
    write(report, output)   report.json / --output, report.md and plots/robust_accuracy.png.
"""

from __future__ import annotations

import dataclasses
import json
import math
import contextlib
import os
import re
from typing import Callable, Dict, Optional, Sequence

from tfadv import runs
from tfadv.errors import EvaluationError
from tfadv.evaluation import config as config_lib, reports, runner, shards, specs as specs_lib

TRANSFER_ATTACK = "transfer_pgd20"  # what a suite adds when a source model is given: PGD-20 crafted on it
CHANCE_MARGIN = 0.05  # clean accuracy within 5 points of chance: the model does not know these labels


class ExamplesUnavailable(Exception):
    """The dataset's test split cannot be read (not downloaded, no network): evaluate.py exits with code 1."""


@dataclasses.dataclass
class Output:
    """Where the report goes: `output` (JSON), `output_dir` (report.json, report.md, plots/), `plots` (diagnostic
    and chart PNGs); `model_name` titles the chart and report.md."""

    output: Optional[str] = None
    output_dir: Optional[str] = None
    plots: Optional[str] = None
    model_name: str = "model"


@dataclasses.dataclass
class Plan:
    """Everything an evaluation does, decided once by `plan`."""

    config: config_lib.EvalConfig
    logits_fn: Callable
    shown: str  # the model as the log names it
    x: object
    y: object
    examples_source: str
    num_classes: int
    budget: object  # a tfadv.config.Budget or {norm: radius}
    radii: Dict[str, float]
    specs: list
    shard: Optional[tuple]
    audit: bool
    diagnostics: list
    cossat: list  # Co-SSAT protocol names
    outputs_fn: Optional[Callable]
    output: Output
    report_fields: dict
    log: Optional[Callable]
    attack_logits_fn: Optional[Callable] = None  # what the attacks iterate on (--attack_precision); None: logits_fn

    def say(self, *args):
        if self.log:
            self.log(*args)


def plan(config: config_lib.EvalConfig, *, model=None, examples=None, budget=None, attacks=None,
         step_size: Optional[float] = None, source=None, log: Optional[Callable] = print,
         model_name: Optional[str] = None, examples_source: Optional[str] = None,
         report_fields: Optional[dict] = None) -> Plan:
    """The Plan of `config` (validated here, once). From Python, objects replace what the config would read from
    files: `model` (a keras.Model, a logits_fn or a path) for `config.model_dir`, `examples` ((x, y)) for the
    dataset's test split or `config.examples`, `budget` (a tfadv.config.Budget or {norm: radius}) for the
    model's recorded one, `attacks` (AttackSpecs) for `config.attacks`, `step_size` (a fraction) for
    `config.attack_step_size`, `source` (a model) for `config.source_model`. EvaluationError before any attack
    runs or any file is written."""
    config.validate()
    try:
        return _plan(config, model, examples, budget, attacks, step_size, source, log, model_name, examples_source,
                     report_fields)
    except EvaluationError as error:
        raise config.named(error) from None


def _plan(config, model, examples, budget, attacks, step_size, source, log, model_name, examples_source,
          report_fields) -> Plan:
    import numpy as np

    say = log or (lambda *_: None)
    from_files = model is None
    if from_files:  # evaluate.py: the model, its recorded dataset and budget, the examples from files
        model = runs.find_saved_model(config.model_dir or "")
        if model is None:
            raise EvaluationError(f"--model_dir={config.model_dir}: no SavedModel there" if config.model_dir
                                  else "--model_dir is required")
    elif budget is None:
        radii_of(budget)  # a model object records no budget
    if examples is None and config.examples:
        examples = _read_examples(config.examples)
        examples_source = config.examples
    if budget is None:
        from tfadv import export

        spec, budget = budget_of(export.read_metadata(model) if isinstance(model, str) else {}, config.dataset,
                                 config.eps, config.eps_l2, config.eps_l1, config.attack_step_size,
                                 examples and np.shape(examples[0])[1:])
        report_fields = {"model_dir": config.model_dir, "dataset": spec.name, **(report_fields or {})}
    else:
        spec = None
    radii = radii_of(budget)
    if step_size is None and hasattr(budget, "fraction"):
        step_size = budget.fraction("attack_step_size")
    if source is None and config.source_model:
        source = config.source_model
    source_fn = None if source is None else load_model(source, unchecked=config.jit_compile)[0]
    if attacks and all(isinstance(a, specs_lib.AttackSpec) for a in attacks):
        specs = list(attacks)  # already built
    else:
        specs = attack_specs(attacks if attacks is not None else config.attacks, config.suite, radii, step_size,
                             source_fn, config.eot_iter, log)
    if examples is None:
        examples = _split_examples(spec, config)
        examples_source = f"{spec.name} test split"
        checked = False
    else:
        checked = examples_source == config.examples  # data.load_examples checked the file's arrays
    examples_source = examples_source or "examples"
    if from_files:
        report_fields["source"] = examples_source
    from_split = examples_source.endswith("test split")  # the dataset's split, else --examples / Python arrays
    x, y = examples
    if not checked:
        x, y = check_examples(x, y, flag="--num_examples" if from_split else "--examples")
    shard = config.parsed_shard
    if shard is not None and len(x) < (config.shard_total or len(x) + 1):  # fewer than validate checked for
        shards.check_shard_size(shard, len(x), "--num_examples" if from_split else "--examples")
    suites = list(config.suite)
    full_sweep = "full" in suites and "sweep" not in config.diagnostics
    if shard is not None and full_sweep:
        say("note: --shard: the full suite's accuracy sweep (a diagnostic) is skipped: it cannot be merged from "
            "shards")
    diagnostics = list(config.diagnostics) + (["sweep"] if full_sweep and shard is None else [])
    audit = config.audit
    if audit is None:
        audit = shard is None
        if shard is not None:
            say("note: --shard: no gradient-masking audit (it cannot be merged from shards); run it without --shard")
    # XLA: without the serving input checks
    logits_fn, path = _load_saved_model(model, config.jit_compile) if from_files else \
        load_model(model, unchecked=config.jit_compile)
    outputs_fn = _cossat_outputs(logits_fn) if config.cossat_protocol else None
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    data_flag = "--dataset" if from_split else "--examples"
    expected = getattr(logits_fn, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected[1:]):
        raise EvaluationError(f"{data_flag}: the examples have shape {tuple(x.shape[1:])} but the model takes "
                              f"{tuple(expected[1:])}")
    num_classes = int(logits_fn(x[:1]).shape[-1])
    attack_logits_fn = None
    if config.attack_precision == "bfloat16":
        if all(s.source is not None for s in specs):
            raise EvaluationError("--attack_precision=bfloat16: every attack is a transfer attack, crafted on the "
                                  "--source_model in float32; there are no attack iterations on the model to run in "
                                  "bfloat16")
        logits_fn, attack_logits_fn = bfloat16_attack_model(config.model_dir if from_files else model, logits_fn,
                                                            x[:config.eval_batch_size])
    if config.jit_compile:
        check_xla(logits_fn, x[:1])
        if attack_logits_fn is not None:
            check_xla(attack_logits_fn, x[:1])
    if y.max() >= num_classes:  # the labels against the model's classes (data.check_arrays' words)
        raise EvaluationError(f"{data_flag}: label {int(y.max())} is out of range for the model's {num_classes} "
                              f"classes (0..{num_classes - 1})")
    try:
        specs_lib.check_classes(specs, num_classes)
    except ValueError as error:
        raise EvaluationError(f"--attacks/--suite: {error}") from None
    shown = path or model_name or "the model"
    model_name = model_name or (config.model_dir if from_files else None) or shown
    output_dir, output = config.output_dir, config.output
    if output_dir:
        plots = config.plots_dir or runs.plots_dir(output_dir)
    else:
        plots = config.plots_dir or (os.path.join(os.path.dirname(os.path.abspath(output)), runs.PLOTS_DIR) if output
                                     else "eval_plots")
    if diagnostics or output_dir:  # the default place too (--plots_dir was checked with the other values)
        reason = config_lib.unwritable_reason(plots, directory=True)
        if reason:
            raise EvaluationError(f"--plots_dir: {reason} (where the {'diagnostic ' if diagnostics else ''}plots go; "
                                  "give another --plots_dir)")
    protocols = config_lib.COSSAT_PROTOCOLS[config.cossat_protocol] if config.cossat_protocol else []
    return Plan(config, logits_fn, shown, x, y, examples_source, num_classes, budget, radii, specs, shard, audit,
                diagnostics, protocols, outputs_fn, Output(output, output_dir, plots, model_name), report_fields or {},
                log, attack_logits_fn)


def _read_examples(path: str):
    """(x, y) of an --examples .npz (`tfadv.data.load_examples`: the one check of a user's arrays)."""
    from tfadv import data

    try:
        return data.load_examples(path)
    except (OSError, ValueError) as error:
        raise EvaluationError(f"--examples: {error}") from None


def _split_examples(spec, config):
    """The first --num_examples of the dataset's test split; ExamplesUnavailable when it cannot be read."""
    from tfadv import data

    count = config.num_examples if config.num_examples is not None else config_lib.NUM_EXAMPLES
    try:
        return data.take(data.load(spec.name, config.data_dir, 0.0, config.download).test, count)
    except (OSError, ValueError, data.DataUnavailableError) as error:  # a dataset that is not there
        raise ExamplesUnavailable(str(error)) from None


def run(plan: Plan) -> dict:
    """Executes `plan`: the attacks (Evaluator), the report's budget fields and warnings, then the audit, the
    diagnostics and the Co-SSAT protocols it holds. Returns the report dict."""
    say, config, radii, x, y = plan.say, plan.config, plan.radii, plan.x, plan.y
    if plan.shard is None:
        which = f"{len(y)} examples"
    else:
        start, stop = shards.shard_bounds(*plan.shard, len(y))
        which = f"examples {start}..{stop - 1} (shard {plan.shard[0]}/{plan.shard[1]}) of {len(y)}"
    say(f"evaluating {plan.shown} on {which} of the {plan.examples_source}; eps {radii['linf']:.4f} (linf), "
        f"{radii['l2']:.4f} (l2), {radii['l1']:.4f} (l1); attacks: {', '.join(s.name for s in plan.specs)}"
        + ("; attacks compiled with XLA" if config.jit_compile else "")
        + ("; attack iterations in bfloat16, every success confirmed in float32" if plan.attack_logits_fn else ""))
    evaluator = runner.Evaluator(plan.logits_fn, plan.specs, config.eval_batch_size, config.seed, config.progress,
                                 config.jit_compile, plan.attack_logits_fn)
    keep = config.save_adversarial is not None
    try:
        if plan.shard is None:
            report = evaluator(x, y, plan.log, keep_adversarial=keep)
            report.pop("per_example_robust")
            report.pop("per_example_correct")
        else:  # no audit etc. below
            report = shards.evaluate_shard(evaluator, x, y, plan.shard, plan.log, plan.output.model_name,
                                           keep_adversarial=keep)
    except runner.XLAUnsupportedError as error:
        raise EvaluationError(f"--jit_compile: {error}") from None
    if keep:
        with _writing("--save_adversarial", config.save_adversarial):
            save_adversarial_examples(config.save_adversarial, report.pop("adversarial"))
        say(f"adversarial examples written to {config.save_adversarial}")
    report.update(plan.report_fields)
    report.update({"eps": radii["linf"], "eps_l2": radii["l2"], "eps_l1": radii["l1"]})
    if hasattr(plan.budget, "to_json"):
        report["budget"] = plan.budget.to_json()
    add_perturbation_levels(report, getattr(plan.budget, "pixel_max", None))
    if config.jit_compile:
        report["jit_compile"] = True
    # what the attacks' iterations ran in; the clean pass and every verdict are the float32 model's either way
    report["attack_precision"] = config.attack_precision
    say(reports.format_table(report))
    chance = 1.0 / plan.num_classes
    if plan.shard is None and report["clean_accuracy"] <= chance + CHANCE_MARGIN:
        # labels that do not belong to the model (another dataset, labels rolled by one) look like a fragile model
        warning = (f"clean accuracy {report['clean_accuracy']:.3f} is at chance level ({chance:.3f}): the labels may "
                   f"not be the model's (another dataset or label order?); the robust accuracies measure nothing")
        report.setdefault("warnings", []).append(warning)
        say(f"WARNING: {warning}")
    if plan.audit:
        from tfadv.evaluation import audit as audit_lib

        checks = audit_lib.audit(plan.logits_fn, x, y, report, radii["linf"], config.eval_batch_size,
                                 seed=config.seed, square_queries=config.audit_square_queries)
        report["audit"] = checks
        say(audit_lib.format_audit(checks))
        warning = audit_lib.summary(checks)
        if warning:
            say(f"WARNING: {warning}: treat these robust accuracies as upper bounds")
    if plan.diagnostics:
        os.makedirs(plan.output.plots, exist_ok=True)
        report["diagnostics"] = run_diagnostics(plan.diagnostics, plan.logits_fn, x, y, radii["linf"],
                                                plan.output.plots, say)
    if plan.cossat:
        report["cossat"] = _cossat(plan.outputs_fn, x, y, plan.specs, radii, plan.cossat, config.eval_batch_size,
                                   config.seed, say)
        for protocol, result in report["cossat"].items():  # invalid attack outputs, said at the top as well
            report.setdefault("warnings", []).extend(f"Co-SSAT {protocol}: {w}" for w in result.get("warnings", []))
    return report


def write(report: dict, output: Output, log: Optional[Callable] = print) -> dict:
    """The JSON report to `output.output` and to output_dir/report.json; with `output.output_dir` also the bar
    chart (`output.plots`/robust_accuracy.png) and report.md. Returns `report`."""
    say = log or (lambda *_: None)
    targets = [("--output", output.output)] if output.output else []
    if output.output_dir:
        targets.append(("--output_dir", runs.path(output.output_dir, runs.REPORT_JSON)))
    for flag, target in targets:
        with _writing(flag, target):
            os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
            runs.atomic_write(target, runs.json_text(report))
        say(f"report written to {target}")
    if output.output_dir:
        with _writing("--output_dir", output.output_dir):
            _write_summary(report, output, say)
    return report


@contextlib.contextmanager
def _writing(flag: str, target: str):
    """An OSError (a full disk after every attack ran) as one line naming `flag`; the writes are atomic, so no
    half-written file stays."""
    try:
        yield
    except OSError as error:
        raise EvaluationError(f"{flag}: could not write {target} ({error.strerror or error}); the results are in "
                              "the log above") from None


def _write_summary(report: dict, output: Output, say: Callable):
    """The bar chart and report.md of an --output_dir."""
    plots = output.plots or runs.plots_dir(output.output_dir)
    os.makedirs(plots, exist_ok=True)
    chart = reports.plot_report(report, os.path.join(plots, runs.ROBUST_ACCURACY_PLOT),
                                f"{os.path.basename(os.path.normpath(output.model_name))}: robust accuracy")
    say(f"chart written to {chart}")
    markdown = runs.path(output.output_dir, runs.REPORT_MD)
    runs.atomic_write(markdown, reports.format_markdown(report, report.get("audit"),
                                                        f"Robustness of {output.model_name}")
                      + f"\n![robust accuracy]({os.path.relpath(chart, output.output_dir)})\n")
    say(f"summary written to {markdown}")


def evaluate(config: config_lib.EvalConfig, log: Optional[Callable] = print, **given) -> dict:
    """plan -> run -> write: the report of `config` (`given`: `plan`'s Python objects)."""
    chosen = plan(config, log=log, **given)
    return write(run(chosen), chosen.output, log)


def main(argv, flag_values=None):
    """evaluate.py's body: the parsed flags as an EvalConfig, evaluated; a bad value is one line and exit code 2,
    a dataset that cannot be read exit code 1."""
    from tfadv import cli

    len(argv) > 1 and cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    try:
        evaluate(config_lib.from_parsed_flags(flag_values))
    except EvaluationError as error:
        cli.fail(str(error))
    except ExamplesUnavailable as error:
        cli.fail(str(error), code=1)


# ----------------------------------------------------------------------------------------------------------
# the parts `plan` decides with

def radii_of(budget) -> Dict[str, float]:
    """{norm: radius as a fraction of the pixel range} of a tfadv.config.Budget or of such a dict."""
    if budget is None:
        raise EvaluationError("budget is required: tfadv.config.budget(spec, eps=...) or {norm: radius}")
    return dict(budget.radii()) if hasattr(budget, "radii") else {k: float(v) for k, v in dict(budget).items()}


def attack_specs(attacks: Optional[Sequence[str]] = None, suites: Sequence[str] = (),
                 radii: Optional[Dict[str, float]] = None, step_size: Optional[float] = None,
                 source: Optional[Callable] = None, eot_iter: Optional[int] = None,
                 log: Optional[Callable] = print) -> list:
    """The AttackSpecs to run, each once: every name in `attacks` parsed once (None: fgsm, pgd20, cw20 without a
    suite, nothing more with one), list suites' names added in order, AutoAttack cascades and the transfer attack
    (with a `source` model and a suite) built from their fields; `eot_iter` given to every EOT-capable attack. An
    attack two suites ask for runs once, as a cascade stage when one of them runs it so (said in `log`); asked for
    in `attacks` and also in a cascade it is refused. `suites` must be SUITES names (EvalConfig.validate)."""
    explicit = attacks is not None
    names = list(config_lib.DEFAULT_ATTACKS) if attacks is None and not suites else list(attacks or [])
    cascades = []
    for suite in suites:
        if isinstance(specs_lib.SUITES[suite], list):
            names += [n for n in specs_lib.SUITES[suite] if n not in names]
        else:
            cascades += specs_lib.suite_specs(suite, radii)
    transfer = bool(suites) and source is not None and TRANSFER_ATTACK not in names
    try:
        specs = [specs_lib.parse_attack(name, radii, step_size, source) for name in names]
    except ValueError as error:
        raise EvaluationError(f"--attacks: {error}") from None
    asked = {s.name for s in specs[:len(attacks)]} if explicit else set()
    if transfer:
        specs.append(specs_lib.build_spec("pgd", radii, steps=20, step_size=step_size, source=source))
    specs += cascades
    if eot_iter is not None:
        if not any(s.supports_eot for s in specs):
            eot = ", ".join(e.family for e in specs_lib.registered_attacks().values() if e.eot)
            raise EvaluationError(f"--eot_iter applies to APGD attacks ({eot}, --suite=autoattack*), and none of "
                                  f"{', '.join(s.name for s in specs) or 'the selected attacks'} is one")
        specs = [specs_lib.with_eot(s, eot_iter) if s.supports_eot else s for s in specs]
    unique = {}
    for s in specs:  # pgd20 and pgd20_linf are one attack (canonical names): run it once
        if s.name in unique and unique[s.name].group != s.group:
            alone, cascade = (s, unique[s.name]) if s.group is None else (unique[s.name], s)
            if alone.name in asked:
                raise EvaluationError(f"--attacks: {s.name} is asked for both alone and in the {cascade.group} "
                                      f"cascade; drop it from --attacks or run the suites separately")
            # a suite's standalone entry that another suite runs as a cascade stage: reported with the cascade
            if log:
                log(f"note: {s.name} runs as a stage of the {cascade.group} cascade (on the points still robust), "
                    f"not also alone")
            unique[s.name] = cascade
            continue
        unique.setdefault(s.name, s)
    return list(unique.values())


def recorded_eps_levels(metadata: dict, spec) -> float:
    """The eps, in `spec`'s pixel levels, that a SavedModel's tfadv.json records (its "budget", both units, or
    "eps_levels"). A model that records eps only as a fraction (exported by an older tfadv) or none at all needs
    --eps: tfadv converts levels to fractions in one place (`tfadv.config.budget`) and never back. EvaluationError
    naming --eps when there is none."""
    recorded_max = metadata.get("budget", {}).get("pixel_max", metadata.get("pixel_max"))
    same_range = recorded_max is None or float(recorded_max) == float(spec.pixel_max)
    levels = metadata.get("budget", {}).get("eps", {}).get("levels", metadata.get("eps_levels"))
    if levels is not None and same_range:
        return float(levels)
    recorded = f" (it records eps {float(metadata['eps']):g} of the pixel range, not in levels)" if "eps" in metadata \
        else ""
    raise EvaluationError(f"--eps: the model records no eps in pixel levels{recorded}; give --eps in pixel levels of "
                          f"{spec.name} (0..{spec.pixel_max:g})")


def budget_of(metadata: dict, dataset: Optional[str] = None, eps: Optional[float] = None,
              eps_l2: Optional[float] = None, eps_l1: Optional[float] = None,
              attack_step_size: Optional[float] = None, examples_shape=None):
    """(dataset spec, tfadv.config.Budget) of an evaluation: the dataset and eps (pixel levels) from the
    arguments, else from the model's recorded metadata. A model that records no dataset needs `dataset`, or
    `examples_shape` (user examples) with `eps` (then in 8-bit levels, n/255). EvaluationError names the flag.
    The sizes themselves are checked by EvalConfig.validate (`tfadv.evaluation.evaluation_budget` checks them
    first for a direct call)."""
    from tfadv import config, data

    name = dataset or metadata.get("dataset")
    if name is None:
        if examples_shape is None or eps is None:
            # one refusal that lists everything a model without tfadv metadata needs (it was two, one at a time)
            needs = "--dataset" + ("" if eps is not None else " and --eps (pixel levels)")
            raise EvaluationError(f"--dataset: the model records no dataset (no tfadv.json): give {needs}, or a "
                                  "training --flagfile, or --examples with --eps")
        spec = data.DatasetSpec("examples", tuple(examples_shape), 0, 255.0, (0.0,), (1.0,), "none")
    else:
        try:
            spec = data.get_spec(name)
        except ValueError as error:
            raise EvaluationError(f"--dataset: {error}") from None
    # the dataset must be the model's before any unit is read from it (a digits model with --dataset=cifar10 was
    # refused with a message about eps units instead of the mismatch)
    recorded_shape = metadata.get("image_shape")
    if name is not None and recorded_shape is not None and tuple(recorded_shape) != tuple(spec.image_shape):
        raise EvaluationError(f"--dataset: the model takes images of shape {tuple(recorded_shape)} but {spec.name} "
                              f"has {tuple(spec.image_shape)}")
    recorded_classes = metadata.get("num_classes")
    if name is not None and recorded_classes is not None and int(recorded_classes) != spec.num_classes:
        raise EvaluationError(f"--dataset: the model has {recorded_classes} classes but {spec.name} has "
                              f"{spec.num_classes}")
    if eps is not None and eps == 0:
        raise EvaluationError("--eps: 0 measures clean accuracy, not robustness; give a positive radius in pixel "
                              f"levels of {spec.name}")
    levels = recorded_eps_levels(metadata, spec) if eps is None else eps
    try:
        result = config.budget(spec, eps=levels, eps_l2=eps_l2, eps_l1=eps_l1, attack_step_size=attack_step_size)
    except config.ConfigError as error:
        raise EvaluationError(str(error)) from None
    if not result.eps <= 1:
        raise EvaluationError(f"--eps: {levels} is outside the pixel range of {spec.name} (0..{spec.pixel_max:g} "
                              f"levels)")
    features = math.prod(spec.image_shape)
    # the largest l2 / l1 distance between two images in [0, 1]^d: sqrt(d) and d (fractions of the pixel range)
    for flag, value, largest in (("eps_l2", eps_l2, math.sqrt(features)), ("eps_l1", eps_l1, float(features))):
        if value is not None and not result.fraction(flag) <= largest:
            raise EvaluationError(f"--{flag}: {value:g} pixel levels is beyond the largest {flag[4:]} distance between "
                                  f"two {spec.name} images ({largest * spec.pixel_max:.6g} levels): the ball holds "
                                  f"every image")
    return spec, result


def check_examples(x, y, num_classes: Optional[int] = None, flag: str = "--examples"):
    """(x, y) checked by `tfadv.data.check_arrays` (the one check of a user's examples: non-empty NHWC finite
    pixels in [0, 1], integer class indices below `num_classes` when given), else EvaluationError naming `flag`."""
    from tfadv import data

    try:
        data.check_arrays(x, y, num_classes)
    except ValueError as error:
        raise EvaluationError(f"{flag}: {error}") from None
    return x, y


def load_model(model, unchecked: bool = False):
    """(logits_fn, path or None) of a SavedModel / run directory path, a keras.Model (called in inference
    mode) or a logits_fn. `unchecked` (for attacks compiled with XLA): a tfadv SavedModel's logits without its
    serving input checks (`export.load_logits_fn(path, unchecked=True)`; equal logits on valid images)."""
    if isinstance(model, (str, os.PathLike)):
        path = runs.find_saved_model(os.fspath(model))
        if path is None:
            raise EvaluationError(f"--model_dir={model}: no SavedModel there (nor in "
                                  f"{runs.saved_model_dir(os.fspath(model))})")
        return _load_saved_model(path, unchecked)
    if hasattr(model, "trainable_variables") and hasattr(model, "layers"):  # keras.Model: BN in inference mode
        from tfadv import export

        network = export.as_float32(model)  # a mixed-precision network is evaluated (and attacked) in float32
        logits_fn = lambda images: network(images, training=False)  # noqa: E731
        logits_fn.input_shape = getattr(network, "input_shape", None)
        return logits_fn, None
    if not callable(model):
        raise EvaluationError(f"model must be a SavedModel path, a keras.Model or a logits_fn, got {type(model)}")
    return model, None


BFLOAT16_AGREEMENT = 1e-4  # the rebuilt run network's float32 logits against its SavedModel's (relative to max |logit|)


def bfloat16_attack_model(model, logits_fn: Callable, images):
    """(float32 logits_fn, bfloat16 logits_fn) for --attack_precision=bfloat16: a mixed_bfloat16 copy of the
    network (`tfadv.export.as_mixed_bfloat16`). `model`: a keras.Model (its float32 copy, `export.as_float32`,
    becomes the float32 logits_fn), or a tfadv run directory / its saved_model/1, whose network is rebuilt from
    flags.txt and checkpoints/final.weights.h5 (the weights it exported) and checked against the SavedModel, which
    stays the float32 model, on `images`. A bare SavedModel or a logits_fn has no network to copy:
    EvaluationError."""
    import numpy as np

    from tfadv import export

    def copy(network):
        import tensorflow as tf

        try:
            low = export.as_mixed_bfloat16(network)
        except ValueError as error:
            raise EvaluationError(f"--attack_precision=bfloat16: {error}") from None
        return lambda batch: tf.cast(low(batch, training=False), tf.float32)  # BN in inference mode

    if hasattr(model, "trainable_variables") and hasattr(model, "layers"):
        return load_model(model)[0], copy(model)
    run_dir = run_directory_of(model) if isinstance(model, (str, os.PathLike)) else None
    if run_dir is None:
        what = f"{model} is a SavedModel outside a tfadv run directory" if isinstance(model, (str, os.PathLike)) \
            else "a logits_fn is not a network"
        raise EvaluationError(f"--attack_precision=bfloat16: {what}, so no bfloat16 copy of it can be built; give "
                              f"the run directory (flags.txt, checkpoints/final.weights.h5) or a keras.Model, or "
                              f"evaluate with --attack_precision=float32")
    try:
        network, _ = runs.load_run_network(run_dir, "final")
    except (OSError, ValueError) as error:
        raise EvaluationError(f"--attack_precision=bfloat16: cannot rebuild the network of {run_dir} ({error})") \
            from None
    ours = np.asarray(export.as_float32(network)(images, training=False))
    theirs = np.asarray(logits_fn(images))
    if ours.shape != theirs.shape or np.max(np.abs(ours - theirs)) > BFLOAT16_AGREEMENT * max(np.max(np.abs(theirs)),
                                                                                            1.0):
        raise EvaluationError(f"--attack_precision=bfloat16: the network rebuilt from {run_dir}'s flags.txt and "
                              f"final checkpoint does not give its SavedModel's logits; evaluate with "
                              f"--attack_precision=float32")
    return logits_fn, copy(network)


def run_directory_of(path) -> Optional[str]:
    """The tfadv run directory of `path` (the run itself, or its saved_model/1), or None."""
    path = os.path.normpath(os.fspath(path))
    for candidate in (path, os.path.dirname(os.path.dirname(path))):
        if candidate and runs.is_run(candidate) and runs.find_saved_model(candidate) in (
                path, os.path.join(candidate, runs.SAVED_MODEL_DIR)):
            return candidate
    return None


def _load_saved_model(path: str, unchecked: bool):
    from tfadv import export

    return export.load_logits_fn(path, unchecked=unchecked), path


def run_diagnostics(names, logits_fn, x, y, eps, plots, log: Callable = print) -> dict:
    """The requested geometry diagnostics (tfadv.evaluation.landscape / diagnostics); PNGs into `plots`."""
    from tfadv.evaluation import diagnostics as linear, landscape

    out = {}
    if "eps_l" in names:
        result = linear.linear_robustness(logits_fn, x, y, eps)
        linear.plot_linear_robustness(result, os.path.join(plots, "linear_robustness.png"))
        result.pop("per_example")
        out["eps_l"] = result
        log(f"linear robustness estimate (paper 004 Eq. 4): predicted {result['predicted_robust_accuracy']:.4f}, "
            f"FGSM-CE {result['fgsm_ce_accuracy']:.4f}, FGSM-CW {result['fgsm_cw_accuracy']:.4f}; median eps_L "
            f"{result['eps_l']['median']}, logit gap {result['logit_gap']['median']:.4g}, gradient gap "
            f"{result['gradient_gap']['median']:.4g}, coherence {result['coherence']['median']:.3f}")
    if "gradients" in names:
        out["gradients"] = landscape.gradient_magnitudes(logits_fn, x, y)
        log("input-gradient ||grad_x CE||_2^2 (paper 002 Table 2): " +
            json.dumps(out["gradients"]["squared_l2_norm"]))
    if "lipschitz" in names:
        out["lipschitz"] = landscape.local_lipschitz(logits_fn, x, eps)
        log(f"local Lipschitz: upper {out['lipschitz']['upper']:.4g}, lower {out['lipschitz']['lower']:.4g}")
    if "linearity" in names:
        out["linearity"] = landscape.local_linearity(logits_fn, x, y, eps)
        log(f"local linearity: gradient alignment {out['linearity']['gradient_alignment']:.4f}, "
            f"linearity gap {out['linearity']['linearity_gap']:.4g}")
    if "landscape" in names:
        out["landscape"] = landscape.loss_landscape(logits_fn, x, y, eps)
        landscape.plot_landscape(out["landscape"], os.path.join(plots, "loss_landscape.png"))
    if "confidence" in names:
        out["confidence"] = landscape.confidence_profile(logits_fn, x, y, eps)
        log("sorted confidence (clean): " + " ".join(f"{v:.3f}" for v in out["confidence"]["clean"]))
    if "sweep" in names:
        eps_values = [eps * f for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)]
        out["sweep"] = landscape.accuracy_sweep(logits_fn, x, y, eps_values, [1, 2, 5, 10, 20, 50, 100])
        landscape.plot_sweep(out["sweep"], os.path.join(plots, "accuracy_sweeps.png"))
        log("accuracy vs eps: " + " ".join(f"{v:.3f}" for v in out["sweep"]["accuracy_vs_eps"]))
    return out


def check_xla(logits_fn: Callable, images):
    """EvaluationError ("--jit_compile: ...") unless the model's forward pass compiles with XLA. A tfadv
    SavedModel's `serving_default` does not (its input checks format string messages: tf.strings ops, which XLA
    has no kernel for), so `load_model(path, unchecked=True)` returns its `logits_unchecked` function, which does;
    a SavedModel exported before tfadv saved that function is refused with a request to re-export it."""
    import tensorflow as tf

    try:
        tf.function(lambda batch: logits_fn(batch), jit_compile=True)(tf.constant(images))
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
        unsupported = sorted(set(re.findall(r"No registered '(\w+)' OpKernel", error.message or "")))
        what = ", ".join(unsupported) or (error.message or "").splitlines()[0][:200]
        if getattr(logits_fn, "saved_model", None) is not None and not getattr(logits_fn, "unchecked", False) \
                and "StringFormat" in unsupported:  # a tfadv SavedModel's input checks, from before logits_unchecked
            raise EvaluationError(
                "--jit_compile: this tfadv SavedModel was exported without logits_unchecked, the logits function "
                "XLA can compile (its serving_default's input checks cannot be): re-export it with this version of "
                "tfadv (tfadv.export.export, or scripts/build_cossat.py for Co-SSAT), or evaluate it without "
                "--jit_compile") from None
        raise EvaluationError(
            f"--jit_compile: the model's forward pass does not compile with XLA (unsupported operations: {what}); "
            f"evaluate it without --jit_compile") from None


def _cossat_outputs(logits_fn):
    """`outputs_fn(images) -> dict` of a loaded Co-SSAT SavedModel (EvaluationError for any other model)."""
    loaded = getattr(logits_fn, "saved_model", None)
    loaded = loaded.signatures["serving_default"] if loaded is not None else None
    if loaded is None or "ssat_logits" not in loaded.structured_outputs:
        raise EvaluationError("--cossat_protocol needs a Co-SSAT SavedModel (from scripts/build_cossat.py)")
    return lambda images: loaded(images=images)


def _cossat(outputs_fn, x, y, specs, radii, protocols, batch_size, seed, log):
    from tfadv.evaluation import cossat_protocols

    out = {}
    for protocol in protocols:
        # App. H.2 dispatches AutoAttack's examples: with no AutoAttack suite requested, it brings its own
        chosen = specs if protocol != "aa_dispatch" or any(s.group for s in specs) else \
            specs_lib.autoattack_specs(radii)
        result = cossat_protocols.evaluate(outputs_fn, x, y, chosen, protocol, batch_size, log=log, seed=seed)
        out[protocol] = result
        log(f"Co-SSAT {protocol}: worst case {result['worst_case_accuracy']:.4f}")
    return out


def add_perturbation_levels(report: dict, pixel_max: Optional[float]):
    """Each attack's `max_perturbation_levels` (the max perturbation in the CLI's pixel levels, as --eps is given)
    when the budget knows the pixel range; nothing without it (a {norm: radius} budget)."""
    if pixel_max:
        for entry in report["attacks"].values():
            entry["max_perturbation_levels"] = entry["max_perturbation"] * float(pixel_max)


def save_adversarial_examples(path: str, adversarial: dict) -> str:
    """Writes the Evaluator's `adversarial` ({name: {images, indices, broken, valid}}) to the .npz `path`
    (exactly that path, via a temporary file: never half-written) as `<name>/<field>` arrays plus `attacks`
    (the names in order); `numpy.load(path)` reads it back. Returns `path`."""
    import numpy as np

    arrays = {"attacks": np.asarray(list(adversarial), dtype=str)}
    for name, fields in adversarial.items():
        arrays.update({f"{name}/{field}": value for field, value in fields.items()})
    with runs.replacing(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return path
