"""`--mixed_precision`: a training run's compute dtype, and what `auto` (the default) resolves to.

`auto` trains in mixed bfloat16 (float32 weights, normalisation, losses and logits; `keras` policy
`mixed_bfloat16`) where the hardware computes bfloat16 natively, and in float32 elsewhere:

* CPU: bfloat16 when the CPU has AMX-BF16 or AVX512-BF16 (`amx_bf16` / `avx512_bf16` in /proc/cpuinfo: Intel
  Cooper Lake, Sapphire Rapids and later, AMD Zen 4 and later), where TensorFlow's oneDNN kernels run bfloat16
  matrix products in hardware (on this AMX CPU a training step took 1.6-2.2x less time than in float32,
  docs/scaling.md); float32 on every other CPU (no bfloat16 instructions: emulated, 8.4x slower than float32
  for a PGD-10 step on an AVX2-only AMD EPYC, so an explicit bfloat16 there warns in the run's first line) and
  where the CPU's features cannot be read (no /proc/cpuinfo: macOS, Windows).
* GPU: bfloat16 when every visible GPU has compute capability >= 8.0 (Ampere and later have bfloat16 tensor
  cores; bfloat16 keeps float32's exponent range, so it needs no loss scaling); float32 on older GPUs, which
  have no bfloat16 tensor cores (bfloat16 would be emulated). float16 (faster on Volta / Turing tensor cores)
  needs loss scaling and can underflow in attack gradients, so it stays a choice the user makes:
  `--mixed_precision=float16`.

The choice is made once, when a run starts (`resolve`), logged as the run's first line, recorded in flags.txt
(`--mixed_precision=auto` as typed, then `record_line`: what it resolved to and why) and in metrics.json. A
resumed run keeps the precision it started with, whatever the machine it resumes on: the record of the
interrupted run wins over the device (`recorded_precision`). Its checkpoint would load under another policy
(mixed bfloat16 keeps float32 variables), but the run would then have trained its epochs in two precisions
while metrics.json and flags.txt name one; on a CPU without bfloat16 hardware it is slower, not wrong.
A float16 run's optimizer (a LossScaleOptimizer, with its scale in the checkpoint) would not even match.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Optional, Tuple

AUTO = "auto"
# --mixed_precision value -> Keras dtype policy ("none" is float32, the value of releases before `auto`)
POLICIES = {"none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
PRECISIONS = (AUTO,) + tuple(POLICIES)
CPU_INFO = "/proc/cpuinfo"
BFLOAT16_CPU_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
BFLOAT16_GPU_CAPABILITY = (8, 0)
NO_BFLOAT16_CPU = "this CPU has neither AMX-BF16 nor AVX512-BF16"  # detect()'s reason on such a CPU, no GPU


def cpu_flags(path: str = CPU_INFO) -> Optional[frozenset]:
    """The CPU's feature flags (the `flags` line of /proc/cpuinfo), or None where they cannot be read."""
    try:
        with open(path) as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return None


def gpu_capabilities() -> list:
    """[(major, minor) compute capability, or None if unknown] of every visible GPU ([] without one)."""
    import tensorflow as tf

    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else None)
    return capabilities


def detect() -> Tuple[str, str]:
    """(--mixed_precision value, why) that `auto` means on this machine (see the module's docstring), from
    `gpu_capabilities()` and `cpu_flags()`."""
    capabilities = gpu_capabilities()
    if capabilities:
        if all(c is not None and c >= BFLOAT16_GPU_CAPABILITY for c in capabilities):
            lowest = min(capabilities)
            return "bfloat16", f"GPU compute capability {lowest[0]}.{lowest[1]} has bfloat16 tensor cores"
        known = [c for c in capabilities if c is not None]
        what = f"compute capability {min(known)[0]}.{min(known)[1]} < 8.0" if known else "unknown compute capability"
        return "none", f"a GPU with {what}: no bfloat16 tensor cores"
    flags = cpu_flags()
    if flags is None:
        return "none", f"this CPU's features are unknown (no {CPU_INFO})"
    for flag, name in BFLOAT16_CPU_FLAGS:
        if flag in flags:
            return "bfloat16", f"this CPU has {name}"
    return "none", NO_BFLOAT16_CPU


def _emulated_warning(requested: str) -> str:
    """For an explicit bfloat16 on a CPU known to lack bfloat16 instructions (no GPU): "; warning: ...", else ""."""
    if requested != "bfloat16" or detect()[1] != NO_BFLOAT16_CPU:
        return ""
    return (f"; warning: {NO_BFLOAT16_CPU}: bfloat16 is emulated, slower than float32 (8.4x for a PGD-10 step of "
            "flags/cifar10_cpu.cfg's WRN-16-2 on an AVX2-only AMD EPYC, docs/scaling.md); --mixed_precision=auto "
            "or none trains in float32")


ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
ONEDNN_OFF = (f"oneDNN is off ({ONEDNN_VARIABLE} unset: TensorFlow enables it by default only on CPUs with "
              "neural-network instructions such as AVX512-VNNI, AVX512-BF16 or AMX); "
              f"{ONEDNN_VARIABLE}=1 in the environment made a float32 PGD-10 step of flags/cifar10_cpu.cfg's WRN-16-2 "
              "1.69x faster and a natural step 1.35x faster on an AVX2-only AMD EPYC (docs/scaling.md)")


def onednn_enabled() -> Optional[bool]:
    """Whether TensorFlow runs its CPU kernels through oneDNN in this process, which its environment decides when
    TensorFlow loads (TF_ENABLE_ONEDNN_OPTS, else the CPU); None where this TensorFlow does not say."""
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return None


def onednn_note() -> str:
    """For a CPU run (no GPU) on which TensorFlow left oneDNN off by default: a line saying so and what turning it
    on gained here (`ONEDNN_OFF`); "" when oneDNN is on, a GPU trains, or the user set TF_ENABLE_ONEDNN_OPTS."""
    if os.environ.get(ONEDNN_VARIABLE) is not None or onednn_enabled() is not False or gpu_capabilities():
        return ""
    return ONEDNN_OFF


@dataclasses.dataclass(frozen=True)
class Precision:
    """A run's resolved precision: `value` one of POLICIES, `requested` what --mixed_precision said."""

    value: str
    requested: str
    reason: str

    @property
    def policy(self) -> str:
        return POLICIES[self.value]

    def describe(self) -> str:
        """The run's first line: `precision mixed_bfloat16 (auto: this CPU has AMX-BF16)`."""
        return f"precision {self.policy} ({self.reason})"

    def to_json(self) -> dict:
        return {"requested": self.requested, "resolved": self.value, "reason": self.reason,
                "onednn": onednn_enabled(), ONEDNN_VARIABLE: os.environ.get(ONEDNN_VARIABLE)}


def resolve(requested: str, recorded: Optional[str] = None) -> Precision:
    """The precision a run trains in: an explicit --mixed_precision as given; `auto` as the interrupted run it
    resumes trained (`recorded`, see `recorded_precision`), else as `detect` finds the device."""
    if requested != AUTO:
        return Precision(requested, requested, f"--mixed_precision={requested}{_emulated_warning(requested)}")
    detected, why = detect()
    if recorded is not None:
        here = "" if recorded == detected else f"; on this machine auto would choose {POLICIES[detected]}: {why}"
        return Precision(recorded, AUTO, f"auto: kept from the interrupted run, which started in "
                                         f"{POLICIES[recorded]}{here}")
    return Precision(detected, AUTO, f"auto: {why}")


_RECORD = "# --mixed_precision=auto resolved to "
_RECORD_PATTERN = re.compile(r"^" + re.escape(_RECORD) + r"(\w+)\b", re.MULTILINE)


def record_line(precision: Precision) -> str:
    """The comment flags.txt ends with under `auto` ("" for an explicit value, which flags.txt states)."""
    if precision.requested != AUTO:
        return ""
    return f"{_RECORD}{precision.value} ({precision.reason})\n"


def recorded_precision(flags_text: str, recorded_flag: Optional[str]) -> Optional[str]:
    """The precision an interrupted run trained in, from its flags.txt: its --mixed_precision when explicit (a
    run written before `auto` existed recorded `none`), else the value `record_line` wrote; None if unknown."""
    if recorded_flag in POLICIES:
        return recorded_flag
    match = _RECORD_PATTERN.search(flags_text)
    return match.group(1) if match and match.group(1) in POLICIES else None


def recorded_in_run(flags_path: str) -> Optional[str]:
    """`recorded_precision` of the flags.txt at `flags_path` (None if there is none)."""
    if not os.path.exists(flags_path):
        return None
    with open(flags_path) as handle:
        text = handle.read()
    explicit = re.findall(r"^--mixed_precision=(\S+)\s*$", text, re.MULTILINE)
    return recorded_precision(text, explicit[-1] if explicit else None)
