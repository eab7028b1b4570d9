"""Shared pieces of the real-data scripts (preset_table.py, cifar_study.py): resumable runs of train.py and
evaluate.py as subprocesses, flagfile reading, FLOP counts, and tensorflow-datasets directories of the CIFAR-10
subset's images in the CIFAR-100 and SVHN layouts. A measuring tool, not library code."""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FULL_TRAIN = {"cifar10": 50000, "cifar100": 50000, "svhn": 73257}
# A GPU projection from the FLOP count: one A100 (312 TFLOP/s bf16 dense peak) at 40 % utilisation.
GPU_FLOPS = 0.4 * 312e12
GPU_NAME = "A100 at 40 % of its bf16 peak (125 TFLOP/s)"


def flags_of(flagfile, args):
    """{flag name: value} of `train.py --flagfile=FLAGFILE ARGS...` (every flag, defaults included), read by the
    command line's own parser (`TrainConfig.from_flagfile`, nested flagfiles relative to the repository)."""
    from tfadv.config import TrainConfig

    overrides = {}
    for arg in args:
        name, equals, value = arg[2:].partition("=")
        overrides[name[2:] if not equals and name.startswith("no") else name] = (
            value if equals else str(not name.startswith("no")).lower())
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return TrainConfig.from_flagfile(flagfile, **overrides).flat()
    finally:
        os.chdir(cwd)


def write_markdown(path, text):
    """Prints `text` and, with a `path`, writes it there too."""
    print(text)
    if path:
        with open(path, "w") as handle:
            handle.write(text + "\n")


def run(args, log_path, done_path):
    """Runs `python args...` from the project root unless `done_path` exists (a finished run is skipped, an
    interrupted one resumes: train.py resumes from the run directory's checkpoints). Returns (exit code, s)."""
    if os.path.exists(done_path):
        return 0, 0.0
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"\n$ python {' '.join(args)}\n")
        log.flush()
        code = subprocess.call([sys.executable, *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return code, time.time() - start


def last_lines(path, count=3):
    with open(path) as handle:
        lines = [line.rstrip() for line in handle if line.strip() and not line.startswith(("I0000", "W0000"))]
    return " / ".join(lines[-count:])


def forward_flops(model, input_shape, num_classes, **options):
    """FLOPs (multiply and add counted apart) of one forward pass of one image, from TensorFlow's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tfadv import models
    network = models.build(model, input_shape, num_classes, [0.5] * input_shape[-1], [0.25] * input_shape[-1],
                           **options)
    function = tf.function(lambda x: network(x, training=False), autograph=False)
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(
        tf.TensorSpec([1, *input_shape], tf.float32)))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops)


def passes_per_image(flags):
    """Forward-pass equivalents per training image and epoch (an input-only backward costs about one forward,
    a weight backward about two): natural 3, PGD-k 2k+3, FGSM-RS 5, BAT 6, TRADES-k 2k+7, Free-AT and SSAT
    3 per replay; + 1 per self-teacher (a forward on the adversarial example)."""
    defense, steps = flags["defense"], int(flags.get("attack_steps", 10))
    units = {"pgd": 2 * steps + 3, "fgsm_rs": 5, "bat": 6, "trades": 2 * steps + 7,
             "free": 3 * int(flags.get("free_replays", 8)), "ssat": 3 * int(flags.get("ssat_replays", 8))
             }.get(defense, 3)
    return units + sum(1 for teacher in ("kd_adv_teacher", "kd_std_teacher") if flags.get(teacher))


def write_json(path, value):
    with open(path + ".tmp", "w") as handle:
        json.dump(value, handle, indent=2)
    os.replace(path + ".tmp", path)


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
