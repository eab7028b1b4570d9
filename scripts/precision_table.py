"""Prints, per defense, how far XLA (jit_compile=True) moves training from the plain graph, and a short float16 run:
max |weight difference| XLA vs not after 3 float32 steps; the float16 loss of the last minibatch of one epoch and
the final loss scale (Keras' defaults: from 2^15, doubling after 2000 finite updates) and the updates skipped
for an overflow, without and with XLA, beside the float32 loss. A Dense-BatchNorm net on 8x8 digits
(`tfadv.studies.precision`).

    python scripts/precision_table.py
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfadv.studies import precision  # noqa: E402

if __name__ == "__main__":
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    if len(sys.argv) > 1:
        sys.exit(f"error: precision_table.py takes no arguments, got {sys.argv[1:]}")
    precision.table()
