"""Prints, per attack (fgsm, pgd20, apgd_ce, apgd_t, fab_t, square), what running its iterations in bfloat16 does
to its per-example results (evaluate.py --attack_precision=bfloat16; every success judged by the float32 model):
robust accuracy with float32 and with bfloat16 iterations, the examples only one of them broke, the bfloat16
outputs that fool the bfloat16 copy but not the float32 model, and the seconds of each (`tfadv.studies.bf16_strength`).

    python scripts/bf16_strength.py                       # digits: a natural and a PGD-AT MLP, 200 test images
    python scripts/bf16_strength.py --masked              # the same behind the masked-model tests' quantisation
    python scripts/bf16_strength.py --run_dir=/work/runs/study/pgd --dataset=cifar10 --data_dir=/work/cifar_tfds \\
        --num_examples=1000 [--masked --mask_levels=32]
"""

from tfadv import cli

cli.quiet_tensorflow()
from absl import app, flags  # noqa: E402

flags.DEFINE_string("run_dir", None, "a tfadv run directory (default: two digits MLPs trained here)")
flags.DEFINE_string("dataset", None, "the run's dataset (with --run_dir)")
flags.DEFINE_string("data_dir", None, "tensorflow-datasets directory (with --run_dir)")
flags.DEFINE_integer("num_examples", 200, "test images")
flags.DEFINE_list("attacks", "fgsm,pgd20,apgd_ce,apgd_t,fab_t,square", "attacks, each run alone")
flags.DEFINE_boolean("masked", False, "both precisions behind the masked-model tests' input quantisation")
flags.DEFINE_integer("mask_levels", 4, "with --masked: the input rounded to this many steps")
flags.DEFINE_integer("eval_batch_size", 256, "examples per attack batch")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if FLAGS.run_dir and not FLAGS.dataset:
        raise app.UsageError("--run_dir needs --dataset (e.g. cifar10)")
    from tfadv.studies import bf16_strength as study

    cli.quiet_logging()

    if FLAGS.run_dir:
        float32_fn, bfloat16_fn, x, y, radii = study.run_pair(FLAGS.run_dir, FLAGS.dataset, FLAGS.data_dir,
                                                              FLAGS.num_examples)
        pairs = {FLAGS.run_dir: (float32_fn, bfloat16_fn)}
    else:
        networks, x, y, radii = study.digits_models(FLAGS.num_examples)
        pairs = {name: study.keras_pair(network) for name, network in networks.items()}
    every = []
    for name, (float32_fn, bfloat16_fn) in pairs.items():
        if FLAGS.masked:
            float32_fn, bfloat16_fn = (study.masked(fn, FLAGS.mask_levels) for fn in (float32_fn, bfloat16_fn))
        print(f"\n{name}{' (masked)' if FLAGS.masked else ''}: {len(y)} images, eps {radii['linf']:.4f} (linf); "
              f"seconds include tracing\n{study.HEADER}")
        every += study.compare(float32_fn, bfloat16_fn, x, y, radii, FLAGS.attacks, FLAGS.eval_batch_size)
    print(f"\nequal strength per example on every row (no example only float32 iterations broke): "
          f"{study.equal_strength(every)}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
