"""Steady-state seconds per training step of each method, side by side in one process.

  python scripts/benchmark.py --model=preact_resnet18 --input_shape=32,32,3 --batch_size=128 --json=bench.json

Prints images/s and each method's ratio to the natural step next to its arithmetic limit (an input-only
backward costs about one forward, a weight backward about two, so a natural step is 3 units): FGSM-RS 5/3,
PGD-k (2k+3)/3, Free 3/3 per replay, TRADES-k (2k+7)/3 (k KL steps, then clean and adversarial forward +
backward), BAT 6/3 (a clean forward for the target and labels, one input-gradient step, the weight step).
Rows in float32 and in mixed bfloat16 (`*_bf16`); each ratio is against the natural step of the
same precision. No timing is asserted anywhere: this is a measuring tool (`tfadv.studies.benchmark`).
"""

from tfadv import cli

cli.quiet_tensorflow()

import json  # noqa: E402

from absl import app, flags  # noqa: E402

from tfadv import models  # noqa: E402
from tfadv.errors import UsageError  # noqa: E402
from tfadv.studies import benchmark  # noqa: E402

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


def main(argv):
    del argv
    cli.quiet_logging()
    bench = benchmark.Benchmark(
        model=FLAGS.model, input_shape=tuple(int(v) for v in FLAGS.input_shape), num_classes=FLAGS.num_classes,
        batch_size=FLAGS.batch_size, steps=FLAGS.steps, warmup=FLAGS.warmup, free_replays=FLAGS.free_replays,
        jit_compile=FLAGS.jit_compile == "true", wrn_depth=FLAGS.wrn_depth, wrn_width=FLAGS.wrn_width)
    try:
        bench.check(FLAGS.methods)
    except UsageError as error:
        cli.fail(str(error))
    results = bench.run(FLAGS.methods, FLAGS.precisions)
    if FLAGS.json:
        with open(FLAGS.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"written to {FLAGS.json}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
