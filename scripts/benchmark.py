"""Steady-state seconds per training step of each method, side by side in one process.

  python scripts/benchmark.py --model=preact_resnet18 --input_shape=32,32,3 --batch_size=128 --json=bench.json

Prints images/s and each method's ratio to the natural step next to its arithmetic limit (an input-only
backward costs about one forward, a weight backward about two, so a natural step is 3 units): FGSM-RS 5/3,
PGD-k (2k+3)/3, Free 3/3 per replay, TRADES-k (2k+7)/3 (k KL steps, then clean and adversarial forward +
backward), BAT 6/3 (a clean forward for the target and labels, one input-gradient step, the weight step).
Rows in float32 and in mixed bfloat16 (`*_bf16`); each ratio is against the natural step of the
same precision. No timing is asserted anywhere: this is a measuring tool.
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402
import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from tfadv import config as config_lib, models  # noqa: E402

flags.DEFINE_string("model", "preact_resnet18", f"network: {', '.join(models.MODEL_NAMES)}")
flags.DEFINE_integer("wrn_depth", 28, "wide_resnet depth (6n+4)")
flags.DEFINE_integer("wrn_width", 10, "wide_resnet width factor")
flags.DEFINE_list("input_shape", ["32", "32", "3"], "H,W,C")
flags.DEFINE_integer("num_classes", 10, "classes")
flags.DEFINE_integer("batch_size", 128, "batch size")
flags.DEFINE_integer("steps", 3, "timed steps per method (after warm-up)")
flags.DEFINE_integer("warmup", 1, "untimed steps per method (tracing, allocation)")
flags.DEFINE_list("methods", ["natural", "fgsm_rs", "bat", "pgd7", "pgd10", "free", "trades10"],
                  "registered methods to time, with the attack steps appended (pgd7)")
flags.DEFINE_list("precisions", ["float32", "bfloat16"], "float32 and/or bfloat16")
flags.DEFINE_integer("free_replays", 4, "free: replays per minibatch (time is reported per replay)")
flags.DEFINE_string("jit_compile", "false", "XLA: true or false")
flags.DEFINE_string("json", None, "write the results here")
FLAGS = flags.FLAGS

# BAT: clean forward for the target and labels (1) + one input-gradient step (2) + weight step (3) = 6 units.
LIMITS = {"natural": 1.0, "fgsm_rs": 5 / 3, "free": 1.0, "bat": 2.0}


def limit(method):
    """The arithmetic limit of the ratio to natural; None for a method without a cost model here."""
    name = method.rstrip("0123456789")
    if name in ("pgd", "trades"):
        k = int(method[len(name):])
        return (2 * k + (3 if name == "pgd" else 7)) / 3
    return LIMITS.get(method)


def run_config(method: str):
    """The run config of a benchmark row: `pgd7` = --defense=pgd --attack_steps=7 at eps 8/255, step 2/255
    (levels of an 8-bit image, converted by the config's budget()); fgsm_rs steps 1.25 eps, free eps."""
    name = method.rstrip("0123456789")
    values = {"defense": name, "dataset": "cifar10", "eps": 8.0, "step_size": 2.0, "output_dir": "unused",
              "batch_size": FLAGS.batch_size}
    if method != name:
        values["attack_steps"] = int(method[len(name):])
    values.update({"fgsm_rs": {"step_size": 10.0}, "free": {"step_size": 8.0, "free_replays": FLAGS.free_replays}
                   }.get(name, {}))
    return config_lib.TrainConfig.from_flags(values)


def build_trainer(method, shape):
    options = dict(depth=FLAGS.wrn_depth, width=FLAGS.wrn_width) if FLAGS.model == "wide_resnet" else {}
    network = models.build(FLAGS.model, shape, FLAGS.num_classes, [0.5] * shape[-1], [0.25] * shape[-1], **options)
    trainer = run_config(method).build_trainer(network)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    trainer.compile(optimizer=optimizer, jit_compile=FLAGS.jit_compile == "true")
    optimizer.build(network.trainable_variables)
    return trainer


def time_method(method, shape, precision):
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
    try:
        trainer = build_trainer(method, shape)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rng = np.random.default_rng(0)
    x = rng.random((FLAGS.batch_size, *shape), dtype=np.float32)
    y = rng.integers(0, FLAGS.num_classes, FLAGS.batch_size).astype(np.int32)
    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    trainer.make_train_function()
    step = trainer.train_function
    for _ in range(FLAGS.warmup):
        float(step(iterator)["loss"])
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        float(step(iterator)["loss"])  # reading the loss waits for the step to finish
    seconds = (time.perf_counter() - start) / FLAGS.steps
    return seconds / run_config(method).updates_per_batch()  # Free-AT and SSAT: per replay


def main(argv):
    del argv
    cli.quiet_logging()
    shape = tuple(int(v) for v in FLAGS.input_shape)
    results = {}
    name = FLAGS.model + (f"-{FLAGS.wrn_depth}-{FLAGS.wrn_width}" if FLAGS.model == "wide_resnet" else "")
    print(f"{name} {shape} batch {FLAGS.batch_size}, XLA {FLAGS.jit_compile}, "
          f"{FLAGS.steps} timed steps after {FLAGS.warmup} warm-up; tf {tf.__version__}, keras {keras.__version__}")
    print(f"{'method':<16}{'s/step':>10}{'img/s':>10}{'ratio':>8}{'limit':>8}{'ratio/limit':>13}")
    for precision in FLAGS.precisions:
        suffix = "" if precision == "float32" else "_bf16"
        base = None
        for method in ["natural"] + [m for m in FLAGS.methods if m != "natural"]:
            seconds = time_method(method, shape, precision)
            base = base or seconds
            bound = limit(method)
            row = {"seconds_per_step": round(seconds, 4), "images_per_second": round(FLAGS.batch_size / seconds, 2),
                   "ratio": round(seconds / base, 3), "limit": bound and round(bound, 3), "precision": precision}
            results[method + suffix] = row
            note = " (per replay)" if run_config(method).updates_per_batch() > 1 else ""
            cells = f"{row['limit']:>8.2f}{row['ratio'] / row['limit']:>13.2f}" if bound else f"{'-':>8}{'-':>13}"
            print(f"{method + suffix:<16}{seconds:>10.3f}{row['images_per_second']:>10.1f}{row['ratio']:>8.2f}"
                  f"{cells}{note}", flush=True)
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"written to {FLAGS.json}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
