"""Building a Co-SSAT model (paper 000 §5, App. G) from two finished tfadv runs: `build(ssat_run, base_run,
output_dir)` is everything scripts/build_cossat.py does, usable from Python.

On training examples of the SSAT run's dataset, untargeted PGD-CE examples against SSAT are the negatives and
targeted ones (PGD on the CW margin toward the most confusing class, and APGD-T) the positives; the detector is
calibrated on their SSAT logits (`cossat.calibrate`). The build directory then holds

    calibration.json  calibration.md   per metric the AUC, ROC and candidate table; the chosen threshold(s)
    detector.json                      the detector (`cossat.Detector.from_json`)
    plots/detector_roc.png             each metric's ROC curve with its chosen point
    metrics.json                       the detector, its calibration summary and what clean test images do
    saved_model/1/                     SSAT + base + detector as ONE serving graph (`cossat.export`)

Every argument is checked, both runs are loaded and compared, and the dataset is loaded before the (expensive)
calibration starts; nothing is written before it ends.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable, Optional

from tfadv import cossat, data, runs
from tfadv.config import ConfigError
from tfadv.evaluation.api import unwritable_reason


def build(ssat_run: str, base_run: str, output_dir: str, *, detector_mode: str = "dlr", min_recall: float = 0.9,
          calibration_balance: str = "balanced_accuracy", calibration_examples: int = 1000,
          calibration_steps: int = 20, routing_examples: int = -1, data_dir: Optional[str] = None,
          download: bool = False, overwrite: bool = False, log: Callable[[str], None] = print) -> dict:
    """Calibrates the Co-SSAT detector on `ssat_run` and writes SSAT + `base_run` + detector to `output_dir`.

    Args (the flags of scripts/build_cossat.py, same names):
      ssat_run, base_run: finished tfadv run directories (their final weights), trained on the same dataset.
      output_dir: the build's directory. A finished build there is refused unless `overwrite`, which removes a
        previous (finished or interrupted) build after calibration; a training run there is always refused.
      detector_mode: one of `cossat.MODES`: "dlr" (DLR <= tau selects the base model) or "vote" (3 of 5 metrics).
      min_recall: in (0, 1]; the threshold must flag at least this share of targeted examples.
      calibration_balance: one of `cossat.BALANCES` (how the 2:1 targeted:untargeted set is handled; "subsample"
        is seeded by the SSAT run's seed).
      calibration_examples: training examples attacked for calibration (-1: all).
      calibration_steps: steps of the calibration attacks (PGD step size eps / 4; APGD-T).
      routing_examples: clean test examples of the routing report (-1: all).
      data_dir, download: where the dataset is (default: the SSAT run's data_dir) and whether
        tensorflow-datasets may download it.
      log: receives the progress lines.

    The attacks use the SSAT run's eps (`run.budget.eps`) and random starts keyed on its seed, so the same runs
    and arguments give the same build. Returns the dict written to metrics.json.

    Raises ConfigError (naming the flag) for a bad argument, a missing or mismatched run or an unusable
    output_dir, and data.DataUnavailableError when the dataset is not available; all before any file is
    written.
    """
    ssat_run, base_run, output_dir = (os.fspath(p) if p is not None else None for p in (ssat_run, base_run,
                                                                                         output_dir))
    check_arguments(ssat_run, base_run, output_dir, detector_mode, min_recall, calibration_balance,
                    calibration_examples, calibration_steps, routing_examples)
    check_output_dir(output_dir, overwrite)
    ssat, base = load_runs(ssat_run, base_run, log)
    spec = data.get_spec(ssat.dataset)
    if spec.num_classes < 3:
        raise ConfigError("ssat", f"the DLR detector needs at least 3 classes; {ssat.dataset} has {spec.num_classes}")
    if data_dir is not None and spec.tfds_name is not None and not os.path.isdir(data_dir):
        raise ConfigError("data_dir", f"{data_dir!r} is not a directory")
    ssat_network, base_network = ssat.network(), base.network()
    splits = data.load(ssat.dataset, data_dir or ssat.data_dir, 0.0, download)
    eps = ssat.budget.eps

    x_cal, y_cal = data.take(splits.train, calibration_examples)
    log(f"calibrating on {len(y_cal)} training examples: PGD-{calibration_steps} at eps {eps:.4f} "
        "(untargeted CE = negatives; targeted CW toward the most confusing class and APGD-T = positives)")
    positive, negative = cossat.calibration_examples(ssat_network, x_cal, y_cal, eps, calibration_steps,
                                                     seed=ssat.seed)
    detector, report = cossat.calibrate(positive, negative, detector_mode, min_recall, calibration_balance,
                                        ssat.seed)

    if overwrite and is_build(output_dir):
        shutil.rmtree(output_dir)  # only a (finished or interrupted) build: other directories are written into
    os.makedirs(runs.plots_dir(output_dir), exist_ok=True)
    cossat.plot_roc(report, os.path.join(runs.plots_dir(output_dir), runs.DETECTOR_ROC_PLOT))
    table, summary = calibration_markdown(report, detector)
    runs.atomic_write(runs.path(output_dir, runs.CALIBRATION_MD), table)
    runs.atomic_write(runs.path(output_dir, runs.CALIBRATION_JSON), runs.json_text(report))
    cossat.save_detector(detector, runs.path(output_dir, runs.DETECTOR_FILE))
    log(summary)

    model = cossat.CoSSAT(ssat_network, base_network, detector)
    x_test, y_test = data.take(splits.test, routing_examples)
    routing = cossat.routing_report(model, x_test, y_test)
    log(f"clean test images: {100 * routing['routed_to_base']:.1f}% routed to the base model; clean accuracy "
        f"Co-SSAT {routing['clean_accuracy_cossat']:.4f} (SSAT {routing['clean_accuracy_ssat']:.4f}, "
        f"base {routing['clean_accuracy_base']:.4f})")
    saved_model = runs.saved_model_dir(output_dir)
    cossat.export(model, saved_model, metadata={
        "dataset": ssat.dataset, "image_shape": list(spec.image_shape), "num_classes": spec.num_classes,
        "pixel_max": spec.pixel_max, "eps": eps, "budget": ssat.budget.to_json(), "defense": "cossat",
        "ssat_run": ssat_run, "base_run": base_run})
    metrics = build_metrics(detector, report, routing, int(len(y_cal)), ssat, ssat_run, base_run)
    runs.atomic_write(runs.metrics_path(output_dir), runs.json_text(metrics) + "\n")
    log(f"Co-SSAT SavedModel in {saved_model}")
    return metrics


def check_arguments(ssat_run, base_run, output_dir, detector_mode, min_recall, calibration_balance,
                    calibration_examples, calibration_steps, routing_examples):
    """ConfigError (naming the flag) for the first bad argument of `build`; touches no file."""
    for flag, value in (("ssat", ssat_run), ("base", base_run), ("output_dir", output_dir)):
        if not value:
            raise ConfigError(flag, "is required")
    if detector_mode not in cossat.MODES:
        raise ConfigError("detector_mode", f"unknown {detector_mode!r}; valid: {', '.join(cossat.MODES)}")
    if calibration_balance not in cossat.BALANCES:
        raise ConfigError("calibration_balance",
                          f"unknown {calibration_balance!r}; valid: {', '.join(cossat.BALANCES)}")
    if not 0 < min_recall <= 1:  # also refuses NaN
        raise ConfigError("min_recall", f"must be in (0, 1], got {min_recall}")
    for flag, value in (("calibration_examples", calibration_examples), ("routing_examples", routing_examples),
                        ("calibration_steps", calibration_steps)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(flag, f"must be an integer, got {value!r}")
    for flag, value in (("calibration_examples", calibration_examples), ("routing_examples", routing_examples)):
        if value != -1 and value < 1:
            raise ConfigError(flag, f"must be a positive number of examples or -1 (all), got {value}")
    if calibration_steps < 1:
        raise ConfigError("calibration_steps", f"must be at least 1, got {calibration_steps}")


def is_build(directory: str) -> bool:
    """Whether `directory` holds a Co-SSAT build, finished (metrics.json) or interrupted (detector.json)."""
    return any(os.path.exists(runs.path(directory, name)) for name in (runs.METRICS_FILE, runs.DETECTOR_FILE))


def check_output_dir(output_dir: str, overwrite: bool):
    """ConfigError unless `output_dir` can take a build: not a file, not a training run, and not a finished
    build unless `overwrite`."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ConfigError("output_dir", f"{output_dir} is a file, not a directory")
    reason = unwritable_reason(output_dir, directory=True)
    if reason:
        raise ConfigError("output_dir", reason)
    if runs.is_run(output_dir):
        raise ConfigError("output_dir", f"{output_dir} is a training run (it has {runs.FLAGS_FILE}); choose "
                          "another directory")
    if os.path.exists(runs.metrics_path(output_dir)) and not overwrite:
        raise ConfigError("output_dir", f"{output_dir} holds a finished Co-SSAT build; pass --overwrite or choose "
                          "another directory")


def load_runs(ssat_run: str, base_run: str, log: Callable[[str], None] = print):
    """(ssat, base) `runs.Run`s, both finished (final weights on disk) and trained on the same dataset."""
    loaded = []
    for flag, path in (("ssat", ssat_run), ("base", base_run)):
        try:
            run = runs.load_run(path)
        except FileNotFoundError as error:
            raise ConfigError(flag, str(error)) from None
        if not run.has_checkpoint("final"):
            raise ConfigError(flag, f"{path} is not a finished tfadv run: "
                              f"{runs.checkpoint_path(path, 'final')} is missing")
        loaded.append(run)
    ssat, base = loaded
    if ssat.dataset != base.dataset:
        raise ConfigError("base", f"was trained on {base.dataset} but --ssat on {ssat.dataset}")
    if ssat.defense != "ssat":
        log(f"warning: --ssat={ssat_run} was trained with --defense={ssat.defense}, not ssat")
    return ssat, base


def calibration_markdown(report: dict, detector: cossat.Detector):
    """(calibration.md, its summary lines): the chosen point of every metric (and of the vote), then the
    candidate thresholds around the chosen DLR threshold (paper 000 Table 7 columns)."""
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
    summary = "\n".join(lines)
    lines += ["", "Candidates around the chosen DLR threshold (paper 000 Table 7 columns):", "",
              "| tau | TPR | FPR | precision | accuracy | balanced accuracy |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['threshold']:.4g} | {r['tpr']:.3f} | {r['fpr']:.3f} | {r['precision']:.3f} | "
              f"{r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} |" for r in cossat.table_rows(report, "dlr")]
    return "\n".join(lines) + "\n", summary


def build_metrics(detector: cossat.Detector, report: dict, routing: dict, num_calibration: int, ssat: runs.Run,
                  ssat_run: str, base_run: str) -> dict:
    """metrics.json of a build: the detector, its calibration summary, the clean routing report, the eps (as a
    fraction, and in both units under "budget") and which runs it came from."""
    rates = ("tpr", "fpr", "accuracy", "balanced_accuracy")
    metrics = {"detector": detector.to_json(), "clean_routing": routing, "calibration_examples": num_calibration,
               "eps": ssat.budget.eps, "budget": ssat.budget.to_json(), "ssat_run": ssat_run, "base_run": base_run,
               "detector_auc": {m: e["auc"] for m, e in report["metrics"].items()},
               "calibration": {key: report[key] for key in ("balance", "criterion", "min_recall", "num_positive",
                                                            "num_negative")},
               "detector_calibration": {m: {k: e["chosen"][k] for k in rates}
                                        for m, e in report["metrics"].items() if m in detector.thresholds}}
    if "vote" in report:
        metrics["detector_calibration"]["vote"] = {k: report["vote"][k] for k in rates}
    return metrics
