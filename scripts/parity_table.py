"""Replica parity of every defense: `python scripts/parity_table.py [--steps=4] [--modes=mirrored,multi_worker]`.

One short epoch of each defense (tfadv.parity.PARITY_CASES: the MLP on digits, global batch 32) on one
device, on 2 logical CPU devices (--distribute=mirrored --num_cpu_devices=2) and on 2 local worker processes
(--distribute=multi_worker, TF_CONFIG with two 127.0.0.1 workers on free ports); one process per configuration.
Prints the largest absolute weight difference and the largest per-step loss difference against one device.
"""

import tempfile
import time

from absl import app, flags

from tfadv import cli, parity

flags.DEFINE_integer("steps", 4, "global batches per epoch")
flags.DEFINE_list("modes", list(parity.PARITY_MODES), f"among {', '.join(parity.PARITY_MODES)}")
flags.DEFINE_list("cases", [], f"defaults to all: {', '.join(parity.PARITY_CASES)}")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    unknown = set(FLAGS.modes) - set(parity.PARITY_MODES)
    if unknown:
        raise app.UsageError(f"--modes: unknown {sorted(unknown)}; valid: {', '.join(parity.PARITY_MODES)}")
    start = time.time()
    with tempfile.TemporaryDirectory() as workdir:
        results = parity.parity_results(workdir, ("none", *FLAGS.modes), FLAGS.steps, FLAGS.cases or None)
    print(parity.parity_markdown(parity.parity_table(results), FLAGS.modes))
    print(f"({FLAGS.steps} steps of global batch {parity.PARITY_BASE['batch_size']} per case; "
          f"{time.time() - start:.0f} s)")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
