"""The run config: flags generated from its sections and the methods' options, the same effective configuration
for every flagfile as before the move, combinations a method does not support refused, a toy method registered
in a test trained through the same path as the built-in ones."""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT, parse_training_flags
from tfadv import assembly, config as config_lib, experiment, losses, models, runs, training
from tfadv.config import ConfigError, TrainConfig
from tfadv.training import registry

BEFORE = os.path.join(ROOT, "tests", "data", "flag_configs_before.json")
BEFORE_DERIVED = os.path.join(ROOT, "tests", "data", "flag_configs_before_derived.json")


_parse = parse_training_flags


def _cases():
    with open(BEFORE) as handle:
        return json.load(handle)


@pytest.mark.parametrize("command", sorted(_cases()))
def test_every_flagfile_gives_the_configuration_it_gave_before_the_move(command):
    """Captured with the flat TrainConfig of commit e7c4165 (tests/data/flag_configs_before*.json): every flag
    value, and what the run derives from them (training attack in fractions, SWA start, updates per batch,
    smoothing, SSAT options, adversarial labels), or the same refusal naming the same flag.

    Compared on the flags the files recorded: a method added since brings its options as new flags, which are
    not a failure; any other new flag is, and so is a recorded flag that is missing or has another value.
    Another method's options are no part of the run (Architecture II item 6: a preset keeps them in its
    per-method flagfiles, read only for that --defense): they are at their defaults, whatever the capture held."""
    before = _cases()[command]
    with open(BEFORE_DERIVED) as handle:
        derived = json.load(handle)[command]
    config = _parse(command.split())
    flat = config.flat()
    others = {flag: getattr(method.options(), field) for method in registry.methods()
              if method.name != config.defense for flag, field in method.flags().items()}
    assert {name: flat[name] for name in before if name in flat and name not in others} == {
        name: value for name, value in before.items() if name not in others}
    assert {name: flat[name] for name in others} == others
    method_flags = {flag for method in registry.methods() for flag in method.flags()}
    assert set(flat) - set(before) <= method_flags, sorted(set(flat) - set(before) - method_flags)
    if "error" in derived:
        with pytest.raises(ConfigError) as info:
            config.validate()
        assert str(info.value) == derived["error"]
        return
    config.validate()
    assert dataclasses.asdict(config.attack_config()) == derived["attack"]
    assert config.swa_start() == derived["swa_start"]
    assert config.updates_per_batch() == derived["updates_per_batch"]
    assert dataclasses.asdict(config.smoothing.config()) == derived["smoothing"]
    if "ssat" in derived:
        options = dataclasses.asdict(config.options)
        assert {k: options[k] for k in derived["ssat"]} == derived["ssat"]
    if "label_adversary" in derived:
        adversary = config.labels.label_adversary(config.spec.num_classes)
        if config.defense == "bat":
            adversary = dataclasses.replace(adversary, kind=config.options.labels)
        assert dataclasses.asdict(adversary) == derived["label_adversary"]


def test_flags_txt_round_trips_every_flag(tmp_path):
    config = TrainConfig.from_flags(defense="ssat", ssat_replays=3, swa=True, kd_weights=[0.3, 0.6, 0.1],
                                    lr_decay_epochs=[3, 7], output_dir="x")
    path = tmp_path / "flags.txt"
    path.write_text(config.to_flagfile())
    again = config_lib.read_flagfile(str(path))
    assert again == config and again.flat() == config.flat()


def test_a_flag_of_another_method_is_refused_whatever_its_source(tmp_path):
    with pytest.raises(ConfigError) as info:
        _parse(["--flagfile=flags/digits.cfg", "--defense=pgd", "--ssat_replays=4", "--output_dir=x"]).validate()
    assert info.value.flag == "ssat_replays" and "--defense=ssat" in str(info.value)
    # from a flagfile too (it used to be recorded, unused): a preset that sets it for one method is refused
    preset = tmp_path / "shared.cfg"
    preset.write_text("--flagfile=flags/digits.cfg\n--free_replays=4\n")
    with pytest.raises(ConfigError) as info:
        _parse([f"--flagfile={preset}", "--defense=pgd", "--output_dir=x"]).validate()
    assert info.value.flag == "free_replays" and "--defense=free" in str(info.value) and "free.cfg" in str(info.value)
    # digits.cfg keeps Free-AT's m = 4 in flags/digits/free.cfg, read for --defense=free only
    assert _parse(["--flagfile=flags/digits.cfg", "--defense=free", "--output_dir=x"]).validate().options.replays == 4
    config = _parse(["--flagfile=flags/digits.cfg", "--defense=pgd", "--output_dir=x"]).validate()
    assert config.methods["free"].replays == 8 and config.defense == "pgd"
    # typed after the preset, the method's option still wins over its per-method flagfile
    typed = _parse(["--flagfile=flags/digits.cfg", "--defense=free", "--free_replays=2", "--output_dir=x"])
    assert typed.validate().options.replays == 2


def test_a_config_is_read_by_its_sections_not_by_flag_name():
    """Architecture II item 6: no second spelling of a field (`config.eps` for `config.attack.eps`)."""
    config = TrainConfig.from_flags(defense="free", free_replays=3, eps=4, output_dir="x")
    assert config.attack.eps == 4 and config.options.replays == 3 and config.methods["free"].replays == 3
    for name in ("eps", "free_replays", "output_dir", "dataset"):
        assert not hasattr(config, name), name


@pytest.mark.parametrize("defense,extra,flag", [
    ("bat", {"ls_method": "als", "ls_alpha": 0.1}, "ls_method"),
    ("ssat", {"ls_method": "uniform", "ls_alpha": 0.1}, "ls_method"),
])
def test_a_feature_the_method_does_not_apply_is_refused_naming_the_flag(defense, extra, flag):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_flags(defense=defense, output_dir="x", **extra).validate()
    assert info.value.flag == flag and defense in str(info.value).lower()


def test_every_registered_method_declares_what_it_supports():
    for method in registry.methods():
        assert set(method.supports) <= set(registry.FEATURES)
        assert set(method.norms) <= {"linf", "l2", "l1"}
    supported = {m.name: m.supports for m in registry.methods()}
    # the three combinations that used to be dropped silently are declared (and so applied) now
    assert {"logit_squeeze", "distillation", "adversarial_labels"} <= supported["pgd"]
    assert {"label_smoothing", "logit_squeeze", "distillation"} <= supported["trades"]
    assert "logit_squeeze" in supported["ssat"]


def test_the_budget_is_the_one_conversion_and_records_both_units():
    config = TrainConfig.from_flags(defense="bat", eps=2.0, bat_step_size=1.0, noise_sigma=4.0, output_dir="x")
    budget = config.budget()
    assert budget.eps == 2.0 / 16 and budget.fraction("step_size") == 1.0 / 16
    assert budget.fraction("noise_sigma") == 0.25
    assert budget.to_json()["eps"] == {"levels": 2.0, "fraction": 0.125}
    ssat = TrainConfig.from_flags(defense="ssat", eps=2.0, ssat_replays=4, output_dir="x").budget()
    assert ssat.level("step_size") == 0.5 and ssat.fraction("step_size") == 0.5 / 16  # App. J: eps / m
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_flags(eps=float("nan"), output_dir="x").budget()
    assert info.value.flag == "eps"


# ---------------------------------------------------------------------------------------------------------
# a toy method, registered inside the test, trains through experiment.train like the built-in ones


@dataclasses.dataclass(frozen=True)
class ToyOptions:
    scale: float = registry.option(1.0, "toy: multiplies the cross-entropy")

    def validate(self, run):
        if self.scale < 0:
            raise registry.OptionError("toy_scale", f"must not be negative, got {self.scale}")


class ToyTrainer(training.Trainer):
    """Clean training on scale * CE (scale 0: the weights never move)."""

    Options = ToyOptions

    def training_loss(self, x, labels):
        logits = self.network(x, training=True)
        return self.options.scale * tf.reduce_mean(losses.hard_cross_entropy(labels, logits)), logits


@pytest.fixture
def toy_method():
    method = registry.register(registry.Method("toy", ToyTrainer, ToyOptions, flag_prefix="toy", clean=True))
    yield method
    registry.unregister("toy")


def test_a_toy_method_registered_in_a_test_trains_through_the_same_path(tmp_path, toy_method):
    common = dict(defense="toy", epochs=1, val_examples=50, eval_examples=50, weight_decay=0.0, eps=2.0,
                  val_fraction=0.0)
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_flags(toy_scale=-1.0, output_dir=str(tmp_path / "bad"), **common).validate()
    assert info.value.flag == "toy_scale"
    frozen = TrainConfig.from_flags(toy_scale=0.0, output_dir=str(tmp_path / "frozen"), **common)
    metrics = experiment.train(frozen, log=lambda *_: None)
    keras.utils.set_random_seed(0)
    initial = assembly.network(frozen)  # the run's initial weights (experiment seeds before building)
    network, loaded = runs.load_run_network(frozen.runtime.output_dir)
    assert loaded.defense == "toy" and loaded.options.scale == 0.0
    for before, after in zip(initial.get_weights(), network.get_weights()):
        np.testing.assert_array_equal(before, after)  # a zero loss moved nothing
    assert "--toy_scale=0.0" in open(runs.flags_path(frozen.runtime.output_dir)).read()
    assert metrics["defense"] == "toy"
    learning = TrainConfig.from_flags(toy_scale=1.0, output_dir=str(tmp_path / "learning"), **common)
    trained = experiment.train(learning, log=lambda *_: None)
    assert trained["final"]["clean_accuracy"] > metrics["final"]["clean_accuracy"] + 0.2


@pytest.mark.parametrize("flagfile", sorted(f"flags/{name}" for name in os.listdir(os.path.join(ROOT, "flags"))
                                            if name.endswith(".cfg")))
def test_a_flagfile_in_python_gives_what_the_command_line_gives(flagfile):
    """TrainConfig.from_flagfile / from_flags(flagfile=...) read a flagfile with the command line's own parser:
    the same configuration as `train.py --flagfile=F --defense=bat` for every preset (from_flags refused the
    key "flagfile"; read_flagfile, meant for a run's flags.txt, skips unknown flags)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        python = TrainConfig.from_flagfile(flagfile, defense="bat", output_dir="x")
        via_from_flags = TrainConfig.from_flags(flagfile=flagfile, defense="bat", output_dir="x")
    finally:
        os.chdir(cwd)
    cli = _parse([f"--flagfile={flagfile}", "--defense=bat", "--output_dir=x"])
    assert python.flat() == cli.flat() == via_from_flags.flat()


def test_a_flagfile_with_an_unknown_flag_is_refused_in_python_as_on_the_command_line(tmp_path):
    path = tmp_path / "typo.cfg"
    path.write_text("--defense=bat\n--bat_step_sz=3\n")
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_flagfile(str(path))
    assert info.value.flag == "flagfile" and "bat_step_sz" in str(info.value)


def test_flags_the_run_would_not_apply_are_refused_when_typed():
    """Accepted and not applied (Boundary II): a typed --lr_decay_epochs entry at or after the last epoch (the
    rate never decays). From a flagfile it stays accepted: a shorter --epochs may cut a preset's schedule."""
    with pytest.raises(ConfigError) as info:
        _parse(["--flagfile=flags/digits.cfg", "--epochs=1", "--lr_decay_epochs=100", "--output_dir=x"]).validate()
    assert info.value.flag == "lr_decay_epochs" and "never decay" in str(info.value)
    _parse(["--flagfile=flags/cifar10.cfg", "--epochs=2", "--output_dir=x"]).validate()  # the preset's 100,150
    _parse(["--flagfile=flags/digits.cfg", "--epochs=5", "--lr_decay_epochs=4", "--output_dir=x"]).validate()


def test_validate_reads_no_file_and_builds_nothing_and_assembly_checks_the_world(tmp_path, monkeypatch):
    """A run config is data (issue 23 item 1): validate() checks values only. Every way it could reach the world
    is made to fail here (the file system, the environment, building a network) and validate() still passes on
    a config naming a missing data directory, a missing teacher and a network that cannot be built for the
    images; tfadv.assembly.check, on the training side, refuses each of them, naming the flag."""
    monkeypatch.setenv("TF_CONFIG", "")
    config = TrainConfig.from_flags(dataset="cifar10", data_dir=str(tmp_path / "no_data"), model="mlp",
                                    kd_adv_teacher=str(tmp_path / "no_teacher"), output_dir=str(tmp_path / "run"))
    wrn = config.replace(data_dir=None, kd_adv_teacher="", model="wide_resnet", wrn_depth=16, wrn_width=1)

    def world(*args, **kwargs):
        raise AssertionError("validate() reached the world")

    with monkeypatch.context() as m:
        for module, name in ((os.path, "isdir"), (os.path, "exists"), (os.path, "isfile"), (os, "access"),
                             (os, "stat"), (os, "listdir"), (os.environ, "get"), (models, "build")):
            m.setattr(module, name, world)
        m.setattr("builtins.open", world)
        config.validate()
        wrn.validate()
    with pytest.raises(ConfigError) as info:
        assembly.check(config)
    assert info.value.flag == "data_dir" and "no_data" in str(info.value)
    with pytest.raises(ConfigError) as info:
        assembly.check(config.replace(data_dir=None))
    assert info.value.flag == "kd_adv_teacher" and "no_teacher" in str(info.value)
    (tmp_path / "no_teacher").mkdir()
    assembly.check(config.replace(data_dir=None))
    monkeypatch.setattr(models, "build", lambda *a, **k: (_ for _ in ()).throw(ValueError("too small")))
    assembly._unbuildable.cache_clear()
    with pytest.raises(ConfigError, match="too small") as info:
        assembly.check(wrn)
    assert info.value.flag == "model"
    assembly._unbuildable.cache_clear()
