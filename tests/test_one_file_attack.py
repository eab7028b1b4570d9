"""A new attack is one module: a copy of FAB-T -- its algorithm (tfadv/attacks/fab.py) and its family module
(tfadv/evaluation/families/fab.py: the adapter and the one `register_attack(...)` call) merged into ONE file under
another family name -- dropped on the families package's path, is found by the one discovery mechanism
(`tfadv.evaluation.families.import_family_modules`: every module on `families.__path__` is imported and registers
its families), runs by its new name from evaluate.py's flags (`pipeline.main`) and `evaluation.evaluate_model`,
and passes the checks that are parametrized over the registry (called here for it), with no other file touched.
The same copy without its scoring at the budget (returning points outside the eps-ball) is reported invalid by
the runner and fails those checks."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags

import test_attack_families
import test_attack_parts
import test_attack_registry
import test_attack_xla
from helpers import ROOT
from tfadv import evaluation, export
from tfadv.evaluation import config as eval_config, families, pipeline, runner

NAME = "fab_copy"


def one_file_copy_of_fab(name: str, scored: bool = True) -> str:
    """tfadv/attacks/fab.py followed by tfadv/evaluation/families/fab.py, as a developer merges them: the family
    module's imports joined to the algorithm's (its import of the original algorithm dropped, the adapter calling
    the copy's own `fab_targeted`) and the family renamed `name`. `scored=False` leaves out the scoring at the
    budget, so that the copy returns FAB's minimum-norm points also where they lie outside the eps-ball."""
    with open(os.path.join(ROOT, "tfadv", "attacks", "fab.py")) as handle:
        algorithm = handle.read()
    with open(os.path.join(ROOT, "tfadv", "evaluation", "families", "fab.py")) as handle:
        family = handle.read()
    edits = [("from tfadv.attacks import fab\n", "", 1),
             ("fab.fab_targeted(", "fab_targeted(", 1),
             ('register_attack("fab_t", ', f'register_attack("{name}", ', 1),
             ('description="FAB-T, ', 'description="a one-file copy of FAB-T, ', 1)]
    if not scored:
        edits.append(("    return specs.at_budget(x, x_adv, norms, spec.eps)\n", "    return x_adv\n", 1))
    for old, new, count in edits:
        assert family.count(old) == count, (old, family.count(old))
        family = family.replace(old, new)
    tree = ast.parse(family)  # its docstring (it describes the original) is left out
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    body_start = max(node.end_lineno for node in imports)
    lines = family.splitlines(keepends=True)
    family_imports = "".join(ast.get_source_segment(family, node) + "\n" for node in imports)
    family_body = "".join(lines[body_start:])
    # nothing else names the original family or reaches for the original algorithm
    code = family_imports + family_body
    assert '"fab_t"' not in code and "tfadv.attacks.fab" not in code and "attacks import fab" not in code, code
    last_import = max(node.end_lineno for node in ast.parse(algorithm).body
                      if isinstance(node, (ast.Import, ast.ImportFrom)))
    algorithm_lines = algorithm.splitlines(keepends=True)
    return "".join(algorithm_lines[:last_import]) + family_imports + "".join(algorithm_lines[last_import:]) + \
        "\n\n" + family_body.lstrip("\n")


def _drop_in(folder, name, source):
    """The one file `name`.py in `folder`, on the families package's path and discovered; returns a function
    that removes it again (unregistered, off the path, forgotten by the import system)."""
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    families.__path__.append(str(folder))
    module = f"{families.__name__}.{name}"

    def remove():
        if name in evaluation.registered_attacks():
            evaluation.unregister_attack(name)
        families.__path__.remove(str(folder))
        sys.modules.pop(module, None)
        if hasattr(families, name):
            delattr(families, name)

    try:
        assert name not in evaluation.registered_attacks()
        assert name in families.import_family_modules()
        assert evaluation.attack_entry(name).run.__module__ == module
    except BaseException:
        remove()
        raise
    return remove


@pytest.fixture
def dropped_in(tmp_path):
    remove = _drop_in(tmp_path / "families", NAME, one_file_copy_of_fab(NAME))
    try:
        yield evaluation.attack_entry(NAME)
    finally:
        remove()
    assert NAME not in evaluation.registered_attacks() and f"{families.__name__}.{NAME}" not in sys.modules


@pytest.fixture(scope="module")
def setting(digits):
    return test_attack_families.make_setting(digits)


def _flag_values(*argv):
    """evaluate.py's flags (generated from EvalConfig's fields), parsed from `argv`."""
    values = flags.FlagValues()
    eval_config.define_flags(values)
    values(["evaluate.py", *argv])
    return values


def test_a_copy_of_fab_t_is_one_file_that_evaluate_py_runs_by_its_name(dropped_in, setting, tmp_path):
    entry = dropped_in
    original = evaluation.attack_entry("fab_t")
    assert entry.run is not original.run and entry.run.__module__ == f"{families.__name__}.{NAME}"
    assert list(evaluation.registered_attacks())[-1] == NAME  # discovered after the built-ins, in name order
    assert entry.metadata() == {**original.metadata(), "family": NAME}
    # the copy runs its own algorithm: its module holds a fab_targeted of its own
    module = sys.modules[entry.run.__module__]
    assert module.fab_targeted is not sys.modules["tfadv.attacks.fab"].fab_targeted

    net, fn, x, y, budget = setting
    path = export.export(net, str(tmp_path / "model"), {"dataset": "digits", "eps": 0.125, "budget": {
        "pixel_max": 16.0, "eps": {"levels": 2.0, "fraction": 0.125}}})
    # scripts/evaluate.py's body on its parsed flags
    output = tmp_path / "eval"
    pipeline.main(["evaluate.py"], _flag_values(f"--model_dir={path}", f"--attacks=fab_t5,{NAME}5,{NAME}5_l2",
                                                "--eps_l2=16", "--num_examples=40", "--noaudit", "--noprogress",
                                                f"--output_dir={output}"))
    report = json.loads((output / "report.json").read_text())
    assert list(report["attacks"]) == ["fab_t5", f"{NAME}5", f"{NAME}5_l2"]
    for name, norm in ((f"{NAME}5", "linf"), (f"{NAME}5_l2", "l2")):
        row = report["attacks"][name]
        assert (row["attack"], row["kind"], row["norm"], row["steps"], row["targeted"]) == (
            NAME, "minimum_norm", norm, 5, True)
        assert row["invalid_outputs"] == 0 and 0 < row["max_perturbation"] <= row["eps"] * (1 + 1e-5)
        assert row["robust_accuracy"] < report["clean_accuracy"]
    # a copy of FAB-T with one start (no random draw) breaks exactly the points FAB-T breaks
    for key in ("robust_accuracy", "attacked", "max_perturbation"):
        assert report["attacks"][f"{NAME}5"][key] == report["attacks"]["fab_t5"][key], key
    # the Python API, by name: the same images and verdicts per example
    saved = tmp_path / "adversarial.npz"
    direct = evaluation.evaluate_model(fn, x, y, ["fab_t5", f"{NAME}5"], budget=budget, audit=False, log=None,
                                       save_adversarial=str(saved))
    assert direct["attacks"][f"{NAME}5"]["robust_accuracy"] < direct["clean_accuracy"]
    archive = np.load(saved)
    for part in ("indices", "images", "broken", "valid"):
        np.testing.assert_array_equal(archive[f"{NAME}5/{part}"], archive[f"fab_t5/{part}"], err_msg=part)
    assert archive[f"{NAME}5/broken"].any() and archive[f"{NAME}5/valid"].all()


def test_the_checks_parametrized_over_the_registry_pass_for_the_copy(dropped_in, setting, tmp_path):
    entry = dropped_in
    # tests/test_attack_families.py: discovery order, the entry and its example, the threat model and batch
    # independence in every norm, the Evaluator's report row
    test_attack_families.test_the_discovery_registers_the_built_in_families_first_in_todays_order()
    test_attack_families.check_entry(NAME)
    for norm in entry.norms:
        test_attack_families.check_threat_model(NAME, norm, setting)
    test_attack_families.check_evaluator(NAME, setting, tmp_path / "eval")
    # tests/test_attack_registry.py: the built-in families' metadata, unchanged by a new family
    test_attack_registry.test_the_registry_carries_each_familys_metadata()
    # tests/test_attack_parts.py: the table of built-in families still names exactly them, and the copy's file
    # (on the families path) composes no step, projection, loop or start of its own
    test_attack_parts.test_the_table_names_every_built_in_family()
    assert str(tmp_path / "families" / f"{NAME}.py") in test_attack_parts.family_module_files()
    test_attack_parts.test_no_attack_composes_its_own_step_projection_or_loop()
    # tests/test_lint.py: the file passes the project's ruff settings as it would inside the package
    lint = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config",
                           os.path.join(ROOT, "pyproject.toml"), str(tmp_path / "families" / f"{NAME}.py")],
                          capture_output=True, text=True, timeout=120)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # tests/test_attack_xla.py: the copy has its case, derived from its entry, and compiles with XLA and agrees
    net, fn, x, y, _ = setting
    xla = (net, fn, x[:test_attack_xla.COUNT], y[:test_attack_xla.COUNT])
    cases = test_attack_xla._cases(fn)
    label = evaluation.example_spec(NAME, test_attack_xla.EPS).name
    assert cases[label][0] == NAME
    test_attack_xla.check_agrees(xla, label, cases[label])


def test_a_wrong_copy_is_reported_invalid_and_fails_the_checks(setting, tmp_path):
    """The copy without its scoring at the budget returns FAB's minimum-norm points beyond eps: the runner counts
    them invalid (outside the ball; the clean prediction stands) and warns, and the checks fail."""
    wrong = "fab_unscored"
    remove = _drop_in(tmp_path / "families", wrong, one_file_copy_of_fab(wrong, scored=False))
    try:
        net, fn, x, y, budget = setting
        report = evaluation.evaluate_model(fn, x, y, [f"{wrong}5", "fab_t5"], budget=budget, audit=False, log=None)
        row, honest = report["attacks"][f"{wrong}5"], report["attacks"]["fab_t5"]
        assert row["invalid_outputs"] > 0 and row["invalid_reasons"]["outside_ball"] == row["invalid_outputs"]
        assert row["max_perturbation"] > row["eps"] + runner.threat_model_tolerance("linf", row["eps"], 64)
        assert any(f"{wrong}5" in warning and "outside_ball" in warning for warning in report["warnings"])
        # the points within eps are the honest copy's: the invalid ones break nothing
        assert row["robust_accuracy"] == honest["robust_accuracy"]
        with pytest.raises(AssertionError, match="fab_unscored5"):
            test_attack_families.check_threat_model(wrong, "linf", setting)
        with pytest.raises(AssertionError):
            test_attack_families.check_evaluator(wrong, setting, tmp_path / "eval")
    finally:
        remove()
    assert wrong not in evaluation.registered_attacks()
