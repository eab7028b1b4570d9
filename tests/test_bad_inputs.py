"""One validation boundary: bad inputs to train.py, evaluate.py and build_cossat.py are refused before any file
is written or any model is attacked, with ONE line `error: --flag: ...` naming the flag, exit code 2, no
traceback, and the output location left as it was.

The scripts run as subprocesses (each costs a TensorFlow import), all cases at once in a small thread pool; the
evaluate/build_cossat cases share one tiny trained digits run.
"""

import concurrent.futures
import json
import os

import numpy as np
import pytest

from test_cli import error_lines, run_script

TRAIN = ["--flagfile=flags/digits.cfg", "--epochs=1"]

# (id, script, extra args, flag the first error line must name). In args, {run} is the trained digits run,
# {file} an existing regular file, {dir} an existing directory, {npz:NAME} an examples file below, {cfg:NAME} a
# bad flagfile below, {out} the case's own (not yet existing) output directory.
CASES = [
    # train.py: every float flag must be finite; seeds, epochs, example counts; the output directory
    ("train-eps-nan", "train.py", TRAIN + ["--eps=nan", "--output_dir={out}"], "--eps"),
    ("train-lr-inf", "train.py", TRAIN + ["--lr=inf", "--output_dir={out}"], "--lr"),
    ("train-momentum-nan", "train.py", TRAIN + ["--momentum=nan", "--output_dir={out}"], "--momentum"),
    ("train-weight-decay-minus-inf", "train.py", TRAIN + ["--weight_decay=-inf", "--output_dir={out}"],
     "--weight_decay"),
    ("train-step-size-nan", "train.py", TRAIN + ["--step_size=nan", "--output_dir={out}"], "--step_size"),
    ("train-noise-inf", "train.py", TRAIN + ["--noise_sigma=inf", "--output_dir={out}"], "--noise_sigma"),
    ("train-kd-weights-nan", "train.py", TRAIN + ["--kd_weights=nan,0.5,0.25", "--output_dir={out}"],
     "--kd_weights"),
    ("train-seed-negative", "train.py", TRAIN + ["--seed=-1", "--output_dir={out}"], "--seed"),
    ("train-seed-too-large", "train.py", TRAIN + ["--seed=2147483648", "--output_dir={out}"], "--seed"),
    ("train-epochs-negative", "train.py", TRAIN + ["--epochs=-3", "--output_dir={out}"], "--epochs"),
    ("train-eval-examples-0", "train.py", TRAIN + ["--eval_examples=0", "--output_dir={out}"], "--eval_examples"),
    ("train-val-examples-0", "train.py", TRAIN + ["--val_fraction=0", "--val_examples=0", "--output_dir={out}"],
     "--val_examples"),
    ("train-val-examples-minus-2", "train.py", TRAIN + ["--val_examples=-2", "--output_dir={out}"], "--val_examples"),
    ("eval-square-queries-negative", "evaluate.py", ["--audit", "--audit_square_queries=-5"], "--audit_square_queries"),
    ("train-output-dir-is-file", "train.py", TRAIN + ["--output_dir={file}"], "--output_dir"),
    ("train-output-dir-under-file", "train.py", TRAIN + ["--output_dir={file}/run"], "--output_dir"),
    # train.py: accepted, not applied (Boundary II): typed flags the run would not read
    ("train-val-examples-with-held-out-split", "train.py", TRAIN + ["--val_examples=100", "--output_dir={out}"],
     "--val_examples"),
    ("train-wrn-depth-without-wide-resnet", "train.py", TRAIN + ["--wrn_depth=34", "--output_dir={out}"],
     "--wrn_depth"),
    ("train-lr-peak-fraction-piecewise", "train.py", TRAIN + ["--lr_peak_fraction=0.3", "--output_dir={out}"],
     "--lr_peak_fraction"),
    ("train-lr-decay-factor-cosine", "train.py", TRAIN + ["--lr_schedule=cosine", "--lr_decay_factor=0.5",
                                                          "--output_dir={out}"], "--lr_decay_factor"),
    ("train-crop-padding-without-crop", "train.py", TRAIN + ["--crop_padding=2", "--output_dir={out}"],
     "--crop_padding"),
    ("train-data-dir-with-digits", "train.py", TRAIN + ["--data_dir={dir}", "--output_dir={out}"], "--data_dir"),
    ("train-bat-gamma-with-hard-labels", "train.py", TRAIN + ["--bat_gamma=0.1", "--output_dir={out}"],
     "--bat_gamma"),
    ("train-ls-alpha-without-ls-method", "train.py", TRAIN + ["--ls_alpha=0.1", "--output_dir={out}"], "--ls_alpha"),
    ("train-squeeze-reduction-without-beta", "train.py", TRAIN + ["--squeeze_reduction=mean_l2",
                                                                  "--output_dir={out}"], "--squeeze_reduction"),
    ("train-kd-temperature-without-teacher", "train.py", TRAIN + ["--kd_temperature=4", "--output_dir={out}"],
     "--kd_temperature"),
    ("train-swa-mode-without-swa", "train.py", TRAIN + ["--swa_mode=iswa", "--output_dir={out}"], "--swa_mode"),
    ("train-flag-before-overriding-flagfile", "train.py", ["--lr=0.1", "--flagfile=flags/digits.cfg", "--epochs=1",
                                                           "--output_dir={out}"], "--lr"),
    # train.py: each method's own step and BatchNorm rule, the new preset flags (Faithfulness II item 3)
    ("train-step-size-with-bat", "train.py", TRAIN + ["--defense=bat", "--step_size=3", "--output_dir={out}"],
     "--step_size"),
    ("train-step-size-with-fgsm-rs", "train.py", TRAIN + ["--defense=fgsm_rs", "--step_size=3", "--output_dir={out}"],
     "--step_size"),
    ("train-step-size-with-free", "train.py", TRAIN + ["--defense=free", "--step_size=3", "--output_dir={out}"],
     "--step_size"),
    ("train-step-size-with-ssat", "train.py", TRAIN + ["--defense=ssat", "--step_size=3", "--output_dir={out}"],
     "--step_size"),
    ("train-attack-bn-mode-with-free", "train.py",
     TRAIN + ["--defense=free", "--attack_bn_mode=train", "--output_dir={out}"], "--attack_bn_mode"),
    ("train-attack-bn-mode-with-natural", "train.py",
     TRAIN + ["--defense=natural", "--attack_bn_mode=train", "--output_dir={out}"], "--attack_bn_mode"),
    ("train-attack-bn-mode-unknown", "train.py", TRAIN + ["--attack_bn_mode=frozen", "--output_dir={out}"],
     "--attack_bn_mode"),
    ("train-attack-steps-with-bat", "train.py", TRAIN + ["--defense=bat", "--attack_steps=3", "--output_dir={out}"],
     "--attack_steps"),
    ("train-attack-steps-with-natural", "train.py",
     TRAIN + ["--defense=natural", "--attack_steps=3", "--output_dir={out}"], "--attack_steps"),
    ("train-ssat-lambda0-without-adaptive", "train.py",
     TRAIN + ["--defense=ssat", "--nossat_adaptive", "--ssat_lambda0=0.9", "--output_dir={out}"], "--ssat_lambda0"),
    ("train-option-of-another-method-from-a-flagfile", "train.py",
     ["--flagfile={cfg:other_method}", "--defense=pgd", "--output_dir={out}"], "--trades_beta"),
    ("train-fgsm-rs-step-negative", "train.py",
     TRAIN + ["--defense=fgsm_rs", "--fgsm_rs_step_size=-1", "--output_dir={out}"], "--fgsm_rs_step_size"),
    ("train-free-step-negative", "train.py", TRAIN + ["--defense=free", "--free_step_size=-2", "--output_dir={out}"],
     "--free_step_size"),
    ("train-free-step-with-pgd", "train.py", TRAIN + ["--free_step_size=2", "--output_dir={out}"], "--free_step_size"),
    ("train-free-clip-delta-with-pgd", "train.py", TRAIN + ["--nofree_clip_delta", "--output_dir={out}"],
     "--free_clip_delta"),
    ("train-crop-padding-0", "train.py", TRAIN + ["--augmentation=crop", "--crop_padding=0", "--output_dir={out}"],
     "--crop_padding"),
    ("train-crop-padding-whole-image", "train.py",
     TRAIN + ["--augmentation=crop", "--crop_padding=8", "--output_dir={out}"], "--crop_padding"),
    ("train-swa-bn-data-unknown", "train.py", TRAIN + ["--swa", "--swa_bn_data=noisy", "--output_dir={out}"],
     "--swa_bn_data"),
    ("train-swa-bn-data-without-swa", "train.py", TRAIN + ["--swa_bn_data=augmented", "--output_dir={out}"],
     "--swa_bn_data"),
    ("train-lr-warmup-with-piecewise", "train.py", TRAIN + ["--lr_warmup_epochs=2", "--output_dir={out}"],
     "--lr_warmup_epochs"),
    ("train-weight-decay-scope-at-zero", "train.py",
     TRAIN + ["--weight_decay=0", "--weight_decay_scope=kernels", "--output_dir={out}"], "--weight_decay_scope"),
    ("train-bls-temperature-with-sls", "train.py",
     TRAIN + ["--ls_method=sls", "--ls_alpha=0.1", "--bls_temperature=0.5", "--output_dir={out}"], "--bls_temperature"),
    ("train-download-with-digits", "train.py", TRAIN + ["--download", "--output_dir={out}"], "--download"),
    ("train-bat-eps-y-with-adversarial-labels", "train.py",
     TRAIN + ["--defense=bat", "--bat_eps_y=0.3", "--output_dir={out}"], "--bat_eps_y"),
    ("train-ssat-replays-0", "train.py", TRAIN + ["--defense=ssat", "--ssat_replays=0", "--output_dir={out}"],
     "--ssat_replays"),
    ("train-trades-beta-with-pgd", "train.py", TRAIN + ["--trades_beta=3", "--output_dir={out}"], "--trades_beta"),
    ("train-kd-weights-not-summing-to-1", "train.py",
     TRAIN + ["--kd_adv_teacher={dir}", "--kd_weights=0.5,0.5,0.5", "--output_dir={out}"], "--kd_weights"),
    # flagfiles absl would ignore (circular), crash on (binary) or pass on as a stray argument (garbage)
    ("train-flagfile-includes-itself", "train.py", ["--flagfile={cfg:itself}", "--output_dir={out}"], "--flagfile"),
    ("train-flagfile-circular-through-another", "train.py", ["--flagfile={cfg:first}", "--output_dir={out}"],
     "--flagfile"),
    ("train-flagfile-binary", "train.py", ["--flagfile={cfg:binary}", "--output_dir={out}"], "--flagfile"),
    ("train-flagfile-latin1", "train.py", ["--flagfile={cfg:latin1}", "--output_dir={out}"], "--flagfile"),
    ("train-flagfile-garbage-line", "train.py", ["--flagfile={cfg:garbage}", "--output_dir={out}"], "--flagfile"),
    ("train-flagfile-missing", "train.py", ["--flagfile={dir}/missing.cfg", "--output_dir={out}"], "--flagfile"),
    # evaluate.py: flags
    ("eval-step-size-negative", "evaluate.py", ["--attacks=pgd20", "--attack_step_size=-1"], "--attack_step_size"),
    ("eval-step-size-0", "evaluate.py", ["--attacks=pgd20", "--attack_step_size=0"], "--attack_step_size"),
    ("eval-plots-dir-under-file", "evaluate.py", ["--attacks=fgsm", "--diagnostics=linearity",
                                                  "--plots_dir={file}/plots"], "--plots_dir"),
    ("eval-eps-l2-negative", "evaluate.py", ["--eps_l2=-1"], "--eps_l2"),
    ("eval-eps-nan", "evaluate.py", ["--eps=nan"], "--eps"),
    ("eval-batch-size-0", "evaluate.py", ["--eval_batch_size=0"], "--eval_batch_size"),
    ("eval-num-examples-0", "evaluate.py", ["--num_examples=0"], "--num_examples"),
    ("eval-seed-negative", "evaluate.py", ["--seed=-1"], "--seed"),
    ("eval-eot-iter-0", "evaluate.py", ["--attacks=apgd_ce", "--eot_iter=0"], "--eot_iter"),
    ("eval-num-examples-minus-2", "evaluate.py", ["--num_examples=-2"], "--num_examples"),
    ("eval-class-count-differs", "evaluate.py", ["--dataset=cifar100", "--eps=8"], "--dataset"),
    # an evaluation never reports a robustness it did not measure (Boundary II)
    ("eval-attacks-empty", "evaluate.py", ["--attacks="], "--attacks"),
    ("eval-eps-0", "evaluate.py", ["--eps=0", "--attacks=pgd20"], "--eps"),
    ("eval-eps-l2-beyond-every-image", "evaluate.py", ["--eps_l2=1e6"], "--eps_l2"),
    ("eval-eps-l1-beyond-every-image", "evaluate.py", ["--eps_l1=1e9"], "--eps_l1"),
    ("eval-num-examples-with-examples", "evaluate.py", ["--examples={npz:nan}", "--num_examples=10"], "--num_examples"),
    ("eval-dataset-of-another-shape", "evaluate.py", ["--dataset=cifar10"], "--dataset"),
    ("eval-flagfile-garbage-line", "evaluate.py", ["--flagfile={cfg:garbage}"], "--flagfile"),
    ("eval-flagfile-includes-itself", "evaluate.py", ["--flagfile={cfg:itself}"], "--flagfile"),
    ("eval-flagfile-binary", "evaluate.py", ["--flagfile={cfg:binary}"], "--flagfile"),
    ("eval-flag-before-overriding-flagfile", "evaluate.py", ["--eps=3", "--flagfile=flags/digits.cfg"], "--eps"),
    # evaluate.py: --examples files
    ("eval-labels-out-of-range", "evaluate.py", ["--examples={npz:label_10}"], "--examples"),
    ("eval-labels-negative", "evaluate.py", ["--examples={npz:negative}"], "--examples"),
    ("eval-labels-float", "evaluate.py", ["--examples={npz:float_labels}"], "--examples"),
    ("eval-labels-one-hot", "evaluate.py", ["--examples={npz:one_hot}"], "--examples"),
    ("eval-pixels-nan", "evaluate.py", ["--examples={npz:nan}"], "--examples"),
    ("eval-pixels-out-of-range", "evaluate.py", ["--examples={npz:bright}"], "--examples"),
    ("eval-no-examples", "evaluate.py", ["--examples={npz:empty}"], "--examples"),
    ("eval-truncated-npz", "evaluate.py", ["--examples={npz:truncated}"], "--examples"),
    ("eval-no-x", "evaluate.py", ["--examples={npz:no_x}"], "--examples"),
    ("eval-no-y", "evaluate.py", ["--examples={npz:no_y}"], "--examples"),
    ("eval-length-mismatch", "evaluate.py", ["--examples={npz:mismatch}"], "--examples"),
    ("eval-wrong-image-shape", "evaluate.py", ["--examples={npz:shape}", "--eps=2"], "--examples"),
    # evaluate.py: where the report goes (checked before any attack runs)
    ("eval-output-dir-is-file", "evaluate.py", ["--output_dir={file}"], "--output_dir"),
    ("eval-output-dir-under-file", "evaluate.py", ["--output_dir={file}/eval"], "--output_dir"),
    ("eval-output-is-directory", "evaluate.py", ["--output={dir}"], "--output"),
    ("eval-output-under-file", "evaluate.py", ["--output={file}/report.json"], "--output"),
    ("eval-save-adversarial-in-missing-dir", "evaluate.py",
     ["--attacks=fgsm", "--save_adversarial={dir}/missing/a.npz"], "--save_adversarial"),
    ("eval-save-adversarial-is-directory", "evaluate.py", ["--attacks=fgsm", "--save_adversarial={dir}"],
     "--save_adversarial"),
    # build_cossat.py
    ("cossat-calibration-examples-0", "build_cossat.py", ["--calibration_examples=0"], "--calibration_examples"),
    ("cossat-calibration-steps-0", "build_cossat.py", ["--calibration_steps=0"], "--calibration_steps"),
    ("cossat-min-recall-nan", "build_cossat.py", ["--min_recall=nan"], "--min_recall"),
    ("cossat-output-dir-is-file", "build_cossat.py", ["--output_dir={file}"], "--output_dir"),
    ("cossat-output-dir-under-file", "build_cossat.py", ["--output_dir={file}/build"], "--output_dir"),
    ("cossat-flagfile-binary", "build_cossat.py", ["--flagfile={cfg:binary}"], "--flagfile"),
]


def _flagfiles(directory):
    """The bad flagfiles: one that includes itself, two that include each other, a binary one, latin-1 text, one
    with a line that is no flag, and one that sets another method's option (refused whatever its source)."""
    paths = {name: os.path.join(directory, f"{name}.cfg") for name in
             ("itself", "first", "second", "binary", "latin1", "garbage", "other_method")}
    texts = {"itself": f"--eps=2\n--flagfile={paths['itself']}\n", "first": f"--flagfile={paths['second']}\n",
             "second": f"--epochs=1\n--flagfile={paths['first']}\n", "garbage": "--dataset=digits\neps 3\n",
             "other_method": "--dataset=digits\n--epochs=1\n--trades_beta=3\n"}
    for name, text in texts.items():
        with open(paths[name], "w") as handle:
            handle.write(text)
    with open(paths["binary"], "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    with open(paths["latin1"], "wb") as handle:
        handle.write("# r\xe9glages\n--epochs=1\n".encode("latin-1"))
    return paths


def _examples(directory):
    """The bad --examples files (digits shape, 8x8x1; the model has 10 classes)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 8, 8, 1)).astype(np.float32)
    y = np.arange(6)
    arrays = {
        "label_10": dict(x=x, y=np.array([0, 1, 2, 3, 4, 10])),
        "negative": dict(x=x, y=y - 1),
        "float_labels": dict(x=x, y=y + 0.5),
        "one_hot": dict(x=x, y=np.eye(10, dtype=np.float32)[y]),
        "nan": dict(x=np.where(x > 0.9, np.nan, x), y=y),
        "bright": dict(x=x * 255, y=y),
        "empty": dict(x=x[:0], y=y[:0]),
        "no_x": dict(images=x, y=y),
        "no_y": dict(x=x),
        "mismatch": dict(x=x, y=y[:4]),
        "shape": dict(x=np.zeros((6, 28, 28, 1), np.float32), y=y),
        "good": dict(x=x, y=y),
    }
    paths = {}
    for name, content in arrays.items():
        paths[name] = os.path.join(directory, f"{name}.npz")
        np.savez(paths[name], **content)
    with open(paths["good"], "rb") as handle:
        whole = handle.read()
    paths["truncated"] = os.path.join(directory, "truncated.npz")
    with open(paths["truncated"], "wb") as handle:
        handle.write(whole[: len(whole) // 2])
    return paths


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{case id: (CompletedProcess, output location, its state before)} of every case, run 3 at a time."""
    root = tmp_path_factory.mktemp("bad_inputs")
    run = root / "digits-run"
    trained = run_script("train.py", "--flagfile=flags/digits.cfg", "--epochs=1", "--eval_examples=50",
                         f"--output_dir={run}", timeout=400)
    assert trained.returncode == 0, trained.stderr[-3000:]
    existing_file = root / "a_file.txt"
    existing_file.write_text("keep me\n")
    existing_dir = root / "a_dir"
    existing_dir.mkdir()
    npz = _examples(str(root))
    cfg = _flagfiles(str(root))

    def expand(arg, out):
        arg = arg.replace("{run}", str(run)).replace("{file}", str(existing_file)).replace("{dir}", str(existing_dir))
        arg = arg.replace("{out}", str(out))
        for name, path in npz.items():
            arg = arg.replace("{npz:" + name + "}", path)
        for name, path in cfg.items():
            arg = arg.replace("{cfg:" + name + "}", path)
        return arg

    jobs = {}
    for case_id, script, args, _ in CASES:
        out = root / case_id / "out"
        args = [expand(a, out) for a in args]
        if script == "evaluate.py":
            args = [f"--model_dir={run}", "--noaudit", "--noprogress", *args]
            if not any(a.startswith(("--output=", "--output_dir=")) for a in args):
                args.append(f"--output_dir={out}")
        elif script == "build_cossat.py":
            args = [f"--ssat={run}", f"--base={run}", *args]
            if not any(a.startswith("--output_dir=") for a in args):
                args.append(f"--output_dir={out}")
        target = next((a.split("=", 1)[1] for a in args if a.startswith(("--output=", "--output_dir="))), str(out))
        jobs[case_id] = (script, args, target)
    before = {case_id: _state(target) for case_id, (_, _, target) in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case_id: pool.submit(run_script, script, *args, timeout=300)
                   for case_id, (script, args, _) in jobs.items()}
        return {case_id: (futures[case_id].result(), jobs[case_id][2], before[case_id]) for case_id in jobs}


def _state(path):
    """What is at `path`: None (nothing), the text of a file, or the sorted listing of a directory."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    with open(path, "rb") as handle:
        return handle.read()


def test_the_table_is_large_and_covers_every_script():
    assert len(CASES) >= 100 and len({c[0] for c in CASES}) == len(CASES)  # Boundary II: at least 100 bad inputs
    assert {c[1] for c in CASES} == {"train.py", "evaluate.py", "build_cossat.py"}


@pytest.mark.parametrize("case_id,script,args,flag", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_naming_the_flag(outcomes, case_id, script, args, flag):
    result, target, before = outcomes[case_id]
    stderr = result.stderr[-3000:]
    assert result.returncode == 2, (result.returncode, stderr)
    assert "Traceback" not in result.stderr, stderr
    lines = error_lines(result)
    assert len(lines) == 1, stderr
    named = lines[0][len("error:"):].strip()
    # the flag comes first ("--flag: ..." or absl's "flag --flag=value: ..."), as the flag, not a longer name
    assert named.startswith((flag + ":", flag + "=", "flag " + flag + "=")), lines[0]
    assert _state(target) == before, f"{target} changed"
    assert "robust accuracy" not in result.stdout  # nothing was attacked


def test_one_hot_labels_are_recognised(outcomes):
    line = error_lines(outcomes["eval-labels-one-hot"][0])[0]
    assert "labels look one-hot; pass class indices" in line


def test_attack_step_size_refusal_says_why(outcomes):
    line = error_lines(outcomes["eval-step-size-negative"][0])[0]
    assert "positive" in line and "-1" in line


def test_train_eps_nan_exits_2_naming_eps_and_writes_nothing(outcomes):
    result, target, before = outcomes["train-eps-nan"]
    assert result.returncode == 2 and before is None and not os.path.exists(target)
    assert error_lines(result) == [line for line in error_lines(result) if line.startswith("error: --eps:")]
    assert "finite" in error_lines(result)[0]


def test_the_shared_run_writes_strict_json(outcomes, tmp_path_factory):
    """metrics.json of the shared run parses with a parser that refuses NaN/Infinity."""
    result, _, _ = outcomes["train-eps-nan"]
    run = next(p for p in (tmp_path_factory.getbasetemp()).glob("bad_inputs*/digits-run"))
    with open(run / "metrics.json") as handle:
        text = handle.read()

    def refuse(constant):
        raise ValueError(f"non-JSON constant {constant}")

    metrics = json.loads(text, parse_constant=refuse)
    assert 0.0 <= metrics["final"]["robust_accuracy"] <= 1.0


def test_json_text_writes_non_finite_numbers_as_null_with_a_note():
    from tfadv.runs import json_text

    text = json_text({"final": {"robust_accuracy": float("nan"), "clean_accuracy": 0.5},
                      "curve": [1.0, float("inf"), np.float32(2.5)], "eps": np.float64(0.125)})
    parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in {text}"))
    assert parsed["final"] == {"robust_accuracy": None, "clean_accuracy": 0.5}
    assert parsed["curve"] == [1.0, None, 2.5] and parsed["eps"] == 0.125
    assert parsed["non_finite_values"]["paths"] == ["final.robust_accuracy", "curve[1]"]
    finite = {"a": 0.1 + 0.2, "b": [1, 2.5e-7], "c": "x"}
    assert json_text(finite) == json.dumps(finite, indent=2)  # unchanged for finite reports
