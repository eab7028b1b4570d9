"""Reference point for scripts/benchmark.py: the same PGD-k training step in plain PyTorch (CPU).

  pip install torch==2.13.0 && python scripts/benchmark_torch.py --batch_size=128 --steps=3

A PreAct ResNet-18 (CIFAR layout, as tfadv's `preact_resnet18`), PGD-k with random start, eps 8/255, step
2/255, BatchNorm in eval mode for the attack, SGD momentum 0.9 with weight decay 5e-4: the step users
would write by hand (`tfadv.studies.torch_reference`). Prints images/s in float32 and in bfloat16 autocast.
PyTorch is not a tfadv dependency; this script exists only to measure against.
"""

import argparse
import json
import sys

try:
    from tfadv.studies import torch_reference
except ModuleNotFoundError as error:
    if error.name != "torch":
        raise
    if any(arg in ("-h", "--help") for arg in sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    sys.exit("error: benchmark_torch.py needs PyTorch, which tfadv does not install: pip install torch==2.13.0")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--attack_steps", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = torch_reference.benchmark(args.batch_size, args.steps, args.attack_steps)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
