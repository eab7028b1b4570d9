"""Every 32x32x3 preset on real images: each flagfile (and flags/cifar10.cfg with every --defense) trains 2 short
epochs on the CIFAR-10 subset (validation on a held-out 2 %, final PGD-20, SavedModel), then evaluate.py runs
AutoAttack-standard on a few test images; prints a Markdown table with the steady-state speed (the 2nd epoch)
and the projected time of the preset's full recipe on this CPU and, from the FLOP count, on one GPU.
Finished rows are skipped, so the table can be built in parts.

  python ../shared/data/cifar10_subset/build_tfds.py /tmp/c10
  python scripts/preset_table.py --data_dir=/tmp/c10 --runs_dir=/tmp/preset-runs --markdown=docs/presets.md
"""

import csv
import json
import os
import re

from absl import app, flags

import studylib
from tfadv import cli
from tfadv.training import registry

flags.DEFINE_string("data_dir", None, "the CIFAR-10 subset as a tensorflow-datasets directory (build_tfds.py)")
flags.DEFINE_string("runs_dir", None, "one run directory per row (outside the repository)")
flags.DEFINE_integer("train_examples", 256, "training images per short epoch (the rest of the subset is unused)")
flags.DEFINE_integer("autoattack_examples", 8, "test images for evaluate.py --suite=autoattack")
flags.DEFINE_list("only", [], "rows to run (their names, e.g. cifar10-pgd); default all")
flags.DEFINE_string("markdown", None, "also write the table here")
flags.DEFINE_boolean("report_only", False, "run nothing: tabulate the rows already finished (row.json)")
FLAGS = flags.FLAGS

EXTRA = {"free": "--epochs=25",  # FGSM-RS steps 1.25 eps and Free-AT eps by default; their recipes are rows below
         "label_smoothing": "--ls_method=uniform --ls_alpha=0.95 --noise_sigma=20",
         "logit_squeeze": "--squeeze_beta=10 --noise_sigma=20"}
ROWS = [("cifar10", name, EXTRA.get(name, "")) for name in registry.names()] + [
    ("cifar10_cpu", "pgd", ""), ("cifar100", "pgd", ""), ("svhn", "pgd", ""),
    ("bat_cifar10", "bat", ""), ("bat_cifar100", "bat", ""), ("bat_svhn", "bat", ""),
    ("trades_cifar10", "trades", ""), ("ssat_cifar10", "ssat", ""),
    ("fgsm_rs_cifar10", "fgsm_rs", ""), ("free_cifar10", "free", ""),
    ("smoothening_cifar10", "natural", ""), ("smoothening_cifar10", "pgd", ""),
    ("smoothening_cifar10", "pgd", "--kd_adv_teacher={smoothening_cifar10-pgd} "
     "--kd_std_teacher={smoothening_cifar10-natural} --swa --swa_start_epoch=2"),
    ("smoothening_svhn", "pgd", "")]


def row_name(preset, defense, extra):
    return f"{preset}-{defense}" + ("-kd-swa" if "kd_adv" in extra else "")


def run_row(preset, defense, extra, shapes_dir):
    name = row_name(preset, defense, extra)
    out = os.path.join(FLAGS.runs_dir, name)
    os.makedirs(out, exist_ok=True)
    extra = re.sub(r"\{([^}]+)\}", lambda m: os.path.join(FLAGS.runs_dir, m.group(1), "run"), extra)  # teachers
    recipe = studylib.flags_of(f"flags/{preset}.cfg", [f"--defense={defense}", *extra.split()])
    data_dir = FLAGS.data_dir if recipe["dataset"] == "cifar10" else shapes_dir
    log = os.path.join(out, "log.txt")
    code, _ = studylib.run(["scripts/train.py", f"--flagfile=flags/{preset}.cfg", f"--defense={defense}",
                            *extra.split(), f"--data_dir={data_dir}", "--epochs=2", "--val_every=1",
                            f"--train_examples={FLAGS.train_examples}", "--val_fraction=0.02", "--eval_examples=32",
                            f"--output_dir={out}/run"], log, os.path.join(out, "run", "metrics.json"))
    row = {"name": name, "preset": preset, "defense": defense, "extra": extra, "stage": "train"}
    if code == 0:
        row["stage"] = "autoattack"
        code, _ = studylib.run(["scripts/evaluate.py", f"--model_dir={out}/run", "--suite=autoattack",
                                f"--num_examples={FLAGS.autoattack_examples}", f"--data_dir={data_dir}",
                                f"--output_dir={out}/autoattack", "--noprogress"], log,
                               os.path.join(out, "autoattack", "report.json"))
    if code != 0:
        row["failure"] = studylib.last_lines(log)
        return row
    row["stage"] = "done"
    with open(os.path.join(out, "run", "history.csv")) as handle:
        second = list(csv.DictReader(handle))[-1]
    seconds, images = float(second["epoch_seconds"]), FLAGS.train_examples
    model = recipe["model"]
    options = ({"depth": int(recipe["wrn_depth"]), "width": int(recipe["wrn_width"])}
               if model == "wide_resnet" else {})
    classes = 100 if recipe["dataset"] == "cifar100" else 10
    full = studylib.FULL_TRAIN[recipe["dataset"]] * (1 - float(recipe["val_fraction"]))
    epochs = int(recipe["epochs"])
    flops = studylib.forward_flops(model, (32, 32, 3), classes, **options)
    row.update(network=model + (f"-{options['depth']}-{options['width']}" if options else ""),
               precision=recipe["mixed_precision"], images_per_second=images / seconds,
               epoch_seconds=seconds, epoch_images=images, full_epochs=epochs, full_images=int(full),
               cpu_hours=seconds / images * full * epochs / 3600, forward_gflops=flops / 1e9,
               passes=studylib.passes_per_image(recipe),
               gpu_hours=flops * studylib.passes_per_image(recipe) * full * epochs / studylib.GPU_FLOPS / 3600)
    return row


def pending(preset, defense, extra):
    return {"name": row_name(preset, defense, extra), "preset": preset, "defense": defense, "extra": extra,
            "stage": "pending"}


def table(rows):
    lines = [f"| preset | defense | network | end to end | img/s (2nd epoch) | s per epoch of {FLAGS.train_examples} "
             f"| full recipe: epochs x images | this CPU | GPU ({studylib.GPU_NAME}) |", "|" + " --- |" * 9]
    for r in rows:
        extra = "+ KD + SWA" if "kd_adv" in r["extra"] else r["extra"]
        if r["stage"] == "pending":
            lines.append(f"| {r['preset']} | {r['defense']} {extra} | | not run yet (the command resumes here) "
                         f"| | | | | |")
            continue
        if r["stage"] != "done":
            lines.append(f"| {r['preset']} | {r['defense']} {extra} | | FAILED at {r['stage']}: "
                         f"{r.get('failure', '')} | | | | | |")
            continue
        lines.append(f"| {r['preset']} | {r['defense']} {extra} | "
                     f"{r['network']} ({r['precision']}) | train, PGD-20, SavedModel, AutoAttack | "
                     f"{r['images_per_second']:.1f} | {r['epoch_seconds']:.0f} | {r['full_epochs']} x "
                     f"{r['full_images']} | {r['cpu_hours']:.0f} h | {r['gpu_hours'] * 60:.0f} min |")
    return "\n".join(lines)


def main(argv):
    del argv
    if not FLAGS.data_dir or not FLAGS.runs_dir:
        raise app.UsageError("--data_dir and --runs_dir are required")
    shapes_dir = os.path.join(FLAGS.runs_dir, "shapes")
    if not FLAGS.report_only:
        studylib.make_shape_dirs(FLAGS.data_dir, shapes_dir)
    rows = []
    for preset, defense, extra in ROWS:
        if FLAGS.only and row_name(preset, defense, extra) not in FLAGS.only:
            continue
        saved = os.path.join(FLAGS.runs_dir, row_name(preset, defense, extra), "row.json")
        if FLAGS.report_only:
            rows.append(json.load(open(saved)) if os.path.exists(saved) else pending(preset, defense, extra))
            continue
        rows.append(run_row(preset, defense, extra, shapes_dir))
        studylib.write_json(os.path.join(FLAGS.runs_dir, row_name(preset, defense, extra), "row.json"), rows[-1])
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    studylib.write_markdown(FLAGS.markdown, table(rows))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
