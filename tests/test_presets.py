"""The CPU-scale CIFAR-10 preset (flags/cifar10_cpu.cfg) keeps the papers' threat model and attack settings and
changes only the network and schedule it documents; and the 32x32x3 path it is made for (tfds loader, colour
crop + flip, a BatchNorm WideResNet in mixed bfloat16, the SavedModel) trains, evaluates and exports on tfds
mock data (the real subset is never needed by the tests)."""

import dataclasses
import json

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from helpers import parse_training_flags
from tfadv import assembly, experiment, export, runs

# what flags/cifar10_cpu.cfg says it changes with respect to flags/cifar10.cfg, and nothing else
DOCUMENTED = {"model", "wrn_depth", "wrn_width", "mixed_precision", "epochs", "lr_decay_epochs", "val_fraction",
              "val_every", "val_attack_steps", "attack_bn_mode"}


_parse = parse_training_flags


def test_cpu_preset_changes_only_the_network_and_schedule_it_documents():
    for defense in ("pgd", "trades", "bat", "natural"):
        paper = _parse(["--flagfile=flags/cifar10.cfg", f"--defense={defense}", "--output_dir=x"]).validate()
        cpu = _parse(["--flagfile=flags/cifar10_cpu.cfg", f"--defense={defense}", "--output_dir=x"]).validate()
        differ = {k for k, v in cpu.flat().items() if paper.flat()[k] != v}
        assert differ == DOCUMENTED, differ ^ DOCUMENTED
        # eps 8/255, PGD-10 step 2/255 (BAT: one step of eps); BatchNorm in inference mode for every defense
        assert cpu.attack_config() == dataclasses.replace(paper.attack_config(), bn_mode="eval")
    cpu = _parse(["--flagfile=flags/cifar10_cpu.cfg", "--defense=pgd", "--output_dir=x"]).validate()
    assert np.isclose(cpu.attack_config().eps, 8 / 255) and np.isclose(cpu.attack_config().step_size, 2 / 255)
    assert cpu.data.val_fraction == 0.1  # paper 001's 9:1 split selects the best checkpoints (400 of 4000)
    assert cpu.attack_config().steps == 10 and cpu.validation.eval_attack_steps == 20
    assert cpu.data.augmentation in ("auto", "crop_flip") and cpu.spec.augmentation == "crop_flip"
    # LR decays at half and three quarters of training (rounded down), as the 200-epoch schedule's 100 / 150
    assert list(cpu.optimization.lr_decay_epochs) == [cpu.optimization.epochs // 2, 3 * cpu.optimization.epochs // 4]
    network = assembly.network(cpu)
    assert network.count_params() == 693498  # WRN-16-2 (pre-activation, 10 classes) with its normalisation layer
    assert network.output_shape == (None, 10) and network.input_shape == (None, 32, 32, 3)


def test_cpu_preset_trains_exports_and_serves_colour_images_on_the_real_loader(tmp_path):
    """One short epoch of the preset on mock cifar10 through the ordinary tfds path: finite metrics measured on
    32x32x3 test images, a float32 SavedModel whose serving logits equal the network's."""
    out = tmp_path / "run"
    with tfds.testing.mock_data(num_examples=96):
        config = _parse(["--flagfile=flags/cifar10_cpu.cfg", "--defense=pgd", "--epochs=1", "--batch_size=32",
                         "--train_examples=64", "--attack_steps=2", "--val_attack_steps=2", "--eval_attack_steps=2",
                         "--eval_examples=16", f"--output_dir={out}"])
        metrics = experiment.train(config, log=lambda *_: None)
    assert metrics["final"]["num_examples"] == 16
    assert 0.0 <= metrics["final"]["robust_accuracy"] <= metrics["final"]["clean_accuracy"] <= 1.0
    with open(out / "metrics.json") as handle:
        assert json.load(handle)["validation"]["num_examples"] == round(0.1 * 96)  # held out of 96 mock images
    logits_fn = export.load_logits_fn(runs.find_saved_model(str(out)))
    images = tf.random.stateless_uniform([4, 32, 32, 3], [1, 2])
    network = assembly.network(config)  # float32: the exported network is the float32 copy of the trained one
    network.load_weights(runs.checkpoint_path(str(out), "final"))
    np.testing.assert_allclose(logits_fn(images), network(images, training=False), rtol=1e-4, atol=1e-4)
