"""Calibrate the Co-SSAT detector on an SSAT run and export SSAT + base + detector as ONE SavedModel.

  python scripts/build_cossat.py --ssat=runs/digits-ssat --base=runs/digits-pgd --flagfile=flags/digits.cfg \\
      --output_dir=runs/digits-cossat

On training examples, untargeted PGD-CE examples against SSAT are the negatives and targeted ones (PGD on the
CW margin toward the most confusing class, and APGD-T) the positives — twice as many as negatives, so by
default tau maximises the balanced accuracy (TPR + TNR) / 2 among thresholds reaching --min_recall
(--calibration_balance). Per metric an ROC curve with the chosen point (plots/detector_roc.png) and the paper's
Table 7 columns plus balanced accuracy (calibration.json, calibration.md); the chosen threshold(s) in
detector.json; what clean test images do in metrics.json; the serving graph in saved_model/1.
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402

from absl import app, flags  # noqa: E402

from tfadv import cossat, data  # noqa: E402
from tfadv.callbacks import atomic_write  # noqa: E402

cli.define_train_flags()  # a dataset flagfile can be passed as it is
flags.DEFINE_string("ssat", None, "the SSAT run directory")
flags.DEFINE_string("base", None, "the base (e.g. PGD-AT) run directory")
flags.DEFINE_string("detector_mode", "dlr", "dlr (DLR <= tau selects the base model) or vote (3 of 5 metrics)")
flags.DEFINE_float("min_recall", 0.9, "calibration: the threshold must flag at least this share of targeted examples")
flags.DEFINE_string("calibration_balance", "balanced_accuracy",
                    "the calibration set has 2 targeted (positive) per untargeted (negative) example: balanced_accuracy "
                    "= tau maximises (TPR + TNR) / 2 at --min_recall; subsample = keep as many positives as "
                    "negatives (random, seeded by the SSAT run's --seed) and maximise accuracy; none = maximise "
                    "accuracy on the 2:1 set (biased toward flagging)")
flags.DEFINE_integer("calibration_examples", 1000, "training examples used for calibration")
flags.DEFINE_integer("calibration_steps", 20, "PGD steps of the calibration attacks")
flags.DEFINE_integer("routing_examples", -1, "clean test examples for the routing report (-1: all)")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    cli.quiet_logging()
    for flag in ("ssat", "base", "output_dir"):
        if not FLAGS[flag].value:
            cli.fail(f"--{flag} is required")
    if FLAGS.detector_mode not in cossat.MODES:
        cli.fail(f"--detector_mode: unknown {FLAGS.detector_mode!r}; valid: {', '.join(cossat.MODES)}")
    if FLAGS.calibration_balance not in cossat.BALANCES:
        cli.fail(f"--calibration_balance: unknown {FLAGS.calibration_balance!r}; valid: {', '.join(cossat.BALANCES)}")
    if not 0 < FLAGS.min_recall <= 1:
        cli.fail(f"--min_recall must be in (0, 1], got {FLAGS.min_recall}")
    out = FLAGS.output_dir
    if os.path.exists(os.path.join(out, "metrics.json")) and not FLAGS.overwrite:
        cli.fail(f"--output_dir={out} holds a finished Co-SSAT build; pass --overwrite or choose another directory")
    try:
        ssat_network, ssat_config = cossat.load_run_network(FLAGS.ssat)
        base_network, base_config = cossat.load_run_network(FLAGS.base)
    except FileNotFoundError as error:
        cli.fail(str(error))
    if ssat_config.dataset != base_config.dataset:
        cli.fail(f"--base was trained on {base_config.dataset} but --ssat on {ssat_config.dataset}")
    if ssat_config.defense != "ssat":
        print(f"warning: --ssat={FLAGS.ssat} was trained with --defense={ssat_config.defense}, not ssat")
    spec = data.get_spec(ssat_config.dataset)
    if spec.num_classes < 3:
        cli.fail("the DLR detector needs at least 3 classes")
    try:
        splits = data.load(ssat_config.dataset, FLAGS.data_dir or ssat_config.data_dir, 0.0, ssat_config.seed,
                           FLAGS.download)
    except data.DataUnavailableError as error:
        cli.fail(str(error), code=1)
    eps = spec.to_fraction(ssat_config.eps)

    x_cal, y_cal = data.take(splits.train, FLAGS.calibration_examples)
    print(f"calibrating on {len(y_cal)} training examples: PGD-{FLAGS.calibration_steps} at eps {eps:.4f} "
          "(untargeted CE = negatives; targeted CW toward the most confusing class and APGD-T = positives)")
    positive, negative = cossat.calibration_examples(ssat_network, x_cal, y_cal, eps, FLAGS.calibration_steps)
    detector, report = cossat.calibrate(positive, negative, FLAGS.detector_mode, FLAGS.min_recall,
                                        FLAGS.calibration_balance, ssat_config.seed)

    if FLAGS.overwrite and os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "plots"), exist_ok=True)
    cossat.plot_roc(report, os.path.join(out, "plots", "detector_roc.png"))
    lines = [f"Calibration set: {report['num_positive']} targeted (positive) and {report['num_negative']} untargeted "
             f"(negative) adversarial examples (of {report['num_positive_available']} / "
             f"{report['num_negative_available']}); --calibration_balance={report['balance']}: tau maximises "
             f"{report['criterion'].replace('_', ' ')} among thresholds with TPR >= {report['min_recall']}.", "",
             "| metric | AUC | direction | threshold | TPR | FPR | precision | accuracy | balanced accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for metric, entry in report["metrics"].items():
        c = entry["chosen"]
        lines.append(f"| {metric} | {entry['auc']:.3f} | {c['direction']} | {c['threshold']:.4g} | {c['tpr']:.3f} | "
                     f"{c['fpr']:.3f} | {c['precision']:.3f} | {c['accuracy']:.3f} | {c['balanced_accuracy']:.3f} |")
    if "vote" in report:
        v = report["vote"]
        lines.append(f"| 3-of-5 vote | | | >= {detector.min_votes} votes | {v['tpr']:.3f} | {v['fpr']:.3f} | "
                     f"{v['precision']:.3f} | {v['accuracy']:.3f} | {v['balanced_accuracy']:.3f} |")
    summary = lines[:]
    lines += ["", "Candidates around the chosen DLR threshold (paper 000 Table 7 columns):", "",
              "| tau | TPR | FPR | precision | accuracy | balanced accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['threshold']:.4g} | {r['tpr']:.3f} | {r['fpr']:.3f} | {r['precision']:.3f} | {r['accuracy']:.3f} | "
              f"{r['balanced_accuracy']:.3f} |" for r in cossat.table_rows(report, "dlr")]
    atomic_write(os.path.join(out, "calibration.md"), "\n".join(lines) + "\n")
    atomic_write(os.path.join(out, "calibration.json"), json.dumps(report, indent=2))
    cossat.save_detector(detector, os.path.join(out, "detector.json"))
    print("\n".join(summary))

    model = cossat.CoSSAT(ssat_network, base_network, detector)
    x_test, y_test = data.take(splits.test, FLAGS.routing_examples)
    routing = cossat.routing_report(model, x_test, y_test)
    print(f"clean test images: {100 * routing['routed_to_base']:.1f}% routed to the base model; clean accuracy "
          f"Co-SSAT {routing['clean_accuracy_cossat']:.4f} (SSAT {routing['clean_accuracy_ssat']:.4f}, "
          f"base {routing['clean_accuracy_base']:.4f})")
    cossat.export(model, os.path.join(out, "saved_model", "1"), metadata={
        "dataset": ssat_config.dataset, "image_shape": list(spec.image_shape), "num_classes": spec.num_classes,
        "pixel_max": spec.pixel_max, "eps": eps, "defense": "cossat", "ssat_run": FLAGS.ssat,
        "base_run": FLAGS.base})
    metrics = {"detector": detector.to_json(), "clean_routing": routing, "calibration_examples": int(len(y_cal)),
               "eps": eps, "ssat_run": FLAGS.ssat, "base_run": FLAGS.base,
               "detector_auc": {m: e["auc"] for m, e in report["metrics"].items()},
               "calibration": {key: report[key] for key in ("balance", "criterion", "min_recall", "num_positive",
                                                            "num_negative")},
               "detector_calibration": {m: {k: e["chosen"][k] for k in ("tpr", "fpr", "accuracy", "balanced_accuracy")}
                                        for m, e in report["metrics"].items() if m in detector.thresholds}}
    if "vote" in report:
        metrics["detector_calibration"]["vote"] = {k: report["vote"][k]
                                                   for k in ("tpr", "fpr", "accuracy", "balanced_accuracy")}
    atomic_write(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2) + "\n")
    print(f"Co-SSAT SavedModel in {out}/saved_model/1")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
