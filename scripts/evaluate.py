"""Evaluate a SavedModel (or a tfadv run dir) under attacks: clean, per-attack and worst-case accuracy.

  python scripts/evaluate.py --model_dir=runs/digits-pgd --attacks=fgsm,pgd20,pgd100,cw20 --output=eval.json
  python scripts/evaluate.py --model_dir=runs/digits-pgd --suite=standard,autoattack --output_dir=runs/digits-pgd/eval

`--suite=autoattack` is AutoAttack-standard (APGD-CE -> APGD-T -> FAB-T -> Square, each on the points still
robust); `--suite=autoattack_rand` is AutoAttack's version for randomised defenses (APGD-CE -> APGD-DLR, 20
EOT draws per step); suites combine with commas. `--eot_iter=N` averages the gradient of every APGD attack
over N forward passes (randomised models). `--output_dir` gets report.json, report.md and plots/.

The dataset and eps default to what the run recorded; `--flagfile`, `--dataset` and `--eps` (pixel levels)
override them. `--examples=PATH.npz` (arrays x in [0,1] NHWC and y) replaces the dataset's test split.
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402

from tfadv import data, evaluation, export  # noqa: E402
from tfadv.evaluation import audit as audit_lib  # noqa: E402
from tfadv.evaluation import cossat_protocols, diagnostics as linear, landscape  # noqa: E402

SUITES = {
    "standard": ["fgsm", "pgd20", "pgd100", "cw20", "cw100", "pgd20_l2"],
    # full = standard + C&W, DeepFool, restarts, the sweeps (and transfer attacks when --source_model is given)
    "full": ["fgsm", "pgd20", "pgd100", "cw20", "cw100", "dlr100", "pgd50_r5", "apgd_ce", "apgd_t", "pgd20_l2",
             "pgd20_l1", "cwl2", "deepfool_l2", "deepfool_linf"],
    # AutoAttack as one cascade (tfadv.evaluation.autoattack_specs): (version, norm)
    "autoattack": ("standard", "linf"),
    "autoattack_l2": ("standard", "l2"),
    "autoattack_rand": ("rand", "linf"),
    "autoattack_rand_l2": ("rand", "l2"),
}
DIAGNOSTICS = ("eps_l", "gradients", "lipschitz", "linearity", "landscape", "confidence", "sweep")

cli.define_train_flags()  # so that a training flagfile can be passed as it is
flags.DEFINE_string("model_dir", None, "a SavedModel directory or a tfadv run directory")
flags.DEFINE_list("attacks", ["fgsm", "pgd20", "cw20"], "attacks, e.g. fgsm,pgd20,pgd100,cw20,dlr50,pgd20_l2,pgd50_r5,"
                  "transfer_pgd20 (with --source_model); with --suite, only when given explicitly (then added to the suites)")
flags.DEFINE_list("suite", [], f"named attack suites, comma-separated: {', '.join(SUITES)}")
flags.DEFINE_string("source_model", None, "transfer attacks: craft on this SavedModel / run dir")
flags.DEFINE_boolean("audit", True, "run the gradient-masking audit")
flags.DEFINE_integer("audit_square_queries", 1000, "the audit runs Square with this many queries when the suite "
                     "has no black-box attack (0: skip)")
flags.DEFINE_list("diagnostics", [], f"diagnostics: {', '.join(DIAGNOSTICS)}")
flags.DEFINE_string("plots_dir", None, "where diagnostic PNGs go (default: next to --output, or ./eval_plots)")
flags.DEFINE_string("cossat_protocol", None, "for a Co-SSAT SavedModel: white_box (attack the composite and each "
                    "branch), half_white_box (attack SSAT only), aa_dispatch (paper 000 App. H.2: AutoAttack on each branch, "
                    "dispatched by the detector), both (white + half) or all")
flags.DEFINE_float("eps_l2", None, "l2 radius in pixel levels (default: 0.5 of the pixel range)")
flags.DEFINE_float("eps_l1", None, "l1 radius in pixel levels (default: 12 in [0,1] units for 32x32x3 images, "
                                    "scaled by the number of input values)")
flags.DEFINE_float("attack_step_size", None, "PGD step size in pixel levels (default: eps/4 for linf, 2.5 eps/steps)")
flags.DEFINE_integer("num_examples", 1000, "evaluate on the first N test examples (-1: all)")
flags.DEFINE_string("examples", None, "an .npz with x (float [0,1], NHWC) and y (int) to evaluate instead")
flags.DEFINE_string("output", None, "write the report as JSON here")
flags.DEFINE_boolean("progress", True, "show a progress bar with ETA for each attack (stderr)")
flags.DEFINE_integer("eval_batch_size", 256, "examples per attack batch")
flags.DEFINE_integer("eot_iter", 1, "APGD attacks (apgd_ce, apgd_dlr, apgd_t, the AutoAttack suites) average the "
                     "gradient over this many forward passes per step (EOT, for randomised models; "
                     "--suite=autoattack_rand uses 20)", lower_bound=1)
FLAGS = flags.FLAGS


def run_diagnostics(names, logits_fn, x, y, eps, plots):
    """The requested geometry diagnostics (tfadv.evaluation.landscape); PNGs into `plots`."""
    out = {}
    if "eps_l" in names:
        result = linear.linear_robustness(logits_fn, x, y, eps)
        linear.plot_linear_robustness(result, os.path.join(plots, "linear_robustness.png"))
        result.pop("per_example")
        out["eps_l"] = result
        print(f"linear robustness estimate (paper 004 Eq. 4): predicted {result['predicted_robust_accuracy']:.4f}, "
              f"FGSM-CE {result['fgsm_ce_accuracy']:.4f}, FGSM-CW {result['fgsm_cw_accuracy']:.4f}; median eps_L "
              f"{result['eps_l']['median']}, logit gap {result['logit_gap']['median']:.4g}, gradient gap "
              f"{result['gradient_gap']['median']:.4g}, coherence {result['coherence']['median']:.3f}")
    if "gradients" in names:
        out["gradients"] = landscape.gradient_magnitudes(logits_fn, x, y)
        print("input-gradient ||grad_x CE||_2^2 (paper 002 Table 2):",
              json.dumps(out["gradients"]["squared_l2_norm"]))
    if "lipschitz" in names:
        out["lipschitz"] = landscape.local_lipschitz(logits_fn, x, eps)
        print(f"local Lipschitz: upper {out['lipschitz']['upper']:.4g}, lower {out['lipschitz']['lower']:.4g}")
    if "linearity" in names:
        out["linearity"] = landscape.local_linearity(logits_fn, x, y, eps)
        print(f"local linearity: gradient alignment {out['linearity']['gradient_alignment']:.4f}, "
              f"linearity gap {out['linearity']['linearity_gap']:.4g}")
    if "landscape" in names:
        out["landscape"] = landscape.loss_landscape(logits_fn, x, y, eps)
        landscape.plot_landscape(out["landscape"], os.path.join(plots, "loss_landscape.png"))
    if "confidence" in names:
        out["confidence"] = landscape.confidence_profile(logits_fn, x, y, eps)
        print("sorted confidence (clean):", " ".join(f"{v:.3f}" for v in out["confidence"]["clean"]))
    if "sweep" in names:
        eps_values = [eps * f for f in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)]
        out["sweep"] = landscape.accuracy_sweep(logits_fn, x, y, eps_values, [1, 2, 5, 10, 20, 50, 100])
        landscape.plot_sweep(out["sweep"], os.path.join(plots, "accuracy_sweeps.png"))
        print("accuracy vs eps:", " ".join(f"{v:.3f}" for v in out["sweep"]["accuracy_vs_eps"]))
    return out


def _input_size(spec):
    height, width, channels = spec.image_shape
    return height * width * channels


def _saved_model_path(path):
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    candidate = os.path.join(path, "saved_model", "1")
    if os.path.exists(os.path.join(candidate, "saved_model.pb")):
        return candidate
    cli.fail(f"--model_dir={path}: no SavedModel there (nor in {candidate})")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]} (flags are --name=value)")
    cli.quiet_logging()
    if not FLAGS.model_dir:
        cli.fail("--model_dir is required (a SavedModel or a tfadv run directory)")
    path = _saved_model_path(FLAGS.model_dir)
    metadata = export.read_metadata(path)
    dataset = FLAGS.dataset if FLAGS["dataset"].present or "dataset" not in metadata else metadata["dataset"]
    try:
        spec = data.get_spec(dataset)
    except ValueError as error:
        cli.fail(f"--dataset: {error}")
    if FLAGS["eps"].present or "eps" not in metadata:
        eps = spec.to_fraction(FLAGS.eps)
    else:
        eps = float(metadata["eps"])
    if not 0 <= eps <= 1:
        cli.fail(f"--eps: {FLAGS.eps} is outside the pixel range of {dataset} (0..{spec.pixel_max:g} levels)")
    radii = {
        "linf": eps,
        "l2": spec.to_fraction(FLAGS.eps_l2) if FLAGS.eps_l2 is not None else 0.5,
        "l1": spec.to_fraction(FLAGS.eps_l1) if FLAGS.eps_l1 is not None else 12.0 * _input_size(spec) / 3072,
    }
    step = spec.to_fraction(FLAGS.attack_step_size) if FLAGS.attack_step_size is not None else None
    source_fn = None
    if FLAGS.source_model:
        source_fn = export.load_logits_fn(_saved_model_path(FLAGS.source_model))
    names, specs = list(FLAGS.attacks), []
    if FLAGS.suite:
        bad = [name for name in FLAGS.suite if name not in SUITES]
        if bad:
            cli.fail(f"--suite: unknown {', '.join(map(repr, bad))}; valid: {', '.join(SUITES)}")
        names = list(FLAGS.attacks) if FLAGS["attacks"].present else []  # --attacks adds to the suites
        for name in FLAGS.suite:
            if isinstance(SUITES[name], list):
                names += [n for n in SUITES[name] if n not in names]
            else:
                version, norm = SUITES[name]
                specs += evaluation.autoattack_specs(radii, norm, version)
        if source_fn is not None and "transfer_pgd20" not in names:
            names.append("transfer_pgd20")
    try:
        specs = [evaluation.parse_attack(name, radii, step, source_fn) for name in names] + specs
    except ValueError as error:
        cli.fail(f"--attacks: {error}")
    if FLAGS["eot_iter"].present:
        if not any(s.kind in ("apgd", "apgd_t") for s in specs):
            cli.fail(f"--eot_iter applies to APGD attacks (apgd_ce, apgd_dlr, apgd_t, --suite=autoattack*), and none "
                     f"of {', '.join(s.name for s in specs) or 'the selected attacks'} is one")
        specs = [evaluation.with_eot(s, FLAGS.eot_iter) if s.kind in ("apgd", "apgd_t") else s for s in specs]
    unique = {}
    explicit = {evaluation.parse_attack(n, radii, step, source_fn).name for n in FLAGS.attacks} \
        if FLAGS["attacks"].present else set()
    for s in specs:  # pgd20 and pgd20_linf are one attack (canonical names): run it once
        if s.name in unique and unique[s.name].group != s.group:
            alone, cascade = (s, unique[s.name]) if s.group is None else (unique[s.name], s)
            if alone.name in explicit:
                cli.fail(f"--attacks: {s.name} is asked for both alone and in the {cascade.group} cascade; drop it "
                         f"from --attacks or run the suites separately")
            # a suite's standalone entry that another suite runs as a cascade stage: reported with the cascade
            print(f"note: {s.name} runs as a stage of the {cascade.group} cascade (on the points still robust), "
                  f"not also alone")
            unique[s.name] = cascade
            continue
        unique.setdefault(s.name, s)
    specs = list(unique.values())
    unknown = [d for d in FLAGS.diagnostics if d not in DIAGNOSTICS]
    if unknown:
        cli.fail(f"--diagnostics: unknown {unknown}; valid: {', '.join(DIAGNOSTICS)}")
    diagnostics = list(FLAGS.diagnostics) + (["sweep"] if "full" in FLAGS.suite and "sweep" not in
                                             FLAGS.diagnostics else [])
    protocols = {"white_box": ["white_box"], "half_white_box": ["half_white_box"], "aa_dispatch": ["aa_dispatch"],
                 "both": ["white_box", "half_white_box"], "all": ["white_box", "half_white_box", "aa_dispatch"],
                 None: []}
    if FLAGS.cossat_protocol not in protocols:
        cli.fail(f"--cossat_protocol: unknown {FLAGS.cossat_protocol!r}; valid: white_box, half_white_box, "
                 f"aa_dispatch, both, all")

    if FLAGS.examples:
        try:
            x, y = data.load_examples(FLAGS.examples)
        except (OSError, ValueError) as error:
            cli.fail(f"--examples: {error}")
        source = FLAGS.examples
    else:
        try:
            splits = data.load(dataset, FLAGS.data_dir, 0.0, FLAGS.seed, FLAGS.download)
        except data.DataUnavailableError as error:
            cli.fail(str(error), code=1)
        x, y = data.take(splits.test, FLAGS.num_examples)
        source = f"{dataset} test split"

    logits_fn = export.load_logits_fn(path)
    expected = tuple(logits_fn.input_shape[1:])
    if tuple(x.shape[1:]) != expected:
        cli.fail(f"the examples have shape {tuple(x.shape[1:])} but the model takes {expected}")
    num_classes = int(logits_fn(x[:1]).shape[-1])
    try:
        evaluation.check_classes(specs, num_classes)
    except ValueError as error:
        cli.fail(f"--attacks/--suite: {error}")
    print(f"evaluating {path} on {len(y)} examples of the {source}; eps {eps:.4f} (linf), "
          f"{radii['l2']:.4f} (l2), {radii['l1']:.4f} (l1); attacks: {', '.join(s.name for s in specs)}")
    report = evaluation.evaluate(logits_fn, x, y, specs, FLAGS.eval_batch_size, log=print, seed=FLAGS.seed,
                                 progress=FLAGS.progress)
    report.pop("per_example_robust")
    report.update({"model_dir": FLAGS.model_dir, "dataset": dataset, "source": source, "eps": eps,
                   "eps_l2": radii["l2"], "eps_l1": radii["l1"]})
    print(evaluation.format_table(report))
    if FLAGS.audit:
        checks = audit_lib.audit(logits_fn, x, y, report, eps, FLAGS.eval_batch_size, seed=FLAGS.seed,
                                 square_queries=FLAGS.audit_square_queries)
        report["audit"] = checks
        print(audit_lib.format_audit(checks))
        warning = audit_lib.summary(checks)
        if warning:
            print(f"WARNING: {warning}: treat these robust accuracies as upper bounds")
    # --output_dir (shared with train.py's flags): report.json, report.md and plots/ go there
    report_dir = FLAGS.output_dir if FLAGS["output_dir"].present and FLAGS.output_dir else None
    if report_dir:
        plots = FLAGS.plots_dir or os.path.join(report_dir, "plots")
    else:
        plots = FLAGS.plots_dir or (os.path.join(os.path.dirname(os.path.abspath(FLAGS.output)), "plots")
                                    if FLAGS.output else "eval_plots")
    if diagnostics:
        os.makedirs(plots, exist_ok=True)
        report["diagnostics"] = run_diagnostics(diagnostics, logits_fn, x, y, eps, plots)
    if protocols[FLAGS.cossat_protocol]:
        loaded = logits_fn.saved_model.signatures["serving_default"]
        if "ssat_logits" not in loaded.structured_outputs:
            cli.fail("--cossat_protocol needs a Co-SSAT SavedModel (from scripts/build_cossat.py)")
        outputs_fn = lambda images: loaded(images=images)  # noqa: E731
        report["cossat"] = {}
        for protocol in protocols[FLAGS.cossat_protocol]:
            # App. H.2 dispatches AutoAttack's examples: with no AutoAttack suite requested, it brings its own
            chosen = specs if protocol != "aa_dispatch" or any(s.group for s in specs) else \
                evaluation.autoattack_specs(radii)
            result = cossat_protocols.evaluate(outputs_fn, x, y, chosen, protocol, FLAGS.eval_batch_size,
                                               log=print, seed=FLAGS.seed)
            report["cossat"][protocol] = result
            print(f"Co-SSAT {protocol}: worst case {result['worst_case_accuracy']:.4f}")
    outputs = [FLAGS.output] if FLAGS.output else []
    if report_dir:
        outputs.append(os.path.join(report_dir, "report.json"))
    for output in outputs:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        with open(output, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"report written to {output}")
    if report_dir:
        os.makedirs(plots, exist_ok=True)
        chart = evaluation.plot_report(report, os.path.join(plots, "robust_accuracy.png"),
                                       f"{os.path.basename(os.path.normpath(FLAGS.model_dir))}: robust accuracy")
        print(f"chart written to {chart}")
        markdown = os.path.join(report_dir, "report.md")
        with open(markdown, "w") as handle:
            handle.write(evaluation.format_markdown(report, report.get("audit"),
                                                    f"Robustness of {FLAGS.model_dir}"))
            handle.write(f"\n![robust accuracy]({os.path.relpath(chart, report_dir)})\n")
        print(f"summary written to {markdown}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
