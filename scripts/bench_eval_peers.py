"""The evaluation benchmark (issue 24): tfadv's AutoAttack-standard, per attack and whole, against torchattacks
(its four attacks with AutoAttack's standard settings, stage by stage, and its AutoAttack as shipped) and ART's
APGD and Square, on a PyTorch copy of the same network (logits checked) and the same test images: a Markdown
table of wall and CPU seconds, robust accuracy and per-example agreement with tfadv (`tfadv.studies.eval_peers`).
PyTorch, torchattacks and ART are not tfadv dependencies (pip install -e .[bench], then
pip install --no-deps torchattacks==3.5.1). A measurement: run it on a quiet machine.
  python scripts/bench_eval_peers.py --model_dir=RUN_DIR --num_examples=300 --json=peers.json
  python scripts/bench_eval_peers.py --model_dir=runs/study/pgd --data_dir=/work/cifar_tfds --num_examples=300
"""

import argparse
import os
import sys

from tfadv.studies import eval_peers  # imports neither TensorFlow nor PyTorch

SCRIPT = os.path.basename(__file__)


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", required=True, help="a tfadv run directory (or its saved_model/1 with "
                        "--peers= : the torch copy is built from the run's flags.txt and final checkpoint)")
    parser.add_argument("--data_dir", help="tensorflow-datasets directory of the model's dataset")
    parser.add_argument("--num_examples", type=int, default=100, help="first N test images (-1: all)")
    parser.add_argument("--batch_size", type=int, default=256, help="every tool's batch size")
    parser.add_argument("--peers", default=",".join(eval_peers.PEERS),
                        help=f"comma-separated, of {', '.join(eval_peers.PEERS)}; empty: tfadv alone")
    parser.add_argument("--seed", type=int, default=0, help="every tool's seed")
    parser.add_argument("--threads", type=int, help="intra-op threads of TF and torch (default: the cores)")
    parser.add_argument("--nowarm", dest="warm", action="store_false",
                        help="tfadv cold only (no second pass with the attacks already traced)")
    parser.add_argument("--json", help="also write the results (rows with per-example robustness) here")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    try:
        peers = eval_peers.check_peers(args.peers.split(","))
    except ValueError as error:
        sys.exit(f"error: {error}")  # exit code 1, as the missing dependency
    missing = eval_peers.missing_dependencies(peers)
    if missing:
        sys.exit(eval_peers.missing_message(SCRIPT, peers, missing))
    from tfadv import cli

    cli.quiet_tensorflow()
    cli.quiet_logging()
    eval_peers.benchmark(args.model_dir, args.data_dir, args.num_examples, args.batch_size, peers, args.seed,
                         args.warm, args.json, args.threads)


if __name__ == "__main__":
    main()
