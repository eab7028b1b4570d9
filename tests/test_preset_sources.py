"""The presets follow the sources docs/presets.md cites for them (the settled differences D1-D30): each test reads
the flagfile as train.py does and checks the value its source uses, or what the run does with it."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import ROOT, parse_training_flags
from tfadv import data, experiment, models, training
from tfadv.training import registry
from tfadv.config import ConfigError, TrainConfig

_parse = parse_training_flags


def _config(flagfile, defense, *more):
    return _parse([f"--flagfile=flags/{flagfile}.cfg", f"--defense={defense}", "--output_dir=x", *more]).validate()


@pytest.mark.parametrize("flagfile", ["smoothening_cifar10", "smoothening_svhn"])
def test_smoothening_presets_follow_paper_001s_code(flagfile):
    config = _config(flagfile, "pgd")
    assert config.network.model == "preact_resnet18"  # D1: VITA's ResNet18 is PreActResNet(PreActBlock, [2,2,2,2])
    assert config.attack.attack_bn_mode == "train"  # D2: model.train() before adversary.perturb
    assert config.validation.val_attack_steps == 20  # D3: model_RA_best is chosen with PGD-20
    assert config.averaging.swa_bn_data == "augmented"  # D4: bn_update(train_loader, ...) on augmented data


def test_rice_and_madry_presets_attack_in_train_mode_and_bat_trades_in_eval_mode():
    # D7: Rice's train_cifar.py and Madry's train.py attack with BatchNorm in training mode ...
    for flagfile in ("cifar10", "cifar100", "svhn"):
        for defense in ("pgd", "fgsm_rs", "free"):
            assert _config(flagfile, defense).attack_config().bn_mode == "train", (flagfile, defense)
    # ... while BAT's adv_attack (is_train False) and TRADES' trades.py (model.eval()) attack in inference mode
    for flagfile in ("bat_cifar10", "bat_cifar100", "bat_svhn"):
        assert _config(flagfile, "bat").attack_config().bn_mode == "eval"
    assert _config("trades_cifar10", "trades").attack_config().bn_mode == "eval"
    # the CPU study keeps one setting for every defense, so its rows differ in the method only
    for defense in ("pgd", "trades", "bat"):
        assert _config("cifar10_cpu", defense).attack_config().bn_mode == "eval"


def test_fgsm_rs_and_free_take_their_own_step_rule_not_the_pgd_step_of_the_preset():
    # D9: Wong et al. alpha = 1.25 eps; D10: Shafahi et al. step eps. cifar10.cfg's --step_size=2 is PGD's.
    fgsm = _config("cifar10", "fgsm_rs").attack_config()
    assert np.isclose(fgsm.step_size, 1.25 * 8 / 255) and np.isclose(fgsm.eps, 8 / 255)
    free = _config("cifar10", "free").attack_config()
    assert np.isclose(free.step_size, 8 / 255)
    assert np.isclose(_config("cifar10", "pgd").attack_config().step_size, 2 / 255)  # PGD keeps --step_size
    assert np.isclose(_config("cifar10", "fgsm_rs", "--fgsm_rs_step_size=4").attack_config().step_size, 4 / 255)
    assert np.isclose(_config("cifar10", "free", "--free_step_size=2").attack_config().step_size, 2 / 255)


@pytest.mark.parametrize("defense,own", [("bat", "bat_step_size"), ("ssat", "ssat_step_size"),
                                         ("fgsm_rs", "fgsm_rs_step_size"), ("free", "free_step_size")])
def test_a_typed_step_size_that_the_method_would_ignore_is_refused(defense, own):
    with pytest.raises(ConfigError) as info:
        _config("cifar10", defense, "--step_size=3")
    assert info.value.flag == "step_size" and f"--{own}" in str(info.value)
    # from a flagfile (cifar10.cfg sets --step_size=2 for PGD) it is recorded, not refused
    _config("cifar10", defense)


@pytest.mark.parametrize("defense", ["bat", "ssat", "fgsm_rs", "free", "natural", "label_smoothing",
                                     "logit_squeeze"])
@pytest.mark.parametrize("flag", ["--attack_steps=7", "--step_size=3"])
def test_a_typed_attack_flag_the_method_does_not_read_is_refused(defense, flag):
    """Boundary II item 7: one-step, replay and clean methods read neither --attack_steps nor --step_size (typed,
    either used to be accepted for some of them and not applied); cifar10.cfg's values (PGD's and TRADES') are
    recorded, unused."""
    example = [f"--{k}={v}" for k, v in registry.get(defense).example.items()]
    with pytest.raises(ConfigError) as info:
        _config("cifar10", defense, flag, *example)
    name = flag[2:].split("=")[0]
    assert info.value.flag == name and "not used by this run" in str(info.value) and "\n" not in str(info.value)
    assert _config("cifar10", defense, *example).attack.attack_steps == 10
    for k_step in ("pgd", "trades"):
        assert _config("cifar10", k_step, "--attack_steps=7", "--step_size=3").attack_config().steps == 7


def test_a_per_method_flagfile_is_read_for_its_method_only_and_holds_only_its_options(tmp_path, monkeypatch):
    """Architecture II item 6: flags/<preset>/<method>.cfg is read after <preset>.cfg (and after the per-method
    flagfiles of the presets it includes) when --defense is that method; it may set only that method's options."""
    monkeypatch.chdir(ROOT)
    assert _config("mnist", "trades").options.beta == 1.0 and _config("mnist", "pgd").methods["trades"].beta == 6.0
    # an including preset's own per-method flagfile wins over the included one's
    outer = tmp_path / "outer.cfg"
    outer.write_text("--flagfile=flags/digits.cfg\n--epochs=3\n")
    (tmp_path / "outer").mkdir()
    (tmp_path / "outer" / "free.cfg").write_text("--free_replays=3\n")
    config = parse_training_flags([f"--flagfile={outer}", "--defense=free", "--output_dir=x"]).validate()
    assert config.options.replays == 3 and config.optimization.epochs == 3
    assert TrainConfig.from_flagfile(str(outer), defense="free", output_dir="x").options.replays == 3
    # a shared flag, or another method's option, in a per-method flagfile is refused naming the file
    (tmp_path / "outer" / "free.cfg").write_text("--free_replays=3\n--epochs=9\n")
    with pytest.raises(ConfigError) as info:
        parse_training_flags([f"--flagfile={outer}", "--defense=free", "--output_dir=x"])
    assert info.value.flag == "flagfile" and "sets --epochs" in str(info.value) and "outer/free.cfg" in str(info.value)


def test_wong_and_shafahi_presets_carry_their_recipes():
    fgsm = _config("fgsm_rs_cifar10", "fgsm_rs")
    o = fgsm.optimization
    assert (o.epochs, o.lr_schedule, o.lr, o.lr_peak_fraction) == (15, "cyclic", 0.2, 0.5)
    assert fgsm.network.model == "preact_resnet18" and fgsm.attack.attack_bn_mode == "train"
    assert np.isclose(fgsm.attack_config().step_size, 10 / 255)
    free = _config("free_cifar10", "free")
    o = free.optimization
    assert (free.network.model, free.network.wrn_depth, free.network.wrn_width) == ("wide_resnet", 34, 10)
    assert (o.weight_decay, o.weight_decay_scope, o.epochs, list(o.lr_decay_epochs)) == (2e-4, "kernels", 26, [13, 19])
    assert free.options.replays == 8 and np.isclose(free.attack_config().step_size, 8 / 255)
    assert free.data.crop_padding == 2  # D17: Madry's / Free's cifar10_input.py pads to 36x36
    assert free.options.clip_delta is False  # D11: Shafahi's code clamps the carried perturbation to +-eps only
    assert free.attack.attack_bn_mode == "train"


def test_bat_svhn_flips_as_bats_code_does():
    assert _config("bat_svhn", "bat").data.augmentation == "crop_flip"  # D16: the same preprocess_py as CIFAR


def test_mnist_preset_trains_madrys_hundred_thousand_iterations():
    # D23: Madry's MNIST: 100 000 iterations of batch 50; on 60 000 images that is 83 epochs (99 600 iterations)
    config = _config("mnist", "pgd")
    iterations = config.optimization.epochs * (60000 // config.optimization.batch_size)
    assert config.optimization.batch_size == 50 and abs(iterations - 100000) < 1200
    assert _config("mnist", "trades").options.beta == 1.0  # D27: train_trades_mnist.py --beta 1.0


def test_crop_padding_sets_the_pad_of_the_random_crop():
    image = tf.ones([8, 8, 1])
    for padding in (2, 4):
        crops = [data.augment(image, tf.constant([i, 0], tf.int64), "crop_flip", padding=padding).numpy()
                 for i in range(200)]
        # black border rows/columns that a crop can show: at most `padding` of them on any side
        zero_rows = [int(np.sum(np.all(c[..., 0] == 0, axis=1))) for c in crops]
        assert max(zero_rows) == padding


def test_free_clip_delta_off_carries_the_perturbation_outside_the_previous_images_box(digits):
    """Shafahi et al. clamp the carried perturbation to +-eps only (the input is clipped separately); Wong et
    al. (and tfadv before) also clip it to the current batch's box. White pixels (1.0) with a gradient pushing them
    up: the box truncates delta there to 0 when clipping is on, and keeps +-eps when it is off."""
    x = np.ones((8, 8, 8, 1), np.float32)
    y = np.arange(8) % 10
    deltas = {}
    for clip in (True, False):
        keras.utils.set_random_seed(0)
        spec = digits.spec
        network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
        trainer = training.FreeTrainer(network, training.AttackConfig(eps=0.25, step_size=0.25, steps=1),
                                       training.FreeTrainer.Options(replays=2, clip_delta=clip), batch_size=8)
        trainer.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False)
        trainer.train_step((tf.constant(x), tf.constant(y)))
        deltas[clip] = trainer.delta.numpy()
    assert deltas[True].max() <= 0.0 + 1e-7  # clipped to the box of all-white images: no positive component
    assert np.isclose(deltas[False].max(), 0.25)  # carried at +eps, as Shafahi's clip_by_value(-eps, eps)
    assert np.abs(deltas[False]).max() <= 0.25 + 1e-7


def test_swa_batchnorm_data_follows_the_option(digits):
    """--swa_bn_data=augmented recomputes the averaged network's BatchNorm on one pass of the run's training
    augmentation (paper 001's bn_update(train_loader)); clean on unaugmented training images."""
    seen = {}
    for kind in ("clean", "augmented"):
        config = TrainConfig.from_flags(defense="pgd", dataset="digits", swa=True, swa_bn_data=kind,
                                        augmentation="crop", batch_size=32, output_dir="x", epochs=2)
        splits = data.Splits(digits.spec, (digits.train[0][:96], digits.train[1][:96]), digits.test, None)
        network = models.build("mlp", digits.spec.image_shape, digits.spec.num_classes)
        _, _, _, swa = experiment._validation(config, splits, network, log=lambda *_: None)
        seen[kind] = np.concatenate([batch.numpy() for batch in swa.bn_data])
    np.testing.assert_array_equal(seen["clean"], digits.train[0][:96])
    expected = data.train_pipeline(splits.train, digits.spec, 32, seed=0, epochs=1, augmentation="crop")
    expected = np.concatenate([images.numpy() for images, _ in expected])
    np.testing.assert_array_equal(seen["augmented"], expected)
    assert not np.array_equal(np.sort(seen["augmented"].ravel()), np.sort(seen["clean"].ravel()))


def test_the_flagship_command_attacks_as_each_methods_reference_code():
    # `--defense=bat --flagfile=flags/cifar10.cfg`: BAT's own code attacks in inference mode even though the
    # preset's PGD-AT (Rice, Madry) attacks in training mode; --attack_bn_mode=auto gives each its source's mode
    modes = {d: _config("cifar10", d).attack_config().bn_mode
             for d in ("pgd", "fgsm_rs", "free", "ssat", "trades", "bat")}
    assert modes == {"pgd": "train", "fgsm_rs": "train", "free": "train", "ssat": "train", "trades": "eval",
                     "bat": "eval"}
    assert _config("cifar10", "bat", "--attack_bn_mode=train").attack_config().bn_mode == "train"  # typed wins
    assert TrainConfig.from_flags(defense="pgd", output_dir="x").attack_config().bn_mode == "eval"  # default


@pytest.mark.parametrize("defense", ["free", "ssat", "natural", "label_smoothing"])
def test_a_typed_attack_bn_mode_without_a_separate_attack_is_refused(defense):
    # Free-AT and SSAT take the input gradient from the training pass itself; the clean methods have no attack
    extra = {"natural": [], "label_smoothing": ["--ls_method=sls", "--ls_alpha=0.1"]}.get(defense, [])
    with pytest.raises(ConfigError) as info:
        _config("cifar10", defense, "--attack_bn_mode=train", *extra)
    assert info.value.flag == "attack_bn_mode"
    _config("cifar10", defense, *extra)  # cifar10.cfg's --attack_bn_mode=auto is recorded, unused
    _config("smoothening_cifar10", defense, *extra)  # and so is smoothening's train
    _config("cifar10", "pgd", "--attack_bn_mode=train")  # PGD-AT applies it
