"""The real-CIFAR-10 study at CPU scale: each row trains with flags/cifar10_cpu.cfg plus its flags on the CIFAR-10
subset (train 4000 = 3600 + 400 held out / test 660), then evaluate.py runs AutoAttack-standard with the
gradient-masking audit on the first --autoattack_examples test images. Finished rows are skipped and an
interrupted one resumes, so the study can be run in parts (--only, or stop it and start it again). Prints the
study table (clean and PGD-20 on all 660 test images, AutoAttack on n, binomial standard errors, the audit's
warnings, training minutes), the claims table (each paper's claim: reproduced / not reproduced / mixed / pending)
and writes the figures.

  python ../shared/data/cifar10_subset/build_tfds.py /tmp/c10
  python scripts/cifar_study.py --data_dir=/tmp/c10 --runs_dir=/tmp/c10-study --markdown=docs/cifar10_study.md \
      --plots_dir=docs/plots
"""

import json
import os
import re

from absl import app, flags

import study_claims
from tfadv import cli
import studylib

flags.DEFINE_string("data_dir", None, "the CIFAR-10 subset as a tensorflow-datasets directory (build_tfds.py)")
flags.DEFINE_string("runs_dir", None, "one run directory per row (outside the repository)")
flags.DEFINE_integer("autoattack_examples", 300, "test images for AutoAttack-standard")
flags.DEFINE_list("only", [], "rows to run (their keys); default all, in the order below")
flags.DEFINE_boolean("report_only", False, "run nothing: tabulate the finished rows")
flags.DEFINE_string("markdown", None, "also write the tables here")
flags.DEFINE_string("plots_dir", None, "write the figures here")
FLAGS = flags.FLAGS

SSAT = "--lr_schedule=cyclic --lr=0.04 --lr_peak_fraction=0.5 --epochs=4"  # paper 000 App. J, 4 passes
LS = {"sls": "SLS", "als": "ALS", "bls": "BLS", "sbls": "SBLS"}
# key: (label, flags on top of flags/cifar10_cpu.cfg); {key} is that row's run directory. Cheapest and most
# needed first: the teachers and the baselines, then each paper's rows.
ROWS = {
    "natural": ("natural", "--defense=natural"),
    "pgd": ("PGD-AT", "--defense=pgd"),
    "bat": ("BAT (R-MC-LA)", "--defense=bat --bat_step_size=8 --bat_beta=9 --bat_gamma=0.01"),
    "trades": ("TRADES (beta 6)", "--defense=trades --trades_beta=6"),
    "fgsm_rs": ("FGSM-RS (alpha 1.25 eps)", "--defense=fgsm_rs"),  # --fgsm_rs_step_size 0 = 1.25 eps
    "free": ("Free-AT (m 8, step eps)", f"--defense=free --free_replays=8 {SSAT}"),  # --free_step_size 0 = eps
    "ssat": ("SSAT (m 8)", f"--defense=ssat --ssat_replays=8 {SSAT}"),
    "pgd_kd_swa": ("PGD-AT + KD + SWA", "--defense=pgd --kd_adv_teacher={pgd} --kd_std_teacher={natural} --swa"),
    "pgd_kd": ("PGD-AT + KD", "--defense=pgd --kd_adv_teacher={pgd} --kd_std_teacher={natural}"),
    "pgd_swa": ("PGD-AT + SWA", "--defense=pgd --swa"),
    **{f"ls_{m}": (f"{name} alpha 0.1", f"--defense=label_smoothing --ls_method={m} --ls_alpha=0.1")
       for m, name in LS.items()},
    "ls_uniform_noise": ("uniform LS 0.95 + noise 20", "--defense=label_smoothing --ls_method=uniform --ls_alpha=0.95 "
                                                       "--noise_sigma=20"),
    "squeeze_noise": ("logit squeeze 10 + noise 20", "--defense=logit_squeeze --squeeze_beta=10 --noise_sigma=20"),
    **{f"pgd_ls_{m}": (f"PGD-AT + {name} 0.1", f"--defense=pgd --ls_method={m} --ls_alpha=0.1")
       for m, name in LS.items()},
    "pgd_ls_uniform_noise": ("PGD-AT + uniform LS 0.95 + noise 20", "--defense=pgd --ls_method=uniform --ls_alpha=0.95 "
                                                                    "--noise_sigma=20"),
    "pgd_squeeze_noise": ("PGD-AT + logit squeeze 10 + noise 20", "--defense=pgd --squeeze_beta=10 --noise_sigma=20"),
}


def run_dir(key):
    return os.path.join(FLAGS.runs_dir, key)


def train_and_evaluate(key):
    label, args = ROWS[key]
    args = re.sub(r"\{(\w+)\}", lambda m: run_dir(m.group(1)), args)
    log = run_dir(key) + ".log"
    code, _ = studylib.run(["scripts/train.py", "--flagfile=flags/cifar10_cpu.cfg", *args.split(),
                            f"--data_dir={FLAGS.data_dir}", f"--output_dir={run_dir(key)}"], log,
                           os.path.join(run_dir(key), "metrics.json"))
    if code == 0:
        code, _ = studylib.run(["scripts/evaluate.py", f"--model_dir={run_dir(key)}", "--suite=autoattack",
                                f"--num_examples={FLAGS.autoattack_examples}", f"--data_dir={FLAGS.data_dir}",
                                f"--output_dir={run_dir(key)}/autoattack", "--noprogress"], log,
                               os.path.join(run_dir(key), "autoattack", "report.json"))
    if code != 0:
        print(f"{key}: exit code {code}; see {log}: {studylib.last_lines(log)}", flush=True)


def build_cossat():
    out = os.path.join(FLAGS.runs_dir, "cossat")
    log = out + ".log"
    code, _ = studylib.run(["scripts/build_cossat.py", f"--ssat={run_dir('ssat')}", f"--base={run_dir('pgd')}",
                            "--flagfile=flags/cifar10_cpu.cfg", f"--data_dir={FLAGS.data_dir}",
                            f"--output_dir={out}"], log, os.path.join(out, "metrics.json"))
    if code == 0:
        code, _ = studylib.run(["scripts/evaluate.py", f"--model_dir={out}", "--attacks=pgd20", "--suite=autoattack",
                                f"--num_examples={FLAGS.autoattack_examples}", "--cossat_protocol=all", "--noaudit",
                                f"--data_dir={FLAGS.data_dir}", f"--output={out}/eval.json", "--noprogress"], log,
                               os.path.join(out, "eval.json"))
    if code != 0:
        print(f"cossat: exit code {code}; see {log}: {studylib.last_lines(log)}", flush=True)


def load(key):
    """The row's results, or None while it is not finished."""
    paths = [os.path.join(run_dir(key), "metrics.json"), os.path.join(run_dir(key), "autoattack", "report.json")]
    if not all(os.path.exists(p) for p in paths):
        return None
    (metrics, report) = [json.load(open(p)) for p in paths]
    return {"metrics": metrics, "report": report, "history": os.path.join(run_dir(key), "history.csv")}


def main(argv):
    del argv
    if not FLAGS.data_dir or not FLAGS.runs_dir:
        raise app.UsageError("--data_dir and --runs_dir are required")
    unknown = set(FLAGS.only) - set(ROWS) - {"cossat"}
    if unknown:
        raise app.UsageError(f"--only: unknown rows {sorted(unknown)}; valid: {', '.join(ROWS)}, cossat")
    os.makedirs(FLAGS.runs_dir, exist_ok=True)
    if not FLAGS.report_only:
        for key in ROWS:
            if not FLAGS.only or key in FLAGS.only:
                train_and_evaluate(key)
        if (not FLAGS.only or "cossat" in FLAGS.only) and load("ssat") and load("pgd"):
            build_cossat()
    results = {key: load(key) for key in ROWS}
    cossat = os.path.join(FLAGS.runs_dir, "cossat")
    studylib.write_markdown(FLAGS.markdown, study_claims.report(ROWS, results, cossat, FLAGS.plots_dir,
                                                                os.path.dirname(FLAGS.markdown or "") or "."))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags_or_exit)
