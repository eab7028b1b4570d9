"""Every 32x32x3 preset on real images (scripts/preset_table.py): each flagfile (and flags/cifar10.cfg with every
registered --defense) trains 2 short epochs on the CIFAR-10 subset (validation on a held-out 2 %, final PGD-20,
SavedModel), then evaluate.py runs AutoAttack-standard on a few test images. A row's table line has the
steady-state speed (the 2nd epoch) and the projected time of the preset's full recipe on this CPU and, from the
FLOP count (cost.py), on one GPU. Each finished row is kept as row.json in its directory."""

import csv
import dataclasses
import os
import re

from tfadv.studies import cost, jobs

EXTRA = {"free": "--epochs=25",  # FGSM-RS steps 1.25 eps and Free-AT eps by default; their recipes are rows below
         "label_smoothing": "--ls_method=uniform --ls_alpha=0.95 --noise_sigma=20",
         "logit_squeeze": "--squeeze_beta=10 --noise_sigma=20"}
# (flagfile under flags/, --defense, extra flags); {name} is the run directory of the row of that name (a teacher)
PRESET_ROWS = [
    ("cifar10_cpu", "pgd", ""), ("cifar100", "pgd", ""), ("svhn", "pgd", ""),
    ("bat_cifar10", "bat", ""), ("bat_cifar100", "bat", ""), ("bat_svhn", "bat", ""),
    ("trades_cifar10", "trades", ""), ("ssat_cifar10", "ssat", ""),
    ("fgsm_rs_cifar10", "fgsm_rs", ""), ("free_cifar10", "free", ""),
    ("smoothening_cifar10", "natural", ""), ("smoothening_cifar10", "pgd", ""),
    ("smoothening_cifar10", "pgd", "--kd_adv_teacher={smoothening_cifar10-pgd} "
     "--kd_std_teacher={smoothening_cifar10-natural} --swa --swa_start_epoch=2"),
    ("smoothening_svhn", "pgd", "")]


def rows():
    """The table's rows: flags/cifar10.cfg with every registered method, then PRESET_ROWS."""
    from tfadv.training import registry

    return [("cifar10", name, EXTRA.get(name, "")) for name in registry.names()] + PRESET_ROWS


def row_name(preset, defense, extra):
    return f"{preset}-{defense}" + ("-kd-swa" if "kd_adv" in extra else "")


def pending(preset, defense, extra):
    return {"name": row_name(preset, defense, extra), "preset": preset, "defense": defense, "extra": extra,
            "stage": "pending"}


@dataclasses.dataclass
class PresetTable:
    runs_dir: str  # one directory per row
    data_dir: str = None  # the CIFAR-10 subset as a tensorflow-datasets directory
    train_examples: int = 256  # training images per short epoch
    autoattack_examples: int = 8

    def build(self, only=(), report_only=False):
        """The rows in `only` (names; all when empty): each run (a finished run is skipped) and its line printed
        as it finishes, or with `report_only` read from row.json (pending without one)."""
        shapes_dir = os.path.join(self.runs_dir, "shapes")
        if not report_only:
            make_shape_dirs(self.data_dir, shapes_dir)
        done = []
        for preset, defense, extra in rows():
            name = row_name(preset, defense, extra)
            if only and name not in only:
                continue
            saved = os.path.join(self.runs_dir, name, "row.json")
            if report_only:
                done.append(jobs.read_json(saved) if os.path.exists(saved) else pending(preset, defense, extra))
                continue
            done.append(self.run_row(preset, defense, extra, shapes_dir))
            jobs.write_json(saved, done[-1])
            print(self.table(done[-1:]).splitlines()[-1], flush=True)
        return done

    def run_row(self, preset, defense, extra, shapes_dir):
        """Trains and attacks one row; returns its row.json (stage done, or the stage it failed at)."""
        name = row_name(preset, defense, extra)
        out = os.path.join(self.runs_dir, name)
        os.makedirs(out, exist_ok=True)
        extra = re.sub(r"\{([^}]+)\}", lambda m: os.path.join(self.runs_dir, m.group(1), "run"), extra)  # teachers
        recipe = jobs.flags_of(f"flags/{preset}.cfg", [f"--defense={defense}", *extra.split()])
        data_dir = self.data_dir if recipe["dataset"] == "cifar10" else shapes_dir
        log = os.path.join(out, "log.txt")
        code, _ = jobs.run(["scripts/train.py", f"--flagfile=flags/{preset}.cfg", f"--defense={defense}",
                            *extra.split(), f"--data_dir={data_dir}", "--epochs=2", "--val_every=1",
                            f"--train_examples={self.train_examples}", "--val_fraction=0.02", "--eval_examples=32",
                            f"--output_dir={out}/run"], log, os.path.join(out, "run", "metrics.json"))
        row = {"name": name, "preset": preset, "defense": defense, "extra": extra, "stage": "train"}
        if code == 0:
            row["stage"] = "autoattack"
            code, _ = jobs.run(["scripts/evaluate.py", f"--model_dir={out}/run", "--suite=autoattack",
                                f"--num_examples={self.autoattack_examples}", f"--data_dir={data_dir}",
                                f"--output_dir={out}/autoattack", "--noprogress"], log,
                               os.path.join(out, "autoattack", "report.json"))
        if code != 0:
            row["failure"] = jobs.last_lines(log)
            return row
        row["stage"] = "done"
        with open(os.path.join(out, "run", "history.csv")) as handle:
            second = list(csv.DictReader(handle))[-1]
        row.update(measure(recipe, float(second["epoch_seconds"]), self.train_examples))
        return row

    def table(self, done):
        """The Markdown table of rows (row.json values)."""
        lines = [f"| preset | defense | network | end to end | img/s (2nd epoch) | s per epoch of "
                 f"{self.train_examples} | full recipe: epochs x images | this CPU | GPU ({cost.GPU_NAME}) |",
                 "|" + " --- |" * 9]
        for r in done:
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


def measure(recipe, seconds, images):
    """A finished row's numbers: `images` trained in `seconds` (one epoch), projected over the full recipe
    (`recipe`: its flags, jobs.flags_of) on this CPU and, by FLOPs, on one GPU."""
    model = recipe["model"]
    options = ({"depth": int(recipe["wrn_depth"]), "width": int(recipe["wrn_width"])}
               if model == "wide_resnet" else {})
    classes = 100 if recipe["dataset"] == "cifar100" else 10
    full = cost.FULL_TRAIN[recipe["dataset"]] * (1 - float(recipe["val_fraction"]))
    epochs = int(recipe["epochs"])
    flops = cost.forward_flops(model, (32, 32, 3), classes, **options)
    passes = cost.passes_per_image(recipe)
    return dict(network=model + (f"-{options['depth']}-{options['width']}" if options else ""),
                precision=recipe["mixed_precision"], images_per_second=images / seconds,
                epoch_seconds=seconds, epoch_images=images, full_epochs=epochs, full_images=int(full),
                cpu_hours=seconds / images * full * epochs / 3600, forward_gflops=flops / 1e9,
                passes=passes, gpu_hours=flops * passes * full * epochs / cost.GPU_FLOPS / 3600)


def make_shape_dirs(cifar10_dir, out_dir):
    """tensorflow-datasets `cifar100` and `svhn_cropped` directories holding the CIFAR-10 subset's images and
    labels (0..9; CIFAR-100's coarse label = label): the presets of those datasets then run through the
    ordinary loader, their normalisation and augmentation, on real 32x32x3 images. Skipped if present."""
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    splits = {}
    for split in ("train", "test"):
        ds = tfds.load("cifar10", split=split, data_dir=cifar10_dir, download=False, as_supervised=True)
        x, y = zip(*tfds.as_numpy(ds))
        splits[split] = np.stack(x), np.array(y, np.int64)
    layouts = {"cifar100": ("3.0.2", {"coarse_label": tfds.features.ClassLabel(num_classes=20),
                                      "label": tfds.features.ClassLabel(num_classes=100)}),
               "svhn_cropped": ("3.1.0", {"label": tfds.features.ClassLabel(num_classes=10)})}
    for name, (version, labels) in layouts.items():
        if os.path.isdir(os.path.join(out_dir, name, version)):
            continue

        def examples(split, name=name):
            x, y = splits[split]
            features = {"id": np.array([f"{split}_{i:05d}".encode() for i in range(len(y))]), "image": x, "label": y}
            if name == "cifar100":
                features["coarse_label"] = y
            return tf.data.Dataset.from_tensor_slices(features)

        tfds.dataset_builders.TfDataBuilder(
            name=name, config=None, version=version, data_dir=out_dir,
            split_datasets={split: examples(split) for split in splits},
            features=tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                                 "image": tfds.features.Image(shape=(32, 32, 3)), **labels}),
            description="the CIFAR-10 subset's images in this dataset's layout").download_and_prepare()
