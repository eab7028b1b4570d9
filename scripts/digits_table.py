"""Reproduces the digits tables of docs/results.md: trains each row with flags/digits.cfg plus the row's flags,
evaluates it on all 450 test images at eps 2/16 and prints a Markdown table (seconds per epoch also as a ratio to the
first row of the table). The training tables use FGSM, PGD-20 (CE), PGD-20 (CW margin) and PGD-100;
`--table=evaluation` runs the standard suite plus AutoAttack-standard with the gradient-masking audit and
reports the suite's run time; `--table=ssat` adds AutoAttack and builds Co-SSAT(PGD-AT) from the SSAT and
PGD-AT rows, evaluated white-box, half-white-box and with paper 000 App. H.2's AutoAttack dispatch;
`--table=label_smoothing` also prints paper 004's linear-robustness (eps_L) table for four of its rows;
`--table=smoothening` is paper 001's robust-overfitting table (PGD-AT, + self-teachers, + SWA) on a
300-image training subset. The rows: `tfadv.studies.digits.TABLES`.

  python scripts/digits_table.py --table=baselines --runs_dir=runs/digits-table
"""

from tfadv import cli

cli.quiet_tensorflow()

from absl import app, flags  # noqa: E402

from tfadv.studies import digits  # noqa: E402

flags.DEFINE_string("table", "baselines", f"which table: {', '.join(digits.TABLES)}")
flags.DEFINE_string("runs_dir", "runs/digits-table", "where the runs go (each row is replaced)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.table not in digits.TABLES:
        cli.fail(f"--table: unknown {FLAGS.table!r}; valid: {', '.join(digits.TABLES)}")
    digits.write_table(FLAGS.table, FLAGS.runs_dir)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
