"""`evaluate_model`: the Python API of an evaluation. A model (a SavedModel or run directory, a `keras.Model`
mapping [0,1] images to logits, or any `logits_fn`), examples, attack names and/or suites, and a budget in; the
report dict out, with report.json, report.md and plots/robust_accuracy.png written on request.

    from tfadv import config, data, evaluation
    budget = config.budget(data.get_spec("cifar10"), eps=8)
    report = evaluation.evaluate_model(model, x, y, suite="autoattack", budget=budget, output_dir="eval")

It takes the one evaluation path of scripts/evaluate.py (`tfadv.evaluation.pipeline`: an EvalConfig, validated
once, then plan -> run -> write); its errors name evaluate.py's flags. The evaluation side never imports the
training side (tfadv.config is only read duck-typed: a Budget is anything with `radii()`, and `to_json()` /
`fraction(name)` when present).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

from tfadv.errors import EvaluationError
from tfadv.evaluation import config as config_lib, pipeline, runner, specs as specs_lib
from tfadv.evaluation.config import (COSSAT_PROTOCOLS, DEFAULT_ATTACKS, DIAGNOSTICS, MAX_SEED,  # noqa: F401
                                     save_path_reason, unwritable_reason)
from tfadv.evaluation.pipeline import (CHANCE_MARGIN, TRANSFER_ATTACK, add_perturbation_levels,  # noqa: F401
                                       check_examples, check_xla, load_model, radii_of, recorded_eps_levels,
                                       run_diagnostics, save_adversarial_examples)


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def evaluate_model(model, x, y, attacks: Optional[Sequence] = None, *, suite: Union[str, Sequence[str]] = (),
                   budget=None, step_size: Optional[float] = None, seed: int = 0, batch_size: int = 256,
                   eot_iter: Optional[int] = None, audit: Optional[bool] = None, audit_square_queries: int = 1000,
                   diagnostics: Sequence[str] = (), cossat_protocol: Optional[str] = None, source_model=None,
                   output_dir: Optional[str] = None, output: Optional[str] = None, plots_dir: Optional[str] = None,
                   progress: bool = False, log: Optional[Callable] = print, model_name: Optional[str] = None,
                   examples_source: str = "examples", report_fields: Optional[dict] = None,
                   shard=None, jit_compile: bool = False, save_adversarial: Optional[str] = None,
                   attack_precision: str = "float32") -> dict:
    """Clean, per-attack and worst-case accuracy of `model` on (x, y) ([0,1] NHWC, int labels); returns the
    report dict (tfadv.evaluation.Evaluator's, with the audit, diagnostics and Co-SSAT protocols when asked).

    `model`: a SavedModel or run directory path, a keras.Model ([0,1] images -> logits, run with
    training=False) or a logits_fn. `attacks`: names (`resolve_attacks`) or AttackSpecs already built;
    `suite`: SUITES names; `budget`: a tfadv.config.Budget (its radii, and its "attack_step_size" when it has one) or
    {norm: radius} in fractions; `step_size`: PGD's step size as a fraction (default: the budget's, else
    eps/4 for l-inf, 2.5 eps/steps for l2/l1); `eot_iter`: EOT draws for every APGD attack; `audit`: the
    gradient-masking audit (with a Square probe of `audit_square_queries` when no black-box attack ran; None:
    run it unless `shard` is given);
    `diagnostics`: DIAGNOSTICS names; `cossat_protocol`: a COSSAT_PROTOCOLS key (needs a Co-SSAT SavedModel);
    `source_model`: transfer attacks craft on it (same forms as `model`). `output` gets the JSON report;
    `output_dir` gets report.json, report.md and plots/robust_accuracy.png; diagnostic plots go to `plots_dir`
    (default: output_dir/plots, else next to `output`, else ./eval_plots). `log` (None: silent) gets the
    progress lines; `report_fields` are added to the report. Raises EvaluationError for bad arguments before
    any attack runs.

    `shard` ("i/n" or (i, n)): evaluate only the i-th of n contiguous slices of (x, y)
    (`tfadv.evaluation.shards.shard_bounds`), each example with the random numbers it gets in a run over all
    of (x, y); the report (the shard's own numbers) then carries what `tfadv.evaluation.shards.merge_reports`
    needs to rebuild the whole run's report exactly. The audit, diagnostics and Co-SSAT protocols cannot be
    merged: refused when asked for, skipped (said in `log`) when they would run by default. `jit_compile`:
    compile every attack with XLA (the report then records "jit_compile": true). `attack_precision` ("float32",
    "bfloat16"): what the attacks' iterations compute in; "bfloat16" attacks a mixed_bfloat16 copy of `model` (a
    keras.Model or a tfadv run directory: a bare SavedModel or a logits_fn is refused) while the clean pass and
    every verdict stay the float32 model's (a point is broken only if the float32 model misclassifies what the
    attack returned); the report records it as "attack_precision".

    Every attack's outputs are checked against its threat model (`tfadv.evaluation.runner.check_threat_model`):
    invalid ones count as not broken and are counted per attack (`invalid_outputs`, `invalid_reasons`, a line in
    `warnings`); each attack records its `max_perturbation` (fraction of [0, 1]) and, with a Budget (which knows
    the pixel levels), `max_perturbation_levels`. `save_adversarial` (a path whose directory exists): an .npz
    with, per attack, `<name>/images` (what it returned), `<name>/indices` (in (x, y)), `<name>/broken` and
    `<name>/valid`, and `attacks` (the names in order) (`save_adversarial_examples`).

    The same path as evaluate.py (`tfadv.evaluation.pipeline`): the arguments become an EvalConfig (errors name
    evaluate.py's flags: `batch_size` is --eval_batch_size), and the objects (model, examples, budget, specs,
    source model) are handed to `pipeline.plan`.
    """
    built = attacks and all(isinstance(a, specs_lib.AttackSpec) for a in attacks)
    source_path = source_model if isinstance(source_model, str) else None
    config = config_lib.EvalConfig(
        attacks=None if attacks is None or built else list(attacks), suite=_as_list(suite), source_model=source_path,
        audit=audit, audit_square_queries=audit_square_queries, diagnostics=list(diagnostics), plots_dir=plots_dir,
        cossat_protocol=cossat_protocol, output=output, output_dir=output_dir, save_adversarial=save_adversarial,
        progress=progress, eval_batch_size=batch_size, eot_iter=eot_iter, seed=seed, shard=shard,
        jit_compile=jit_compile, attack_precision=attack_precision, origin=config_lib.FLAGS_ORIGIN)
    return pipeline.evaluate(config, log=log, model=model, examples=(x, y), budget=budget,
                             attacks=list(attacks) if built else None, step_size=step_size,
                             source=None if source_path else source_model, model_name=model_name,
                             examples_source=examples_source, report_fields=report_fields)


def write_report(report: dict, output: Optional[str] = None, output_dir: Optional[str] = None,
                 plots: Optional[str] = None, model_name: str = "model", log: Callable = print):
    """The JSON report to `output` and to output_dir/report.json; with `output_dir` also the bar chart
    (`plots`/robust_accuracy.png) and report.md (`pipeline.write`)."""
    pipeline.write(report, pipeline.Output(output, output_dir, plots, model_name), log)


def resolve_attacks(attacks: Optional[Sequence[str]] = None, suites: Union[str, Sequence[str]] = (),
                    radii: Optional[dict] = None, step_size: Optional[float] = None,
                    source: Optional[Callable] = None, eot_iter: Optional[int] = None,
                    log: Optional[Callable] = print) -> list:
    """The AttackSpecs to run, each once (`pipeline.attack_specs`; names of unknown suites refused here).

    `attacks`: names (None: fgsm, pgd20, cw20 without a suite, nothing more with one); `suites`: names of
    SUITES, combined in order (with a `source` model a suite adds transfer_pgd20); `eot_iter`: every EOT-capable
    attack (APGD) averages its gradient over that many draws. An attack two suites ask for runs once, as a
    cascade stage when one of them runs it so (said in `log`); asked for explicitly in `attacks` and also in
    a cascade it is refused. Raises EvaluationError.
    """
    suites = _as_list(suites)
    bad = [name for name in suites if name not in specs_lib.SUITES]
    if bad:
        raise EvaluationError(f"--suite: unknown {', '.join(map(repr, bad))}; valid: {', '.join(specs_lib.SUITES)}")
    return pipeline.attack_specs(attacks, suites, radii, step_size, source, eot_iter, log)


def evaluation_budget(metadata: dict, dataset: Optional[str] = None, eps: Optional[float] = None,
                      eps_l2: Optional[float] = None, eps_l1: Optional[float] = None,
                      attack_step_size: Optional[float] = None, examples_shape=None):
    """(dataset spec, tfadv.config.Budget) of an evaluation (`pipeline.budget_of`), the sizes checked first: the
    dataset and eps (pixel levels) from the arguments, else from the model's recorded metadata. EvaluationError
    names the flag."""
    config_lib.check_values(eps=eps, eps_l2=eps_l2, eps_l1=eps_l1, attack_step_size=attack_step_size)
    return pipeline.budget_of(metadata, dataset, eps, eps_l2, eps_l1, attack_step_size, examples_shape)


def check_arguments(*, attack_step_size=None, eps=None, eps_l2=None, eps_l1=None, num_examples=None,
                    batch_size=None, seed=None, eot_iter=None, audit_square_queries=None, output=None,
                    output_dir=None, plots_dir=None, shard=None, audit=None, diagnostics=None, cossat_protocol=None,
                    save_adversarial=None):
    """EvaluationError ("--flag: ...") for the first bad evaluate.py argument; None means "not given"
    (`EvalConfig.validate`). Loads no model and touches no file."""
    config_lib.EvalConfig(
        attack_step_size=attack_step_size, eps=eps, eps_l2=eps_l2, eps_l1=eps_l1, num_examples=num_examples,
        eval_batch_size=batch_size, seed=seed, eot_iter=eot_iter, audit_square_queries=audit_square_queries,
        output=output, output_dir=output_dir, plots_dir=plots_dir, shard=shard, audit=audit,
        diagnostics=list(diagnostics or []), cossat_protocol=cossat_protocol, save_adversarial=save_adversarial,
        origin=config_lib.FLAGS_ORIGIN).validate()


# ----------------------------------------------------------------------------------------------------------
# the PGD figure of training runs (robust validation and the final test number)

# The attacks' per-example randomness in validation and the final test figure: evaluate.py's --seed default, so
# `evaluate.py --attacks=pgd20 --num_examples=<eval_examples>` reproduces the run's number whatever its --seed.
EVALUATION_SEED = 0


def robust_attack_name(steps: int, norm: str) -> str:
    """The name `evaluate.py --attacks=...` gives the same attack (same spec, same per-example randomness), so
    the final figure in metrics.json and an evaluation of the same model and examples agree."""
    return specs_lib.canonical_attack_name("pgd", steps, norm)


def pgd_accuracy_fn(eps: float, steps: int, norm: str = "linf", batch_size: int = 256):
    """(network, x, y) -> (clean accuracy, PGD-`steps` robust accuracy), BatchNorm in inference mode.

    The compiled attack is kept per network, so calling it every epoch does not retrace.
    """
    spec = specs_lib.parse_attack(robust_attack_name(steps, norm), {norm: eps})
    evaluators = {}

    def measure(network, x, y):
        if id(network) not in evaluators:
            # Evaluation always uses inference-mode BatchNorm.
            evaluators[id(network)] = runner.Evaluator(lambda images: network(images, training=False),
                                                           [spec], batch_size, seed=EVALUATION_SEED)
        report = evaluators[id(network)](x, y)
        return report["clean_accuracy"], report["attacks"][spec.name]["robust_accuracy"]

    return measure
