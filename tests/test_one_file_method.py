"""A new defense is one module: a copy of tfadv/training/trades.py under another name and flag prefix, dropped on
the package's path, is found by the one discovery mechanism (`tfadv.training.import_method_modules`: every module
on `tfadv.training.__path__` is imported and registers its method), trains one short epoch through the command
line's parser and `experiment.train`, and passes the checks that are parametrized over the registry (called here
for it) with no other file touched: its flags are generated, its random draws have their own salt (from the
draw's name), its float64 reference loss (declared in the module) is checked update by update, and the parity
harness has a case for it."""

import csv
import dataclasses
import json
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

import test_config
import test_outer_loss
import test_training
from helpers import ROOT, parse_training_flags
from tfadv import config as config_lib, experiment, parity, runs, training
from tfadv.config import ConfigError
from tfadv.training import base, registry

NAME, PREFIX = "trades_copy", "tradescopy"


def copy_of_trades(name: str, prefix: str) -> str:
    """tfadv/training/trades.py with the method renamed `name` and its flags `--<prefix>_*`: what a developer
    changes when copying it (the registered name, the flag prefix and the flag names its checks report, the
    help text, the name of its random draw)."""
    with open(os.path.join(ROOT, "tfadv", "training", "trades.py")) as handle:
        source = handle.read()
    edits = [('"trades", TRADESTrainer, Options, flag_prefix="trades"',
              f'"{name}", TRADESTrainer, Options, flag_prefix="{prefix}"', 1),
             ('"trades_beta"', f'"{prefix}_beta"', 2),
             ('"trades: weight', f'"{prefix}: weight', 1),
             ('salt("trades_start")', f'salt("{name}_start")', 1)]
    for old, new, count in edits:
        assert source.count(old) == count, (old, source.count(old))
        source = source.replace(old, new)
    # nothing else names the original method or its flags
    assert not re.search(r'"trades(_beta|_start)?[":]', source), re.findall(r'"trades\w*', source)
    return source


@pytest.fixture
def dropped_in(tmp_path):
    """The copy, as a file in a directory added to tfadv.training's path, discovered; removed afterwards."""
    folder = tmp_path / "methods"
    folder.mkdir()
    (folder / f"{NAME}.py").write_text(copy_of_trades(NAME, PREFIX))
    training.__path__.append(str(folder))
    module = f"tfadv.training.{NAME}"
    try:
        assert NAME in training.import_method_modules()
        yield registry.get(NAME)
    finally:
        registry.unregister(NAME)
        training.__path__.remove(str(folder))
        sys.modules.pop(module, None)
        if hasattr(training, NAME):
            delattr(training, NAME)


def test_a_copy_of_trades_is_one_file_that_trains_from_the_command_line(dropped_in, tmp_path, digits):
    method = dropped_in
    assert method.trainer.__module__ == f"tfadv.training.{NAME}" and method.trainer is not training.TRADESTrainer
    assert training.DEFENSES[-1] == NAME and NAME in training.TRAINERS and NAME not in training.CLEAN_DEFENSES
    assert method.flags() == {f"{PREFIX}_beta": "beta"} and method.reference is not None
    # its own random stream, from the draw's name (TRADES keeps its number from before salts had names)
    module = sys.modules[method.trainer.__module__]
    assert module.START_SALT == base.salt(f"{NAME}_start") not in (base.SALT_ATTACK_START, base.SALT_TRADES_START,
                                                                  base.SALT_SSAT_START)
    assert base.SALT_TRADES_START == 2

    # the command line: its flag is generated (and --defense's help names it); one short epoch on digits
    assert f"{PREFIX}_beta" in config_lib.flag_names()
    output = str(tmp_path / "run")
    argv = ["--flagfile=flags/digits.cfg", f"--defense={NAME}", f"--{PREFIX}_beta=3", "--epochs=1",
            "--eval_examples=50", "--val_attack_steps=2", f"--output_dir={output}"]
    config = parse_training_flags(argv).validate()
    assert config.defense == NAME and config.options.beta == 3.0 and config.methods["trades"].beta == 6.0
    metrics = experiment.train(config, log=lambda *_: None)
    assert metrics["defense"] == NAME
    assert f"--{PREFIX}_beta=3.0" in open(runs.flags_path(output)).read()
    network, loaded = runs.load_run_network(output)
    assert loaded.defense == NAME and loaded.options.beta == 3.0
    with open(runs.history_path(output)) as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 1 and np.isfinite(float(history[0]["loss"])) and float(history[0]["loss"]) > 0
    assert 0 <= metrics["final"]["clean_accuracy"] <= 1 and network.output_shape[-1] == 10
    # TRADES' own option typed for the copy is another method's option: refused, as for any two methods
    with pytest.raises(ConfigError) as info:
        parse_training_flags([*argv[:2], "--trades_beta=3", f"--output_dir={tmp_path / 'other'}"]).validate()
    assert info.value.flag == "trades_beta"


def test_the_checks_parametrized_over_the_registry_pass_for_the_copy(dropped_in, digits):
    # tests/test_training.py
    test_training.test_every_method_is_registered_with_its_features_and_todays_flags()
    test_training.test_a_registered_method_declares_a_consistent_registration(NAME)
    test_training.test_every_trainer_takes_the_same_keywords(NAME)
    test_training.test_method_options_accept_good_values_and_give_the_attack_budget_in_levels()
    for precision in ("float32", "bfloat16"):
        test_training.test_each_defense_trains_one_epoch_with_finite_loss(NAME, precision, digits)
    # tests/test_outer_loss.py: the copy's declared float64 reference, update by update, plain and with the
    # teachers, ALS and logit squeezing
    test_outer_loss.test_every_registered_method_has_a_combination()
    test_outer_loss.test_a_method_trains_as_its_declared_reference(NAME, digits)
    # tests/test_config.py: the configurations recorded before stay as recorded; the copy's option is a new key
    with open(test_config.BEFORE) as handle:
        commands = [command for command in json.load(handle) if command.endswith("--defense=trades")]
    assert len(commands) > 5
    for command in commands:
        test_config.test_every_flagfile_gives_the_configuration_it_gave_before_the_move(command)
        assert f"{PREFIX}_beta" in parse_training_flags(command.split()).flat()
    test_config.test_every_registered_method_declares_what_it_supports()
    # tfadv/parity.py: a case for every registered method (one device here: the workers of the parity test
    # import tfadv afresh and would not see a module added in-process)
    assert parity.PARITY_CASES[NAME] == {"defense": NAME}
    result = parity.parity_run(tf.distribute.get_strategy(), cases=[NAME], steps=2, log=lambda *_: None)
    assert len(result[NAME]["losses"]) == 2 and np.all(np.isfinite(result[NAME]["losses"]))
    # docs/flags.md documents the shipped methods: the copy is not one, so the reference stays as it is
    assert not training.built_in(registry.get(NAME))
    assert all(training.built_in(registry.get(name)) for name in ("natural", "pgd", "trades", "bat", "ssat"))
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    try:
        import flags_reference
    finally:
        sys.path.pop(0)
    reference = flags_reference.render()
    assert f"{PREFIX}_beta" not in reference and NAME not in reference
    with open(flags_reference.OUTPUT) as handle:
        assert handle.read() == reference


def test_the_reference_check_is_not_vacuous(dropped_in, digits):
    """The same check fails for the copy when its declared reference drops the KL term."""
    wrong = lambda ops, options, targets, logits, distill_logits: ops.ce(targets, logits).mean()  # noqa: E731
    registry.register(dataclasses.replace(dropped_in, reference=wrong), replace=True)
    try:
        with pytest.raises(AssertionError):
            test_outer_loss.check_declared_reference(NAME, digits)
    finally:
        registry.register(dropped_in, replace=True)
