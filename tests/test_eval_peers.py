"""The evaluation benchmark against torchattacks and ART (scripts/bench_eval_peers.py, tfadv.studies.eval_peers):
what runs without PyTorch (--help, the one-line refusal naming the missing optional dependencies, the table and its
per-example agreement, the mirror check), and, only where PyTorch is installed, the torch copy of a network giving
Keras' logits. PyTorch is never needed by the suite (CI does not install it)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT
from tfadv.studies import eval_peers

SCRIPT = os.path.join(ROOT, "scripts", "bench_eval_peers.py")
BLOCKED = ("torch", "torchattacks", "art")


def run_without_peers(*args):
    """The script with torch, torchattacks and ART unimportable (as on CI, whatever is installed here); stderr ends
    with whether TensorFlow had been imported."""
    code = ("import runpy, sys\n"
            f"for name in {BLOCKED!r}: sys.modules[name] = None\n"
            f"sys.argv = [{SCRIPT!r}, *{list(args)!r}]\n"
            "try:\n"
            f"    runpy.run_path({SCRIPT!r}, run_name='__main__')\n"
            "finally:\n"
            "    sys.stderr.write(f\"tensorflow imported: {'tensorflow' in sys.modules}\\n\")\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_help_exits_0_without_torch_or_tensorflow():
    done = run_without_peers("--help")
    assert done.returncode == 0, done.stderr[-500:]
    assert "--model_dir" in done.stdout and "--peers" in done.stdout and "torchattacks" in done.stdout
    assert done.stderr == "tensorflow imported: False\n"


def test_missing_optional_dependencies_are_named_in_one_line_before_anything_loads():
    done = run_without_peers("--model_dir=/nonexistent", "--num_examples=5")
    assert done.returncode == 1 and done.stdout == ""
    # the interpreter prints sys.exit's message after the wrapper's `finally` line
    assert done.stderr.splitlines() == [
        "tensorflow imported: False",
        "error: bench_eval_peers.py needs torch, torchattacks, art for --peers=torchattacks,torchattacks_autoattack,"
        "art, which tfadv does not install: pip install torch==2.13.0 && pip install --no-deps torchattacks==3.5.1 "
        "&& pip install adversarial-robustness-toolbox (or --peers= for tfadv alone)"]


def test_only_the_chosen_peers_dependencies_are_needed(monkeypatch):
    for name in BLOCKED:
        monkeypatch.setitem(sys.modules, name, None)
    assert eval_peers.missing_dependencies(["art"]) == ["torch", "art"]
    assert eval_peers.missing_dependencies(["torchattacks_autoattack"]) == ["torch", "torchattacks"]
    assert eval_peers.missing_dependencies([]) == []  # tfadv alone
    assert eval_peers.check_peers("".split(",")) == []
    with pytest.raises(ValueError, match="unknown cleverhans; valid: torchattacks, torchattacks_autoattack, art"):
        eval_peers.check_peers(["art", "cleverhans"])


def test_a_busy_machine_is_said_to_give_no_measurement():
    assert eval_peers.busy_warning(0.9, 2) is None
    assert eval_peers.busy_warning(7.5, 2).startswith("WARNING: load average 7.50 on 2 cores: the machine is not quiet")


def tfadv_rows():
    """A 6-example cascade: examples 4, 5 misclassified clean; APGD-CE breaks 0; APGD-T breaks 1; FAB-T and Square
    break nothing."""
    clean = np.array([1, 1, 1, 1, 0, 0], bool)
    after = [np.array([0, 1, 1, 1, 0, 0], bool), np.array([0, 0, 1, 1, 0, 0], bool)]
    after += [after[-1], after[-1]]
    rows = eval_peers.cascade(eval_peers.ATTACKS, clean, after, [(2.0, 3.0), (4.0, 5.0), (1.0, 1.0), (3.0, 3.0)])
    rows.append(eval_peers.stage(eval_peers.WHOLE, np.ones(6, bool), after[-1], 10.0, 12.0))
    return [{**row, "tool": "tfadv (warm)"} for row in rows]


def test_cascade_stages_attack_what_the_earlier_ones_left():
    rows = tfadv_rows()
    assert [row["attacked"].sum() for row in rows] == [4, 3, 2, 2, 6]
    assert eval_peers.broken(rows[0]).tolist() == [1, 0, 0, 0, 0, 0]
    assert eval_peers.broken(rows[1]).tolist() == [0, 1, 0, 0, 0, 0]
    assert not eval_peers.broken(rows[2]).any()


def test_agreement_counts_the_points_both_attacked_with_the_same_outcome():
    ours = tfadv_rows()
    # a peer whose APGD-CE broke 0 and 2 (not 0 alone), so its APGD-T attacked 1 and 3 and broke neither
    clean = ours[0]["attacked"]
    after = [np.array([0, 1, 0, 1, 0, 0], bool)] * 4
    theirs = eval_peers.cascade(eval_peers.ATTACKS, clean, after, [(4.0, 6.0), (40.0, 50.0), (2.0, 2.0), (6.0, 6.0)])
    assert eval_peers.agreement(theirs[0], ours[0]) == (3, 4)  # example 2: broken by them, not by us
    assert eval_peers.agreement(theirs[1], ours[1]) == (1, 2)  # both attacked 1 and 3; only we broke 1
    theirs.append(eval_peers.stage(eval_peers.WHOLE, np.ones(6, bool), after[-1], 52.0, 64.0))
    assert eval_peers.agreement(theirs[-1], ours[-1]) == (4, 6)  # final robustness differs on 1 and 2
    table = eval_peers.format_table(ours + [{**row, "tool": "torchattacks"} for row in theirs], "tfadv (warm)")
    lines = table.splitlines()
    assert lines[0].startswith("| tool | attack | attacked | wall s | CPU s | robust accuracy | same outcome")
    assert lines[2] == "| tfadv (warm) | APGD-CE | 4 | 2.0 | 3.0 | 0.5000 |  |  |"
    assert lines[7] == "| torchattacks | APGD-CE | 4 | 4.0 | 6.0 | 0.3333 | 3/4 (75.0%) | 2.00 |"
    assert lines[8] == "| torchattacks | APGD-T | 2 | 40.0 | 50.0 | 0.3333 | 1/2 (50.0%) | 10.00 |"
    assert lines[11] == "| torchattacks | AutoAttack (whole) | 6 | 52.0 | 64.0 | 0.3333 | 4/6 (66.7%) | 5.20 |"
    entries = eval_peers.to_json(ours + [{**theirs[0], "tool": "ART"}], "tfadv (warm)")
    assert entries[-1]["same_outcome_as_tfadv"] == [3, 4] and entries[-1]["robust"] == [0, 1, 0, 1, 0, 0]
    assert "same_outcome_as_tfadv" not in entries[0] and entries[0]["attacked"] == 4


def test_the_mirror_check_refuses_logits_that_differ():
    logits = np.array([[10.0, -2.0], [0.5, 3.0]], np.float32)
    assert eval_peers.check_mirror(logits, logits) == 0.0
    assert eval_peers.check_mirror(logits, logits + 5e-4) == pytest.approx(5e-5, rel=1e-3)
    with pytest.raises(RuntimeError, match="above 0.0001"):
        eval_peers.check_mirror(logits, logits + 2e-3)
    with pytest.raises(RuntimeError, match="above"):
        eval_peers.check_mirror(logits, np.full_like(logits, np.nan))
    with pytest.raises(RuntimeError, match="shape"):
        eval_peers.check_mirror(logits, logits[:1])


def _randomised_batch_norms(network, seed):
    """Moving statistics and affine parameters away from their initial 0 / 1, so that a mirror reading them wrong,
    or with another epsilon, gives other logits."""
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if type(layer).__name__ == "BatchNormalization":
            size = layer.gamma.shape
            layer.gamma.assign(rng.uniform(0.5, 1.5, size).astype(np.float32))
            layer.beta.assign(rng.normal(0, 0.2, size).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0, 0.3, size).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(1e-4, 2.0, size).astype(np.float32))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed (optional: the "
                    "benchmark's peers only)")
@pytest.mark.parametrize("name, shape, options", [("mlp", (8, 8, 1), {"hidden": (32, 16)}),
                                                  ("wide_resnet", (8, 8, 3), {"depth": 10, "width": 1})])
def test_the_torch_mirror_gives_the_keras_logits(name, shape, options):
    """A digits MLP (Flatten in NHWC order) and a tiny WRN (TF's asymmetric "same" padding of its stride-2 convs,
    BatchNorm with epsilon 1e-5 and non-trivial statistics, the input normalisation)."""
    import keras
    import torch

    from tfadv import models
    from tfadv.studies import torch_mirror

    keras.utils.set_random_seed(0)
    channels = shape[-1]
    network = models.build(name, shape, 10, mean=[0.3] * channels, std=[0.2] * channels, **options)
    _randomised_batch_norms(network, 1)
    x = np.random.default_rng(2).uniform(0, 1, (16, *shape)).astype(np.float32)
    expected = np.asarray(network(x, training=False))
    with torch.no_grad():
        got = torch_mirror.mirror(network)(torch_mirror.nchw(x)).numpy()
    assert eval_peers.check_mirror(expected, got, tolerance=1e-5) <= 1e-5
    assert np.array_equal(expected.argmax(1), got.argmax(1))
    assert np.abs(expected).max() > 1.0  # logits of some size: the relative check means something
