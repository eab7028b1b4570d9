"""--mixed_precision=auto (the default, issue 24 item 4): mixed bfloat16 where the hardware has bfloat16
arithmetic (a CPU with AMX-BF16 / AVX512-BF16, GPUs of compute capability >= 8.0), float32 elsewhere; the run
logs it first, records `auto` in flags.txt with what it resolved to, and metrics.json the resolved precision and
why; a resumed run keeps the precision it started with on any machine. The device is faked (`bfloat16_cpu`,
`older_cpu`), so every test passes whatever machine runs it."""

import json
import os

import keras
import pytest

from tfadv import experiment, precision, runs
from tfadv.config import TrainConfig


def _machine(monkeypatch, cpu_flags, gpus=()):
    monkeypatch.setattr(precision, "cpu_flags", lambda *_: cpu_flags)
    monkeypatch.setattr(precision, "gpu_capabilities", lambda: list(gpus))


@pytest.fixture
def bfloat16_cpu(monkeypatch):
    _machine(monkeypatch, frozenset({"fpu", "avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}))


@pytest.fixture
def older_cpu(monkeypatch):
    _machine(monkeypatch, frozenset({"fpu", "avx2", "avx512f"}))


@pytest.mark.parametrize("cpu_flags, gpus, expected, reason", [
    ({"avx512f", "amx_tile", "amx_bf16", "avx512_bf16"}, (), "bfloat16", "this CPU has AMX-BF16"),
    ({"avx512f", "avx512_bf16"}, (), "bfloat16", "this CPU has AVX512-BF16"),
    ({"avx2", "avx512f", "amx_tile", "amx_int8"}, (), "none", "this CPU has neither AMX-BF16 nor AVX512-BF16"),
    (None, (), "none", "this CPU's features are unknown (no /proc/cpuinfo)"),
    ({"amx_bf16"}, [(8, 6)], "bfloat16", "GPU compute capability 8.6 has bfloat16 tensor cores"),
    # a GPU decides, not the host CPU: older GPUs have no bfloat16 arithmetic
    ({"amx_bf16"}, [(7, 5)], "none", "a GPU with compute capability 7.5 < 8.0: no bfloat16 tensor cores"),
    (set(), [(9, 0), (7, 0)], "none", "a GPU with compute capability 7.0 < 8.0: no bfloat16 tensor cores"),
    (set(), [None], "none", "a GPU with unknown compute capability: no bfloat16 tensor cores"),
])
def test_auto_resolves_from_the_device(monkeypatch, cpu_flags, gpus, expected, reason):
    _machine(monkeypatch, None if cpu_flags is None else frozenset(cpu_flags), gpus)
    resolved = precision.resolve("auto")
    assert (resolved.value, resolved.requested, resolved.reason) == (expected, "auto", f"auto: {reason}")
    assert resolved.describe() == f"precision {precision.POLICIES[expected]} (auto: {reason})"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n"
                       "processor\t: 1\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
    assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "sse2", "avx512f", "amx_bf16", "amx_tile"}
    assert precision.cpu_flags(str(tmp_path / "missing")) is None


def test_explicit_bfloat16_on_a_cpu_without_bfloat16_instructions_trains_so_and_says_it_is_emulated(older_cpu,
                                                                                                     monkeypatch):
    """An AMD EPYC (Zen 3, AVX2 only) here ran a PGD-10 step of the CIFAR preset's WRN-16-2 8.4x slower in mixed
    bfloat16 than in float32: the flag keeps its effect, and the run's first line and metrics.json say why it is
    slow and what trains in float32."""
    resolved = precision.resolve("bfloat16")
    assert (resolved.value, resolved.policy) == ("bfloat16", "mixed_bfloat16")
    assert resolved.reason.startswith("--mixed_precision=bfloat16; warning: this CPU has neither AMX-BF16 nor "
                                      "AVX512-BF16: bfloat16 is emulated, slower than float32")
    assert "--mixed_precision=auto or none trains in float32" in resolved.reason
    assert precision.resolve("none").reason == "--mixed_precision=none"  # float32 needs no such hardware
    _machine(monkeypatch, frozenset({"avx2"}), gpus=[(8, 0)])  # a bfloat16 GPU: the CPU does not matter
    assert precision.resolve("bfloat16").reason == "--mixed_precision=bfloat16"
    _machine(monkeypatch, None)  # features unknown (macOS, Windows): nothing to warn about
    assert precision.resolve("bfloat16").reason == "--mixed_precision=bfloat16"


def test_explicit_values_are_kept_on_any_device(bfloat16_cpu):
    assert TrainConfig().runtime.mixed_precision == "auto"
    for value, policy in (("none", "float32"), ("bfloat16", "mixed_bfloat16"), ("float16", "mixed_float16")):
        resolved = precision.resolve(value)
        assert (resolved.value, resolved.policy, resolved.reason) == (value, policy, f"--mixed_precision={value}")
        assert precision.record_line(resolved) == ""  # flags.txt states it already
    config = TrainConfig.from_flags(defense="natural", mixed_precision="none", output_dir="unused")
    try:
        assert experiment.set_precision(config).policy == "float32"
        assert keras.mixed_precision.global_policy().name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _config(out, **values):
    flags = dict(defense="natural", epochs=3, train_examples=128, batch_size=64, eval_examples=32,
                 val_every=3, val_attack_steps=1, eval_attack_steps=1, output_dir=str(out))
    return TrainConfig.from_flags(**{**flags, **values})


class Interrupted(Exception):
    pass


def _train(config, stop_after_epoch=None):
    """experiment.train(config) -> (metrics or None, [(log line, Keras' global policy when it was logged)]);
    with `stop_after_epoch`, interrupted once that epoch's checkpoint is written (as by a kill: no metrics.json)."""
    lines = []

    def log(line):
        lines.append((line, keras.mixed_precision.global_policy().name))
        if stop_after_epoch is not None and line.startswith(f"epoch {stop_after_epoch + 1}/"):
            raise Interrupted  # EpochLog logs before the epoch's checkpoint: epoch `stop_after_epoch`'s is the last

    try:
        return experiment.train(config, log=log), lines
    except Interrupted:
        return None, lines


def _training_policies(lines):
    """Keras' policy while the run logged its summary and its epochs (the network and steps are built under it)."""
    return {policy for line, policy in lines if line.startswith(("epoch ", "natural on digits"))}


def test_a_run_logs_records_and_trains_in_what_auto_resolved_to(tmp_path, monkeypatch):
    for name, flags, expected, reason in (("amx", {"amx_bf16", "avx512_bf16"}, "bfloat16", "this CPU has AMX-BF16"),
                                          ("old", {"avx2"}, "none", "this CPU has neither AMX-BF16 nor AVX512-BF16")):
        _machine(monkeypatch, frozenset(flags))
        out = tmp_path / name
        metrics, lines = _train(_config(out, epochs=1))
        policy = precision.POLICIES[expected]
        assert lines[0] == (f"precision {policy} (auto: {reason})", "float32")  # the run's first line
        assert _training_policies(lines) == {policy}
        assert keras.mixed_precision.global_policy().name == "float32"  # the caller's policy is given back
        recorded = json.loads((out / runs.METRICS_FILE).read_text())["precision"]
        assert recorded == metrics["precision"] == {"training": policy, "measured": "float32", "requested": "auto",
                                                    "resolved": expected, "reason": f"auto: {reason}",
                                                    "onednn": precision.onednn_enabled(),
                                                    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
        flags_txt = (out / runs.FLAGS_FILE).read_text()
        assert "\n--mixed_precision=auto\n" in flags_txt  # as typed
        assert f"\n# --mixed_precision=auto resolved to {expected} (auto: {reason})\n" in flags_txt
        assert precision.recorded_in_run(str(out / runs.FLAGS_FILE)) == expected


@pytest.mark.parametrize("variable, expected", [("1", True), ("0", False)])
def test_onednn_detection_reads_what_tensorflow_runs_with(variable, expected):
    """onednn_enabled() asks TensorFlow (a private query, so this checks it still answers) in a process whose
    TF_ENABLE_ONEDNN_OPTS is set either way."""
    import subprocess
    import sys

    code = "from tfadv import precision; print(precision.onednn_enabled())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": variable, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.stdout.strip().splitlines()[-1] == str(expected)


def test_a_cpu_run_with_onednn_off_by_default_says_what_turning_it_on_gained(tmp_path, monkeypatch):
    """On an AVX2-only AMD EPYC TensorFlow leaves oneDNN off unless TF_ENABLE_ONEDNN_OPTS=1, which made a float32
    PGD-10 step 1.69x faster: such a run's second line says so, and metrics.json records oneDNN and the variable.
    Nothing is said where oneDNN is on, where the user set the variable, or where a GPU trains."""
    _machine(monkeypatch, frozenset({"avx2"}))
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    monkeypatch.setattr(precision, "onednn_enabled", lambda: False)
    metrics, lines = _train(_config(tmp_path / "off", epochs=1))
    assert lines[0][0].startswith("precision float32 (auto: ")
    assert lines[1][0] == precision.ONEDNN_OFF and "TF_ENABLE_ONEDNN_OPTS=1 in the environment made" in lines[1][0]
    assert [line for line, _ in lines].count(precision.ONEDNN_OFF) == 1
    recorded = json.loads((tmp_path / "off" / runs.METRICS_FILE).read_text())["precision"]
    assert (recorded["onednn"], recorded["TF_ENABLE_ONEDNN_OPTS"]) == (False, None)
    monkeypatch.setattr(precision, "onednn_enabled", lambda: True)
    metrics, lines = _train(_config(tmp_path / "on", epochs=1))
    assert precision.ONEDNN_OFF not in [line for line, _ in lines] and metrics["precision"]["onednn"] is True
    monkeypatch.setattr(precision, "onednn_enabled", lambda: False)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")  # the user's choice: not second-guessed
    assert precision.onednn_note() == ""
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS")
    assert precision.onednn_note() == precision.ONEDNN_OFF
    _machine(monkeypatch, frozenset({"avx2"}), gpus=[(8, 0)])  # a GPU trains: the CPU's kernels hardly matter
    assert precision.onednn_note() == ""


def test_a_resumed_run_keeps_the_precision_it_started_with(tmp_path, monkeypatch):
    """Started on an AMX machine (bfloat16), interrupted after epoch 1, resumed on an older CPU: it goes on in
    bfloat16 (the checkpoint's run trained in it; metrics.json names one precision), says so, and records it.
    The reverse too: a run started in float32 on the older CPU resumes in float32 on the AMX one."""
    for first, then, started in ((frozenset({"amx_bf16"}), frozenset({"avx2"}), "bfloat16"),
                                 (frozenset({"avx2"}), frozenset({"amx_bf16"}), "none")):
        out = tmp_path / f"started-{started}"
        _machine(monkeypatch, first)
        metrics, lines = _train(_config(out), stop_after_epoch=1)
        policy, other = precision.POLICIES[started], precision.POLICIES["none" if started == "bfloat16" else
                                                                        "bfloat16"]
        assert metrics is None and not os.path.exists(runs.metrics_path(str(out)))
        assert _training_policies(lines) == {policy}
        _machine(monkeypatch, then)
        assert precision.resolve("auto").policy == other  # a new run on this machine would train in `other`
        metrics, lines = _train(_config(out))
        assert lines[0][0].startswith(f"precision {policy} (auto: kept from the interrupted run, which started in "
                                      f"{policy}; on this machine auto would choose {other}: ")
        assert any(line.startswith(f"resuming {out} after epoch 1") for line, _ in lines)
        assert _training_policies(lines) == {policy}
        assert metrics["precision"]["training"] == policy and metrics["precision"]["resolved"] == started
        # the resumed run's flags.txt still records what the run trains in: a second resume keeps it too
        assert precision.recorded_in_run(str(out / runs.FLAGS_FILE)) == started


def test_auto_resumes_a_run_recorded_before_auto_existed_and_an_explicit_change_is_refused(tmp_path, monkeypatch,
                                                                                          bfloat16_cpu):
    """A run interrupted before `auto` existed recorded the default `--mixed_precision=none`: rerunning the same
    command (now `auto`) resumes it in float32 rather than refusing a changed flag. An explicit value that
    differs from the interrupted run's flags.txt is still refused, naming the flag."""
    out = tmp_path / "run"
    metrics, _ = _train(_config(out, mixed_precision="none"), stop_after_epoch=1)
    assert metrics is None and "\n--mixed_precision=none\n" in (out / runs.FLAGS_FILE).read_text()
    with pytest.raises(experiment.RunError, match=r"--mixed_precision=bfloat16 \(was none\)"):
        experiment.train(_config(out, mixed_precision="bfloat16"), log=lambda *_: None)
    metrics, lines = _train(_config(out))
    assert lines[0][0] == ("precision float32 (auto: kept from the interrupted run, which started in float32; on "
                           "this machine auto would choose mixed_bfloat16: this CPU has AMX-BF16)")
    assert _training_policies(lines) == {"float32"} and metrics["precision"]["resolved"] == "none"


def test_a_finished_run_overwritten_resolves_afresh(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _machine(monkeypatch, frozenset({"avx2"}))
    _train(_config(out, epochs=1))
    _machine(monkeypatch, frozenset({"amx_bf16"}))
    metrics, lines = _train(_config(out, epochs=1, overwrite=True))
    assert lines[0][0] == "precision mixed_bfloat16 (auto: this CPU has AMX-BF16)"
    assert metrics["precision"]["training"] == "mixed_bfloat16"


def test_workers_compare_the_resolved_precision():
    """Multi-worker: each worker digests what --mixed_precision resolved to on its machine, so `auto` on a
    bfloat16 and an older machine differs like a different flag (tfadv.distribute.check_same_flags)."""
    from tfadv import distribute

    config = TrainConfig.from_flags(defense="natural", output_dir="unused")
    amx, older = distribute.flag_digests(config, "bfloat16"), distribute.flag_digests(config, "none")
    assert [name for name in amx if amx[name] != older[name]] == ["mixed_precision"]
    assert distribute.flag_digests(config.replace(mixed_precision="bfloat16")) == amx
