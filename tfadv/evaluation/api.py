"""`evaluate_model`: the library call behind scripts/evaluate.py. A model (a SavedModel or run directory, a
`keras.Model` mapping [0,1] images to logits, or any `logits_fn`), examples, attack names and/or suites, and a
budget in; the report dict out, with report.json, report.md and plots/robust_accuracy.png written on request.

    from tfadv import config, data, evaluation
    budget = config.budget(data.get_spec("cifar10"), eps=8)
    report = evaluation.evaluate_model(model, x, y, suite="autoattack", budget=budget, output_dir="eval")

The evaluation side never imports the training side (tfadv.config is only read duck-typed: a Budget is
anything with `radii()`, and `to_json()` / `fraction(name)` when present).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Callable, Dict, Optional, Sequence, Union

from tfadv import runs
from tfadv.errors import EvaluationError
from tfadv.evaluation import reports, runner, specs as specs_lib

DIAGNOSTICS = ("eps_l", "gradients", "lipschitz", "linearity", "landscape", "confidence", "sweep")
COSSAT_PROTOCOLS = {"white_box": ["white_box"], "half_white_box": ["half_white_box"], "aa_dispatch": ["aa_dispatch"],
                    "both": ["white_box", "half_white_box"], "all": ["white_box", "half_white_box", "aa_dispatch"]}
DEFAULT_ATTACKS = ("fgsm", "pgd20", "cw20")
TRANSFER_ATTACK = "transfer_pgd20"  # what a suite adds when a source model is given


def _as_list(value) -> list:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# -- checks that run before any model is loaded or any file is written ------------------------------------------

MAX_SEED = 2 ** 31 - 1


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


def check_arguments(*, attack_step_size=None, eps=None, eps_l2=None, eps_l1=None, num_examples=None,
                    batch_size=None, seed=None, eot_iter=None, audit_square_queries=None, output=None,
                    output_dir=None, plots_dir=None, shard=None, audit=None, diagnostics=None, cossat_protocol=None,
                    save_adversarial=None):
    """EvaluationError ("--flag: ...") for the first bad evaluate.py argument; None means "not given". Loads no
    model and touches no file, so a bad flag never costs an attack or leaves a file behind: call it first.
    `shard` ("i/n"): also refused with fewer `num_examples` than shards, and with what cannot be merged from
    shards asked for explicitly (`audit=True`, `diagnostics`, `cossat_protocol`; `check_shard`)."""
    for flag, value in (("eps", eps), ("eps_l2", eps_l2), ("eps_l1", eps_l1)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise EvaluationError(f"--{flag}: must be a finite, non-negative size in pixel levels, got {value}")
    if attack_step_size is not None and not (math.isfinite(attack_step_size) and attack_step_size > 0):
        raise EvaluationError(f"--attack_step_size: must be a finite, positive size in pixel levels, got "
                              f"{attack_step_size} (a step of 0 or less does not attack: it would report clean "
                              f"accuracy as robust)")
    if num_examples is not None and (num_examples == 0 or num_examples < -1):
        raise EvaluationError(f"--num_examples: must be a positive number of examples or -1 (all), got {num_examples}")
    for flag, value, least in (("eval_batch_size", batch_size, 1), ("eot_iter", eot_iter, 1),
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
    check_shard(shard, num_examples if num_examples not in (None, -1) else None, audit, diagnostics, cossat_protocol)


def check_shard(shard, total: Optional[int] = None, audit: Optional[bool] = None, diagnostics=None,
                cossat_protocol: Optional[str] = None, flag: str = "--num_examples"):
    """(index, count) of a valid `shard` ("i/n", an (i, n) pair; None for None), else EvaluationError: a bad
    i/n, fewer than n of `total` examples, or a report part that cannot be merged from shards asked for."""
    from tfadv.evaluation import shards

    parsed = shards.parse_shard(shard)
    if parsed is None:
        return None
    if total is not None:
        shards.check_shard_size(parsed, total, flag)
    why = "cannot be merged from shards (it needs every example at once); run it without --shard"
    if audit:
        raise EvaluationError(f"--audit: the gradient-masking audit {why} (under --shard it is skipped unless asked "
                              f"for)")
    if diagnostics:
        raise EvaluationError(f"--diagnostics: {', '.join(diagnostics)} {why}")
    if cossat_protocol:
        raise EvaluationError(f"--cossat_protocol: the Co-SSAT protocols {why}")
    return parsed


CHANCE_MARGIN = 0.05  # clean accuracy within 5 points of chance: the model does not know these labels


def check_examples(x, y, num_classes: Optional[int] = None, flag: str = "--examples"):
    """EvaluationError naming `flag` unless (x, y) pass `tfadv.data.check_arrays` (the one check of a user's
    examples: non-empty NHWC finite pixels in [0, 1], integer class indices below `num_classes` when given)."""
    from tfadv import data

    try:
        data.check_arrays(x, y, num_classes)
    except ValueError as error:
        raise EvaluationError(f"{flag}: {error}") from None


def radii_of(budget) -> Dict[str, float]:
    """{norm: radius as a fraction of the pixel range} of a tfadv.config.Budget or of such a dict."""
    if budget is None:
        raise EvaluationError("budget is required: tfadv.config.budget(spec, eps=...) or {norm: radius}")
    return dict(budget.radii()) if hasattr(budget, "radii") else {k: float(v) for k, v in dict(budget).items()}


def resolve_attacks(attacks: Optional[Sequence[str]] = None, suites: Union[str, Sequence[str]] = (),
                    radii: Optional[Dict[str, float]] = None, step_size: Optional[float] = None,
                    source: Optional[Callable] = None, eot_iter: Optional[int] = None,
                    log: Optional[Callable] = print) -> list:
    """The AttackSpecs to run, each once.

    `attacks`: names (None: fgsm, pgd20, cw20 without a suite, nothing more with one); `suites`: names of
    SUITES, combined in order (with a `source` model a suite adds transfer_pgd20); `eot_iter`: every EOT-capable
    attack (APGD) averages its gradient over that many draws. An attack two suites ask for runs once, as a
    cascade stage when one of them runs it so (said in `log`); asked for explicitly in `attacks` and also in
    a cascade it is refused. Raises EvaluationError.
    """
    suites = _as_list(suites)
    explicit = attacks is not None
    names = list(DEFAULT_ATTACKS) if attacks is None and not suites else list(attacks or [])
    specs = []
    bad = [name for name in suites if name not in specs_lib.SUITES]
    if bad:
        raise EvaluationError(f"--suite: unknown {', '.join(map(repr, bad))}; valid: {', '.join(specs_lib.SUITES)}")
    for suite in suites:
        if isinstance(specs_lib.SUITES[suite], list):
            names += [n for n in specs_lib.SUITES[suite] if n not in names]
        else:
            specs += specs_lib.suite_specs(suite, radii)
    if suites and source is not None and TRANSFER_ATTACK not in names:
        names.append(TRANSFER_ATTACK)
    try:
        specs = [specs_lib.parse_attack(name, radii, step_size, source) for name in names] + specs
        asked = {specs_lib.parse_attack(n, radii, step_size, source).name for n in attacks} if explicit else set()
    except ValueError as error:
        raise EvaluationError(f"--attacks: {error}") from None
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


def evaluation_budget(metadata: dict, dataset: Optional[str] = None, eps: Optional[float] = None,
                      eps_l2: Optional[float] = None, eps_l1: Optional[float] = None,
                      attack_step_size: Optional[float] = None, examples_shape=None):
    """(dataset spec, tfadv.config.Budget) of an evaluation: the dataset and eps (pixel levels) from the
    arguments, else from the model's recorded metadata. A model that records no dataset needs `dataset`, or
    `examples_shape` (user examples) with `eps` (then in 8-bit levels, n/255). EvaluationError names the flag."""
    from tfadv import config, data

    check_arguments(eps=eps, eps_l2=eps_l2, eps_l1=eps_l1, attack_step_size=attack_step_size)
    name = dataset or metadata.get("dataset")
    if name is None:
        if examples_shape is None or eps is None:
            raise EvaluationError("--dataset: the model records no dataset (no tfadv.json): give --dataset or a "
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


def check_options(diagnostics: Sequence[str] = (), cossat_protocol: Optional[str] = None):
    """Raises EvaluationError for an unknown diagnostic or Co-SSAT protocol."""
    unknown = [d for d in diagnostics if d not in DIAGNOSTICS]
    if unknown:
        raise EvaluationError(f"--diagnostics: unknown {unknown}; valid: {', '.join(DIAGNOSTICS)}")
    if cossat_protocol is not None and cossat_protocol not in COSSAT_PROTOCOLS:
        raise EvaluationError(f"--cossat_protocol: unknown {cossat_protocol!r}; valid: {', '.join(COSSAT_PROTOCOLS)}")


def load_model(model, unchecked: bool = False):
    """(logits_fn, path or None) of a SavedModel / run directory path, a keras.Model (called in inference
    mode) or a logits_fn. `unchecked` (for attacks compiled with XLA): a tfadv SavedModel's logits without its
    serving input checks (`export.load_logits_fn(path, unchecked=True)`; equal logits on valid images)."""
    if isinstance(model, (str, os.PathLike)):
        from tfadv import export

        path = runs.find_saved_model(os.fspath(model))
        if path is None:
            raise EvaluationError(f"--model_dir={model}: no SavedModel there (nor in "
                                  f"{runs.saved_model_dir(os.fspath(model))})")
        return export.load_logits_fn(path, unchecked=unchecked), path
    if hasattr(model, "trainable_variables") and hasattr(model, "layers"):  # keras.Model: BN in inference mode
        network = model
        logits_fn = lambda images: network(images, training=False)  # noqa: E731
        logits_fn.input_shape = getattr(network, "input_shape", None)
        return logits_fn, None
    if not callable(model):
        raise EvaluationError(f"model must be a SavedModel path, a keras.Model or a logits_fn, got {type(model)}")
    return model, None


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


def evaluate_model(model, x, y, attacks: Optional[Sequence] = None, *, suite: Union[str, Sequence[str]] = (),
                   budget=None, step_size: Optional[float] = None, seed: int = 0, batch_size: int = 256,
                   eot_iter: Optional[int] = None, audit: Optional[bool] = None, audit_square_queries: int = 1000,
                   diagnostics: Sequence[str] = (), cossat_protocol: Optional[str] = None, source_model=None,
                   output_dir: Optional[str] = None, output: Optional[str] = None, plots_dir: Optional[str] = None,
                   progress: bool = False, log: Optional[Callable] = print, model_name: Optional[str] = None,
                   examples_source: str = "examples", report_fields: Optional[dict] = None,
                   shard=None, jit_compile: bool = False, save_adversarial: Optional[str] = None) -> dict:
    """Clean, per-attack and worst-case accuracy of `model` on (x, y) ([0,1] NHWC, int labels); returns the
    report dict (tfadv.evaluation.Evaluator's, with the audit, diagnostics and Co-SSAT protocols when asked).

    `model`: a SavedModel or run directory path, a keras.Model ([0,1] images -> logits, run with
    training=False) or a logits_fn. `attacks`: names (`resolve_attacks`) or AttackSpecs already resolved;
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
    compile every attack with XLA (the report then records "jit_compile": true).

    Every attack's outputs are checked against its threat model (`tfadv.evaluation.runner.check_threat_model`):
    invalid ones count as not broken and are counted per attack (`invalid_outputs`, `invalid_reasons`, a line in
    `warnings`); each attack records its `max_perturbation` (fraction of [0, 1]) and, with a Budget (which knows
    the pixel levels), `max_perturbation_levels`. `save_adversarial` (a path whose directory exists): an .npz
    with, per attack, `<name>/images` (what it returned), `<name>/indices` (in (x, y)), `<name>/broken` and
    `<name>/valid`, and `attacks` (the names in order) (`save_adversarial_examples`).
    """
    import numpy as np

    check_arguments(batch_size=batch_size, seed=seed, eot_iter=eot_iter, audit_square_queries=audit_square_queries,
                    output=output, output_dir=output_dir, plots_dir=plots_dir, save_adversarial=save_adversarial)
    from_split = examples_source.endswith("test split")  # evaluate.py: the dataset's split, else --examples
    check_examples(x, y, flag="--num_examples" if from_split else "--examples")
    shard = check_shard(shard, len(x), audit, diagnostics, cossat_protocol,
                        "--num_examples" if from_split else "--examples")
    say = log or (lambda *_: None)
    radii = radii_of(budget)
    if step_size is None and hasattr(budget, "fraction"):
        step_size = budget.fraction("attack_step_size")
    source_fn = None if source_model is None else load_model(source_model, unchecked=jit_compile)[0]
    if attacks and all(isinstance(a, specs_lib.AttackSpec) for a in attacks):
        specs = list(attacks)  # already resolved (resolve_attacks)
    else:
        specs = resolve_attacks(attacks, suite, radii, step_size, source_fn, eot_iter, log)
    full_sweep = "full" in _as_list(suite) and "sweep" not in diagnostics
    if shard is not None and full_sweep:
        say("note: --shard: the full suite's accuracy sweep (a diagnostic) is skipped: it cannot be merged from "
            "shards")
    diagnostics = list(diagnostics) + (["sweep"] if full_sweep and shard is None else [])
    check_options(diagnostics, cossat_protocol)
    if audit is None:
        audit = shard is None
        if shard is not None:
            say("note: --shard: no gradient-masking audit (it cannot be merged from shards); run it without --shard")
    logits_fn, path = load_model(model, unchecked=jit_compile)  # XLA: without the serving input checks
    outputs_fn = _cossat_outputs(logits_fn) if cossat_protocol else None
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32).reshape(-1)
    data_flag = "--dataset" if from_split else "--examples"
    expected = getattr(logits_fn, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected[1:]):
        raise EvaluationError(f"{data_flag}: the examples have shape {tuple(x.shape[1:])} but the model takes "
                              f"{tuple(expected[1:])}")
    num_classes = int(logits_fn(x[:1]).shape[-1])
    if jit_compile:
        check_xla(logits_fn, x[:1])
    check_examples(x, y, num_classes, flag=data_flag)  # the labels against the model's classes
    try:
        specs_lib.check_classes(specs, num_classes)
    except ValueError as error:
        raise EvaluationError(f"--attacks/--suite: {error}") from None
    shown = path or model_name or "the model"
    if shard is None:
        which = f"{len(y)} examples"
    else:
        from tfadv.evaluation import shards

        start, stop = shards.shard_bounds(*shard, len(y))
        which = f"examples {start}..{stop - 1} (shard {shard[0]}/{shard[1]}) of {len(y)}"
    say(f"evaluating {shown} on {which} of the {examples_source}; eps {radii['linf']:.4f} (linf), "
        f"{radii['l2']:.4f} (l2), {radii['l1']:.4f} (l1); attacks: {', '.join(s.name for s in specs)}"
        + ("; attacks compiled with XLA" if jit_compile else ""))
    evaluator = runner.Evaluator(logits_fn, specs, batch_size, seed, progress, jit_compile)
    keep = save_adversarial is not None
    try:
        if shard is None:
            report = evaluator(x, y, log, keep_adversarial=keep)
            report.pop("per_example_robust")
            report.pop("per_example_correct")
        else:  # no audit etc. below
            report = shards.evaluate_shard(evaluator, x, y, shard, log, model_name or shown, keep_adversarial=keep)
    except runner.XLAUnsupportedError as error:
        raise EvaluationError(f"--jit_compile: {error}") from None
    if keep:
        save_adversarial_examples(save_adversarial, report.pop("adversarial"))
        say(f"adversarial examples written to {save_adversarial}")
    report.update(report_fields or {})
    report.update({"eps": radii["linf"], "eps_l2": radii["l2"], "eps_l1": radii["l1"]})
    if hasattr(budget, "to_json"):
        report["budget"] = budget.to_json()
    add_perturbation_levels(report, getattr(budget, "pixel_max", None))
    if jit_compile:
        report["jit_compile"] = True
    say(reports.format_table(report))
    chance = 1.0 / num_classes
    if shard is None and report["clean_accuracy"] <= chance + CHANCE_MARGIN:
        # labels that do not belong to the model (another dataset, labels rolled by one) look like a fragile model
        warning = (f"clean accuracy {report['clean_accuracy']:.3f} is at chance level ({chance:.3f}): the labels may "
                   f"not be the model's (another dataset or label order?); the robust accuracies measure nothing")
        report.setdefault("warnings", []).append(warning)
        say(f"WARNING: {warning}")
    if audit:
        from tfadv.evaluation import audit as audit_lib

        checks = audit_lib.audit(logits_fn, x, y, report, radii["linf"], batch_size, seed=seed,
                                 square_queries=audit_square_queries)
        report["audit"] = checks
        say(audit_lib.format_audit(checks))
        warning = audit_lib.summary(checks)
        if warning:
            say(f"WARNING: {warning}: treat these robust accuracies as upper bounds")
    if output_dir:
        plots = plots_dir or runs.plots_dir(output_dir)
    else:
        plots = plots_dir or (os.path.join(os.path.dirname(os.path.abspath(output)), runs.PLOTS_DIR) if output
                              else "eval_plots")
    if diagnostics:
        os.makedirs(plots, exist_ok=True)
        report["diagnostics"] = run_diagnostics(diagnostics, logits_fn, x, y, radii["linf"], plots, say)
    if cossat_protocol:
        report["cossat"] = _cossat(outputs_fn, x, y, specs, radii, COSSAT_PROTOCOLS[cossat_protocol], batch_size,
                                   seed, say)
        for protocol, result in report["cossat"].items():  # invalid attack outputs, said at the top as well
            report.setdefault("warnings", []).extend(f"Co-SSAT {protocol}: {w}" for w in result.get("warnings", []))
    write_report(report, output=output, output_dir=output_dir, plots=plots, model_name=model_name or shown, log=say)
    return report


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
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)
    return path


def write_report(report: dict, output: Optional[str] = None, output_dir: Optional[str] = None,
                 plots: Optional[str] = None, model_name: str = "model", log: Callable = print):
    """The JSON report to `output` and to output_dir/report.json; with `output_dir` also the bar chart
    (`plots`/robust_accuracy.png) and report.md."""
    targets = [output] if output else []
    if output_dir:
        targets.append(runs.path(output_dir, runs.REPORT_JSON))
    for target in targets:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        runs.atomic_write(target, runs.json_text(report))
        log(f"report written to {target}")
    if output_dir:
        plots = plots or runs.plots_dir(output_dir)
        os.makedirs(plots, exist_ok=True)
        chart = reports.plot_report(report, os.path.join(plots, runs.ROBUST_ACCURACY_PLOT),
                                    f"{os.path.basename(os.path.normpath(model_name))}: robust accuracy")
        log(f"chart written to {chart}")
        markdown = runs.path(output_dir, runs.REPORT_MD)
        runs.atomic_write(markdown, reports.format_markdown(report, report.get("audit"), f"Robustness of {model_name}")
                          + f"\n![robust accuracy]({os.path.relpath(chart, output_dir)})\n")
        log(f"summary written to {markdown}")


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
