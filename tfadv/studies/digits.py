"""The digits tables of docs/results.md (scripts/digits_table.py): each row trains with flags/digits.cfg plus its
flags (replacing the run), is evaluated on all 450 test images at eps 2/16, and its line is printed as it
finishes, then the whole Markdown table (seconds per epoch also as a ratio to the table's first row).

The training tables use FGSM, PGD-20 (CE), PGD-20 (CW margin) and PGD-100 (DEFAULT_EVALUATION); "evaluation" runs
the standard suite plus AutoAttack-standard with the gradient-masking audit and reports the suite's run time;
"ssat" adds AutoAttack and builds Co-SSAT(PGD-AT) from the SSAT and PGD-AT rows, evaluated white-box,
half-white-box and with paper 000 App. H.2's AutoAttack dispatch; "label_smoothing" also prints paper 004's
linear-robustness (eps_L) table for EPS_L_ROWS; "smoothening" is paper 001's robust-overfitting table (PGD-AT,
+ self-teachers, + SWA) on a 300-image training subset. {name} in a row's flags is that row's run directory."""

import os

from tfadv.studies import jobs

FLAGFILE = "--flagfile=flags/digits.cfg"
TABLES = {
    "baselines": [
        ("natural", "--defense=natural"),
        ("PGD-AT", "--defense=pgd"),
        ("FGSM-RS", "--defense=fgsm_rs"),  # one step of 1.25 eps = 2.5 levels (--fgsm_rs_step_size default)
        ("Free-AT (m=4)", "--defense=free --epochs=8"),  # step eps = 2 levels (--free_step_size default)
        ("TRADES", "--defense=trades"),
    ],
    # paper 004's MNIST settings in digits levels: sigma 0.3 = 4.8/16, sigma 0.5 = 8/16
    "label_smoothing": [
        ("natural", "--defense=natural"),
        ("uniform LS a=0.5", "--defense=label_smoothing --ls_method=uniform --ls_alpha=0.5"),
        ("uniform LS a=0.95 + noise 0.3", "--defense=label_smoothing --ls_method=uniform --ls_alpha=0.95 "
                                          "--noise_sigma=4.8"),
        ("ALS a=0.1", "--defense=label_smoothing --ls_method=als --ls_alpha=0.1"),
        ("ALS a=0.4", "--defense=label_smoothing --ls_method=als --ls_alpha=0.4"),
        ("logit squeeze b=0.5 + noise 0.5", "--defense=logit_squeeze --squeeze_beta=0.5 --noise_sigma=8"),
        ("PGD-AT", "--defense=pgd"),
        ("PGD-AT + ALS a=0.1", "--defense=pgd --ls_method=als --ls_alpha=0.1"),
    ],
    # paper 002 on digits: eps 2/16, one step of eps from a random start (BAT), PGD-10 for PGD-AT / Madry-LA
    "bat": [
        ("PGD-AT", "--defense=pgd"),
        ("R-FGSM", "--defense=bat --bat_attack=fgsm --bat_labels=hard"),
        ("R-LL", "--defense=bat --bat_attack=ll --bat_labels=hard"),
        ("R-MC", "--defense=bat --bat_attack=mc --bat_labels=hard"),
        ("R-MC-LS", "--defense=bat --bat_labels=uniform --bat_eps_y=0.5"),
        ("R-MC-LA", "--defense=bat"),
        ("R-MC-LA3 (top-k)", "--defense=bat --bat_top_k=3"),
        ("Madry-LA", "--defense=pgd --pgd_labels=bat"),
    ],
    # paper 000 on digits: SSAT with m=4 replays, cyclic LR 0 -> 0.1 -> 0, 10 passes; Free-AT with the same
    "ssat": [
        ("Free-AT (m=4)", "--defense=free --free_replays=4 --epochs=10 --lr_schedule=cyclic --lr=0.1"),
        ("SSAT", "--defense=ssat --ssat_replays=4 --epochs=10 --lr_schedule=cyclic --lr=0.1"),
        ("SSAT w/o boundary split", "--defense=ssat --ssat_replays=4 --epochs=10 --lr_schedule=cyclic --lr=0.1 "
                                    "--nossat_boundary_split"),
        ("SSAT w/o adaptive LS", "--defense=ssat --ssat_replays=4 --epochs=10 --lr_schedule=cyclic --lr=0.1 "
                                 "--nossat_adaptive"),
        ("SSAT w/o target reg.", "--defense=ssat --ssat_replays=4 --epochs=10 --lr_schedule=cyclic --lr=0.1 "
                                 "--ssat_target_beta=0"),
        ("SSAT all off", "--defense=ssat --ssat_replays=4 --epochs=10 --lr_schedule=cyclic --lr=0.1 "
                         "--nossat_boundary_split --nossat_adaptive --ssat_target_beta=0"),
        ("PGD-AT", "--defense=pgd"),
    ],
}
# paper 001 on digits: 300 training images, 150 epochs, LR 0.1 x0.1 at 50 / 100, validation every 2 epochs
SMOOTHENING = "--train_examples=300 --epochs=150 --lr=0.1 --lr_decay_epochs=50,100 --val_every=2"
TABLES["smoothening"] = [
    ("natural (standard teacher)", f"--defense=natural {SMOOTHENING}"),
    ("PGD-AT", f"--defense=pgd {SMOOTHENING}"),
    ("+ KD (`--kd_adv_teacher --kd_std_teacher`)", f"--defense=pgd {SMOOTHENING} --kd_adv_teacher={{PGD-AT}} "
                                                     "--kd_std_teacher={natural (standard teacher)}"),
    ("+ KD + SWA (`--swa`)", f"--defense=pgd {SMOOTHENING} --kd_adv_teacher={{PGD-AT}} "
                             "--kd_std_teacher={natural (standard teacher)} --swa"),
]
EPS_L_ROWS = ("natural", "uniform LS a=0.5", "logit squeeze b=0.5 + noise 0.5", "PGD-AT")
TABLES["evaluation"] = [
    ("natural", "--defense=natural"),
    ("label smoothing (uniform a=0.5)", "--defense=label_smoothing --ls_method=uniform --ls_alpha=0.5"),
    ("PGD-AT", "--defense=pgd"),
]
EVALUATION = {
    "evaluation": ("--suite=standard,autoattack", [("PGD-20", "pgd20"), ("CW-20", "cw20"), ("APGD-CE", "apgd_ce"),
                                                   ("+APGD-T", "apgd_t"), ("+FAB-T", "fab_t"), ("+Square", "square")]),
    "ssat": ("--attacks=fgsm,pgd20,cw20,pgd100 --suite=autoattack",
             [("FGSM", "fgsm"), ("PGD-20 (CE)", "pgd20"), ("PGD-20 (CW)", "cw20"), ("PGD-100", "pgd100"),
              ("AutoAttack", "square")]),
}
DEFAULT_EVALUATION = ("--attacks=fgsm,pgd20,cw20,pgd100", [("FGSM", "fgsm"), ("PGD-20 (CE)", "pgd20"),
                                                          ("PGD-20 (CW)", "cw20"), ("PGD-100", "pgd100")])


def write_table(table, runs_dir):
    """Runs the rows of TABLES[table] into `runs_dir` and prints the table(s)."""
    os.makedirs(runs_dir, exist_ok=True)
    if table == "smoothening":
        return smoothening_table(runs_dir)
    outs = attack_table(table, runs_dir)
    if table == "ssat":
        cossat_rows(runs_dir, outs["SSAT"], outs["PGD-AT"])
    if table == "label_smoothing":
        eps_l_rows({name: outs[name] for name in EPS_L_ROWS})


def attack_table(table, runs_dir):
    """The training-and-attack table; returns {row name: its run directory}."""
    eval_args, columns = EVALUATION.get(table, DEFAULT_EVALUATION)
    audit = table == "evaluation"
    header = ["defense", "flags", "clean"] + [c for c, _ in columns] + ["worst case (ℓ∞)"]
    header += ["audit warnings", "suite s"] if audit else ["s/epoch", "time vs first row"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    reference = None
    outs = {}
    for index, (name, args) in enumerate(TABLES[table]):
        out = os.path.join(runs_dir, f"{table}-{index}")
        outs[name] = out
        jobs.run_or_exit("train.py", FLAGFILE, *args.split(), f"--output_dir={out}", "--overwrite",
                         log=out + ".train.log")
        jobs.run_or_exit("evaluate.py", f"--model_dir={out}", *eval_args.split(), "--num_examples=-1",
                         f"--output={out}/eval.json", "--noprogress", *([] if audit else ["--noaudit"]),
                         log=out + ".eval.log")
        report, metrics = jobs.read_json(f"{out}/eval.json"), jobs.read_json(f"{out}/metrics.json")
        a = report["attacks"]
        cells = [report["clean_accuracy"]] + [a[k]["robust_accuracy"] for _, k in columns]
        cells.append(report.get("worst_case_by_norm", {}).get("linf", report["worst_case_accuracy"]))
        line = f"| {name} | `{args}` | " + " | ".join(f"{100 * v:.1f}" for v in cells)
        if audit:
            warned = [k for k, c in report["audit"].items() if c["verdict"] == "warn"]
            seconds = sum(entry["seconds"] for entry in a.values())
            line += f" | {', '.join(warned) or 'none'} | {seconds:.0f} |"
        else:
            seconds = metrics["seconds_per_epoch"]
            reference = reference or seconds
            line += f" | {seconds:.3f} | {seconds / reference:.2f} |"
        lines.append(line)
        print(line, flush=True)
    print("\n".join(lines))
    return outs


def smoothening_table(runs_dir):
    """Paper 001's robust-overfitting table from each run's metrics (test RA = PGD-20 at eps 2/16 on all 450 test
    images; best = the best-validation-RA checkpoint); the first row is the standard teacher, without a line."""
    outs = {}
    lines = ["| run | RA best | RA final | RA diff | SA best | SA final | SA diff | best epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for index, (name, args) in enumerate(TABLES["smoothening"]):
        out = os.path.join(runs_dir, f"smoothening-{index}")
        outs[name] = out
        for other, path in outs.items():
            args = args.replace("{" + other + "}", path)
        jobs.run_or_exit("train.py", FLAGFILE, *args.split(), f"--output_dir={out}", "--overwrite",
                         log=out + ".train.log")
        if index == 0:
            continue
        metrics = jobs.read_json(f"{out}/metrics.json")
        best, final = metrics["best"], metrics["final"]
        cells = [best["robust_accuracy"], final["robust_accuracy"], best["robust_accuracy"] - final["robust_accuracy"],
                 best["clean_accuracy"], final["clean_accuracy"], best["clean_accuracy"] - final["clean_accuracy"]]
        line = f"| {name} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + f" | {best['epoch']} |"
        lines.append(line)
        print(line, flush=True)
    print("\n".join(lines))


def eps_l_rows(outs):
    """Paper 004 Table 1's columns: the share predicted robust by the linear estimate eps_L (eps < eps_L), FGSM on
    the cross-entropy and on the CW margin, and the medians behind eps_L; all 450 test images, eps 2/16."""
    lines = ["| model | predicted | FGSM (CE) | FGSM (CW) | median logit gap | median gradient gap | "
             "median coherence |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, out in outs.items():
        jobs.run_or_exit("evaluate.py", f"--model_dir={out}", "--attacks=fgsm", "--diagnostics=eps_l",
                         "--num_examples=-1", "--noaudit", "--noprogress", f"--output={out}/eps_l.json",
                         log=out + ".eps_l.log")
        result = jobs.read_json(f"{out}/eps_l.json")["diagnostics"]["eps_l"]
        lines.append(f"| {name} | {100 * result['predicted_robust_accuracy']:.1f} | "
                     f"{100 * result['fgsm_ce_accuracy']:.1f} | {100 * result['fgsm_cw_accuracy']:.1f} | "
                     f"{result['logit_gap']['median']:.2f} | {result['gradient_gap']['median']:.1f} | "
                     f"{result['coherence']['median']:.2f} |")
    print("\n".join(lines))


COSSAT_PROTOCOLS = {"half_white_box": "half-white-box (attack SSAT, classify with Co-SSAT)",
                    "white_box": "white-box (attack composite and each branch)",
                    "aa_dispatch": "App. H.2 (each attack on each branch separately, dispatched by the detector)"}


def cossat_rows(runs_dir, ssat, base):
    """Co-SSAT(PGD-AT) from the SSAT and PGD-AT runs: calibration, then the three protocols with AutoAttack."""
    out = os.path.join(runs_dir, "cossat")
    jobs.run_or_exit("build_cossat.py", f"--ssat={ssat}", f"--base={base}", FLAGFILE, f"--output_dir={out}",
                     "--overwrite", log=out + ".build.log")
    jobs.run_or_exit("evaluate.py", f"--model_dir={out}", "--attacks=fgsm,pgd20,cw20,pgd100", "--suite=autoattack",
                     "--num_examples=-1", "--cossat_protocol=all", "--noaudit", "--noprogress",
                     f"--output={out}/eval.json", log=out + ".eval.log")
    report = jobs.read_json(f"{out}/eval.json")
    names = ["fgsm", "pgd20", "cw20", "pgd100"]
    lines = ["| model | protocol | clean | FGSM | PGD-20 (CE) | PGD-20 (CW) | PGD-100 | AutoAttack | worst case |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for protocol, label in COSSAT_PROTOCOLS.items():
        result = report["cossat"][protocol]
        a = result["attacks"]
        cells = [result["clean_accuracy"]] + [a[n]["robust_accuracy"] if n in a else None for n in names]
        cells += [a["square"]["robust_accuracy"], result["worst_case_accuracy"]]
        lines.append(f"| Co-SSAT(PGD-AT) | {label} | " + " | ".join("—" if v is None else f"{100 * v:.1f}"
                                                                    for v in cells) + " |")
    print("\n".join(lines))
