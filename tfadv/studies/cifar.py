"""The real-CIFAR-10 study at CPU scale (scripts/cifar_study.py): each row trains with flags/cifar10_cpu.cfg plus
its flags on the CIFAR-10 subset (train 4000 = 3600 + 400 held out / test 660), then evaluate.py runs
AutoAttack-standard with the gradient-masking audit on the first `autoattack_examples` test images; Co-SSAT(PGD-AT)
is built from the SSAT and PGD-AT rows. Finished rows are skipped and an interrupted one resumes (`jobs.run`).

With an `archive_dir` (docs/cifar10_study in the repository), every finished row's results (metrics.json, the
AutoAttack report.json, history.csv; Co-SSAT's metrics.json and eval.json) are copied there: a few kilobytes
that outlive the run directories (a fresh machine has only the repository), so the report keeps a finished row
and the study does not train it again, unless a row still to run needs its weights. A teacher of paper 001's rows
is kept there too (`<row>/teacher/`: flags.txt, metrics.json and the one checkpoint the rows read, about 3 MB for
WRN-16-2); one found nowhere trains again on its own (`teacher_dir`), and the archived row stays what is reported.

The rows and the papers' own numbers are data here; cifar_report.py writes the tables and figures."""

import dataclasses
import os
import re
import shutil

from tfadv import runs
from tfadv.studies import cifar_report, jobs

FLAGFILE = "flags/cifar10_cpu.cfg"
SSAT = "--lr_schedule=cyclic --lr=0.04 --lr_peak_fraction=0.5 --epochs=4"  # paper 000 App. J, 4 passes
LS = {"sls": "SLS", "als": "ALS", "bls": "BLS", "sbls": "SBLS"}
# key: (label, flags on top of FLAGFILE); {key} is that row's run directory. Cheapest and most needed first: the
# teachers and the baselines, then each paper's rows.
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
COSSAT = "cossat"  # the Co-SSAT(PGD-AT) run's directory and its --only name
ROW_FILES = ("metrics.json", "autoattack/report.json", "history.csv")  # a finished row's results
COSSAT_FILES = ("metrics.json", "eval.json")
# The papers' own CIFAR-10 numbers, for scale only (clean / attack, %; full training set, their network and
# schedule: 10x the data, larger networks, more epochs), read from ../shared/papers: paper, table, row.
PAPER = {
    "natural": "88.6 clean, ResNet-18 (003 Tab. 2)",
    "pgd": "final 82.4 / PGD-20 41.4 / AA 40.0, best-RA ckpt 80.8 / 50.7 / 47.0; ResNet-18, 200 ep (001 Tab. 1, 4)",
    "bat": "90.7 / PGD-20 55.3 (PGD-100 53.8); Madry* 88.0 / 47.6; WRN-28-10, 100 ep (002 Tab. 5, 10)",
    "trades": "final 81.8 / PGD-20 47.3, best 79.7 / 51.1; ResNet-18 (001 Tab. 2)",
    "fgsm_rs": "final 86.5 / PGD-20 37.1, best 85.8 / 43.1; ResNet-18 (001 Tab. 2)",
    "free": "81.4 / PGD-20 48.1 (m 4); WRN-34-10 (000 Tab. 1)",
    "ssat": "88.5 / PGD-20 84.2 / AA 23.7 (m 4); WRN-34-10 (000 Tab. 1, 10)",
    "pgd_kd_swa": "final 85.4 / PGD-20 51.5 / AA 49.4, best 84.7 / 52.1; ResNet-18 (001 Tab. 1, 4)",
    "pgd_kd": "final 85.3 / PGD-20 48.3, best 83.7 / 50.9; ResNet-18 (001 Tab. 1)",
    "pgd_swa": "final 84.1 / PGD-20 48.2, best 83.4 / 51.7; ResNet-18 (001 Tab. 5)",
    "ls_sls": "89.4 / FGSM 34.5 / BIM 14.2 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_als": "89.0 / FGSM 36.5 / BIM 16.7 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_bls": "88.9 / FGSM 34.6 / BIM 14.2 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_sbls": "88.1 / FGSM 15.9 / BIM 2.1 at eps 0.05; ResNet-18 (003 Tab. 2-3)",
    "ls_uniform_noise": "92.9 / PGD-20 43.0 (CE), 41.3 (CW); WRN-28-10 (004 Tab. 3, 7)",
    "squeeze_noise": "92.7 / PGD-20 52.6 (CE), 48.8 (CW); WRN-28-10 (004 Tab. 3, 7)",
    "pgd_ls_sls": "PGD-AT + label smoothing (alpha not given): final 83.5 / 44.7, best 81.3 / 50.8 (001 Tab. 6)",
}


def _teachers(key):
    """{teacher flag: the row whose run it names} for a row's {key} placeholders."""
    return dict(re.findall(r"--(\w+)=\{(\w+)\}", ROWS[key][1]))


# {teacher row: the checkpoints the rows read from it, by their teacher flags (runs.TEACHER_CHECKPOINTS)}
TEACHER_CHECKPOINTS = {}
for _row in ROWS:
    for _flag, _base in _teachers(_row).items():
        TEACHER_CHECKPOINTS.setdefault(_base, set()).add(runs.TEACHER_CHECKPOINTS[_flag])


def _copy_files(source, target, names):
    """Copies `names` (paths relative to `source`) into `target`, in order, each through runs.replacing."""
    for name in names:
        path = os.path.join(target, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with runs.replacing(path) as tmp:
            shutil.copyfile(os.path.join(source, name), tmp)


def unknown_rows(only):
    """The names in `only` (--only) that are neither a row nor Co-SSAT, sorted."""
    return sorted(set(only) - set(ROWS) - {COSSAT})


@dataclasses.dataclass
class Study:
    runs_dir: str  # one run directory per row
    data_dir: str = None  # the CIFAR-10 subset as a tensorflow-datasets directory
    autoattack_examples: int = 300
    archive_dir: str = None  # each finished row's results, kept (in the repository)
    precision: str = None  # --mixed_precision for every training (None: the preset's bfloat16)

    def run_dir(self, key):
        return os.path.join(self.runs_dir, key)

    def run(self, only=()):
        """Trains and evaluates the rows in `only` (all when empty), in ROWS' order, then Co-SSAT once its two
        bases are finished; a failed row prints one line naming its log and the study goes on. An archived row
        is not run again unless a row still to run needs its weights. A teacher (paper 001's rows) found neither
        in its row's run nor in the archive trains again, only trained, into teacher_dir: the archived row stays
        what the table reports, and the archive keeps the teacher for later machines. A Co-SSAT base is trained
        and evaluated again (build_cossat reads its run directory), its archived results replaced by the new run's."""
        os.makedirs(self.runs_dir, exist_ok=True)
        wanted = [key for key in ROWS if not only or key in only]
        cossat = (not only or COSSAT in only) and not self._archived(COSSAT, COSSAT_FILES)
        # the teachers a row still to train needs (a row trained but not evaluated needs none) and has nowhere
        teachers = {base for key in wanted if not self.load(key) and not self._finished(key, ROW_FILES[:1])
                    for base in _teachers(key).values() if not self.teacher(base)}
        # Co-SSAT's bases once each is finished somewhere or trains in this run (build_cossat reads their run dirs)
        needed = {"ssat", "pgd"} if cossat and all(self.load(b) or b in wanted for b in ("ssat", "pgd")) else set()
        for key in ROWS:
            if key in teachers and self.load(key) and key not in needed:
                self.train_teacher(key)  # the reported row stays the archived run
            elif (key in wanted or key in needed or key in teachers) and not self._finished(key):
                if self.load(key) and key not in needed:
                    print(f"{key}: archived in {self.archive(key)}, not run again", flush=True)
                    continue
                self.train_and_evaluate(key)
            if key in TEACHER_CHECKPOINTS:
                self._archive_teacher(key)
        if cossat and self._finished("ssat") and self._finished("pgd"):
            self.build_cossat()

    def teacher(self, key):
        """Where a row reads `key`'s weights as its teacher: the row's own finished run, else a teacher run trained
        for it on this machine, else the teacher the archive keeps; None when none is there."""
        for where in (self.run_dir(key), self.teacher_dir(key), self._archived_teacher(key)):
            if where and os.path.exists(os.path.join(where, runs.METRICS_FILE)):
                return where
        return None

    def teacher_dir(self, key):
        """A teacher trained again because its archived row's weights are gone (a fresh machine): the row's flags,
        trained only, beside the rows, never replacing the archived row's results."""
        return os.path.join(self.runs_dir, "teachers", key)

    def _archived_teacher(self, key):
        return os.path.join(self.archive(key), "teacher") if self.archive_dir else None

    def train_teacher(self, key):
        out = self.teacher_dir(key)
        code, _ = jobs.run(self._train_args(key, out), out + ".log", runs.metrics_path(out))
        if code != 0:
            print(f"{key} (teacher): exit code {code}; see {out}.log: {jobs.last_lines(out + '.log')}", flush=True)

    def _archive_teacher(self, key):
        """Copies a teacher's flags, metrics and the checkpoints the rows read (by their teacher flags) into the
        archive, once: a few MB that spare every later machine its training."""
        source, kept = self.teacher(key), self._archived_teacher(key)
        if kept is None or source in (None, kept) or os.path.exists(runs.metrics_path(kept)):
            return  # no archive, nothing trained here, or kept already
        files = [runs.FLAGS_FILE, *(runs.checkpoint_relpath(c) for c in sorted(TEACHER_CHECKPOINTS[key])),
                 runs.METRICS_FILE]  # metrics.json last: it marks the kept teacher complete
        if all(os.path.exists(os.path.join(source, name)) for name in files):  # else a test's stand-in
            _copy_files(source, kept, files)

    def _train_args(self, key, out):
        args = re.sub(r"\{(\w+)\}", lambda m: self.teacher(m.group(1)) or self.run_dir(m.group(1)), ROWS[key][1])
        precision = [f"--mixed_precision={self.precision}"] if self.precision else []
        return ["scripts/train.py", f"--flagfile={FLAGFILE}", *args.split(), *precision, f"--data_dir={self.data_dir}",
                f"--output_dir={out}"]

    def train_and_evaluate(self, key):
        out, log = self.run_dir(key), self.run_dir(key) + ".log"
        code, _ = jobs.run(self._train_args(key, out), log, os.path.join(out, "metrics.json"))
        if code == 0:
            code, _ = jobs.run(["scripts/evaluate.py", f"--model_dir={out}", "--suite=autoattack",
                                f"--num_examples={self.autoattack_examples}", f"--data_dir={self.data_dir}",
                                f"--output_dir={out}/autoattack", "--noprogress"], log,
                               os.path.join(out, "autoattack", "report.json"))
        if code != 0:
            print(f"{key}: exit code {code}; see {log}: {jobs.last_lines(log)}", flush=True)

    def build_cossat(self):
        out = self.run_dir(COSSAT)
        log = out + ".log"
        code, _ = jobs.run(["scripts/build_cossat.py", f"--ssat={self.run_dir('ssat')}",
                            f"--base={self.run_dir('pgd')}", f"--flagfile={FLAGFILE}", f"--data_dir={self.data_dir}",
                            f"--output_dir={out}"], log, os.path.join(out, "metrics.json"))
        if code == 0:
            code, _ = jobs.run(["scripts/evaluate.py", f"--model_dir={out}", "--attacks=pgd20", "--suite=autoattack",
                                f"--num_examples={self.autoattack_examples}", "--cossat_protocol=all", "--noaudit",
                                f"--data_dir={self.data_dir}", f"--output={out}/eval.json", "--noprogress"], log,
                               os.path.join(out, "eval.json"))
        if code != 0:
            print(f"cossat: exit code {code}; see {log}: {jobs.last_lines(log)}", flush=True)

    def archive(self, key):
        return os.path.join(self.archive_dir, key) if self.archive_dir else None

    def _finished(self, key, files=None):
        """Whether the row's run directory holds its finished results (and the weights)."""
        return all(os.path.exists(os.path.join(self.run_dir(key), f)) for f in files or ROW_FILES)

    def _archived(self, key, files):
        return bool(self.archive_dir) and all(os.path.exists(os.path.join(self.archive(key), f)) for f in files)

    def _comparable(self, key):
        """Whether the finished run was evaluated as this study evaluates (AutoAttack's n): a smoke run (fewer
        images) must not replace the results kept in the archive."""
        path = os.path.join(self.run_dir(key), "autoattack", "report.json")
        if key == COSSAT:
            path = os.path.join(self.run_dir(key), "eval.json")
        return jobs.read_json(path).get("num_examples") == self.autoattack_examples

    def _results_dir(self, key, files):
        """Where the row's results are read: its run directory when finished (copied into the archive first, a
        newer run replacing what was kept), else the archive; None when neither has them."""
        if self._finished(key, files):
            if not self.archive_dir:
                return self.run_dir(key)
            if not self._comparable(key):
                print(f"{key}: {self.run_dir(key)} was evaluated on another number of images than "
                      f"--autoattack_examples={self.autoattack_examples}: not archived", flush=True)
                return self.archive(key) if self._archived(key, files) else None
            _copy_files(self.run_dir(key), self.archive(key), files)
        return self.archive(key) if self._archived(key, files) else None

    def load(self, key):
        """The row's results ({metrics, report, history: the path of history.csv}), or None while unfinished."""
        where = self._results_dir(key, ROW_FILES)
        if where is None:
            return None
        metrics, report, history = (os.path.join(where, f) for f in ROW_FILES)
        return {"metrics": jobs.read_json(metrics), "report": jobs.read_json(report), "history": history}

    def report(self, plots_dir=None, links_from="."):
        """The study's Markdown from the finished rows (the others pending); figures into `plots_dir`, linked
        relative to `links_from` (the Markdown file's directory)."""
        results = {key: self.load(key) for key in ROWS}
        cossat = self._results_dir(COSSAT, COSSAT_FILES) or self.run_dir(COSSAT)
        return cifar_report.report(ROWS, PAPER, results, cossat, plots_dir, links_from,
                                   jobs.flags_of(FLAGFILE, [])["mixed_precision"])
