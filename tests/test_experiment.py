"""A run's choices that change its numbers: which checkpoints it keeps and where they are chosen, SWA
evaluation, teachers' checkpoints, the optimiser, the chance-level warning, the resumable history."""

import csv
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import assembly, runs, callbacks, config as config_lib, data, evaluation, experiment
from tfadv import precision as precision_lib
from tfadv.config import ConfigError, TrainConfig
from test_swa import _bn_net

QUIET = dict(log=lambda *_: None)


def _run(tmp_path_factory, name, **overrides):
    out = tmp_path_factory.mktemp(name) / "run"
    values = dict(dataset="digits", model="mlp", epochs=6, batch_size=64, lr=0.05, lr_schedule="constant",
                  eps=2.0, step_size=0.5, attack_steps=3, val_every=1, val_attack_steps=5, eval_attack_steps=5,
                  output_dir=str(out))
    values.update(overrides)
    if values.get("defense") not in ("pgd", "trades"):  # the k-step attack flags only where the method reads them
        for flag in ("step_size", "attack_steps"):
            if flag not in overrides:
                values.pop(flag)
    metrics = experiment.train(TrainConfig.from_flags(**values), **QUIET)
    with open(out / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    return out, metrics, history


@pytest.fixture(scope="module")
def natural_run(tmp_path_factory):
    return _run(tmp_path_factory, "natural", defense="natural", epochs=8)


@pytest.fixture(scope="module")
def pgd_run(tmp_path_factory):
    return _run(tmp_path_factory, "pgd", defense="pgd")


def _first_argmax(history, column):
    values = [float(row[column]) for row in history]
    return int(np.argmax(values)) + 1  # 1-based epoch; argmax takes the first maximum, as `>` does


def test_validation_is_a_held_out_share_of_the_training_split_by_default(pgd_run, digits):
    assert TrainConfig().data.val_fraction == 0.1  # paper 001's 9:1
    out, metrics, _ = pgd_run
    validation = metrics["validation"]
    assert "held-out 0.1 of the training split" in validation["source"]
    splits = data.load("digits", val_fraction=0.1)
    assert validation["num_examples"] == len(splits.val[1]) == 135
    assert "held-out" in metrics["best"]["selected_by"] and "test" not in metrics["best"]["selected_by"]
    assert "held-out" in (out / "robust_overfitting.md").read_text()


def test_without_a_validation_split_no_checkpoint_is_chosen_on_the_test_set(tmp_path_factory):
    out, metrics, history = _run(tmp_path_factory, "noval", defense="natural", epochs=2, val_fraction=0.0)
    assert "best" not in metrics and "best_clean" not in metrics
    assert not (out / "checkpoints" / "best.weights.h5").exists()
    assert not (out / "checkpoints" / "best_clean.weights.h5").exists()
    assert "no best checkpoint" in metrics["validation"]["source"]
    assert all(row["val_robust_accuracy"] not in ("", "nan") for row in history)  # the curve is still there


def test_both_checkpoints_are_kept_each_selected_by_its_own_criterion(natural_run):
    out, metrics, history = natural_run
    assert metrics["best"]["epoch"] == _first_argmax(history, "val_robust_accuracy")
    assert metrics["best_clean"]["epoch"] == _first_argmax(history, "val_clean_accuracy")
    for key, column in (("best", "val_robust_accuracy"), ("best_clean", "val_clean_accuracy")):
        row = history[metrics[key]["epoch"] - 1]
        assert metrics[key][column] == pytest.approx(float(row[column]), abs=1e-6)
    assert (out / "checkpoints" / "best_clean.weights.h5").exists()
    assert (out / "checkpoints" / "best.weights.h5").exists()


def test_robust_validation_saves_each_best_at_its_own_epoch(tmp_path):
    """Clean accuracy peaking late and robust accuracy early (a natural run on CIFAR): the two files hold the
    weights of their own epochs."""
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    scripted = iter([(0.5, 0.30), (0.6, 0.20), (0.9, 0.10), (0.8, 0.05)])  # (clean, robust) per epoch
    paths = {"robust": str(tmp_path / "best.weights.h5"), "clean": str(tmp_path / "best_clean.weights.h5")}
    validation = callbacks.RobustValidation(net, (None, None), lambda *_: next(scripted), paths, **QUIET)
    snapshots = []
    for epoch in range(4):
        net.layers[0].kernel.assign(np.full((2, 2), float(epoch), np.float32))
        snapshots.append(net.get_weights())
        validation.on_epoch_end(epoch, {})
    assert validation.best("robust") == pytest.approx({"epoch": 1, "val_clean_accuracy": 0.5,
                                                       "val_robust_accuracy": 0.30})
    assert validation.best("clean")["epoch"] == 3
    for kind, epoch in (("robust", 1), ("clean", 3)):
        net.load_weights(paths[kind])
        np.testing.assert_array_equal(net.get_weights()[0], snapshots[epoch - 1][0])


def test_teachers_are_the_best_clean_and_best_robust_checkpoints_and_are_recorded(
        natural_run, pgd_run, tmp_path_factory, digits):
    natural_dir, natural_metrics, _ = natural_run
    pgd_dir, pgd_metrics, _ = pgd_run
    _, metrics, _ = _run(tmp_path_factory, "student", defense="pgd", epochs=1,
                         kd_std_teacher=str(natural_dir), kd_adv_teacher=str(pgd_dir))
    standard, robust = metrics["teachers"]["standard"], metrics["teachers"]["robust"]
    assert standard["run"] == str(natural_dir) and standard["checkpoint"] == "checkpoints/best_clean.weights.h5"
    assert robust["run"] == str(pgd_dir) and robust["checkpoint"] == "checkpoints/best.weights.h5"
    for record, entry in ((standard, natural_metrics["best_clean"]), (robust, pgd_metrics["best"])):
        for key in ("epoch", "clean_accuracy", "robust_accuracy", "val_clean_accuracy", "val_robust_accuracy"):
            assert record[key] == entry[key], key
    assert standard["weight"] == 0.25 and robust["weight"] == 0.5
    # the loaded standard teacher computes what the best-clean file holds
    logits_fn, _ = runs.load_teacher(str(natural_dir), "kd_std_teacher", digits.spec, "best_clean", **QUIET)
    network, _ = runs.load_run_network(str(natural_dir), "best_clean")
    x = digits.test[0][:32]
    np.testing.assert_array_equal(logits_fn(x).numpy(), network(x, training=False).numpy())


def test_final_pgd_in_metrics_has_the_evaluation_name(pgd_run):
    _, metrics, _ = pgd_run
    assert metrics["final"]["robust_attack"] == evaluation.robust_attack_name(5, "linf") == "pgd5"
    assert evaluation.robust_attack_name(20, "l2") == "pgd20_l2"


def test_swa_start_follows_paper_001s_code():
    # 0-based epoch index >= first decay + 5 in paper 001's code (55 for decays at 50, 150) = 1-based epoch 56
    config = TrainConfig.from_flags(epochs=200, lr_decay_epochs=[50, 150], swa=True)
    assert config.swa_start() == 56
    assert config.replace(swa_start_epoch=10).swa_start() == 10


def test_swa_validation_and_best_checkpoint_use_the_average(tmp_path_factory, digits):
    out, metrics, history = _run(tmp_path_factory, "swa", defense="pgd", epochs=5, swa=True, swa_start_epoch=2,
                                 lr=0.1)
    assert {"val_raw_clean_accuracy", "val_raw_robust_accuracy"} <= set(history[0])
    # before averaging starts the two curves are the same weights; afterwards the SWA one is the average's
    assert float(history[0]["val_robust_accuracy"]) == float(history[0]["val_raw_robust_accuracy"])
    assert any(row["val_robust_accuracy"] != row["val_raw_robust_accuracy"] for row in history[2:])
    # the best checkpoint, evaluated again on the validation split, gives the SWA curve's number
    splits = data.load("digits", val_fraction=0.1)
    network, _ = runs.load_run_network(str(out), "best")
    measure = evaluation.pgd_accuracy_fn(0.125, 5)
    clean, robust = measure(network, *splits.val)
    best = metrics["best"]
    row = history[best["epoch"] - 1]
    assert robust == pytest.approx(best["val_robust_accuracy"], abs=1e-6)  # stored as float32
    assert robust == pytest.approx(float(row["val_robust_accuracy"]), abs=1e-6)
    assert clean == pytest.approx(best["val_clean_accuracy"], abs=1e-6)
    assert "SWA-averaged" in best["selected_by"] and metrics["final"]["weights"] == "SWA average of 4 epochs"


def test_swa_validation_checkpoints_the_average_with_recomputed_batchnorm(digits, tmp_path):
    keras.utils.set_random_seed(1)
    net = _bn_net()  # compiled with SGD(0.05)
    x, y = digits.train
    bn_data = data.eval_pipeline((x, y), 64).map(lambda images, labels: images)
    swa = callbacks.StochasticWeightAveraging(net, start_epoch=2, bn_data=bn_data)
    seen = []

    def accuracy(network, vx, vy):  # records the weights it is asked to validate
        seen.append([v.numpy().copy() for v in network.weights])
        predictions = np.argmax(network(vx, training=False).numpy(), -1)
        return float(np.mean(predictions == vy)), float(np.mean(predictions == vy))

    validation = callbacks.RobustValidation(net, digits.test, accuracy, {"robust": str(tmp_path / "best.weights.h5")},
                                            swa=swa, **QUIET)
    net.fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[swa, validation])
    # epoch 1: raw only; epochs 2 and 3: raw, then the average
    assert len(seen) == 5
    raw = [v.numpy() for v in net.weights]
    for a, b in zip(seen[-2], raw):
        np.testing.assert_array_equal(a, b)  # the raw weights are back in the network after validation
    expected = _bn_net()
    expected.set_weights(seen[-1])
    averaged_kernel = swa.tracker.average[0].numpy()
    np.testing.assert_allclose(seen[-1][0], averaged_kernel, rtol=1e-6)
    bn = net.get_layer("bn")
    moving_mean_index = [i for i, v in enumerate(net.weights) if v is bn.moving_mean][0]
    # BatchNorm statistics were recomputed for the averaged weights: the mean of the pre-BN activations
    pre_bn = keras.Model(expected.inputs, expected.get_layer("bn").input)
    batch_means = [pre_bn(x[i:i + 64]).numpy().mean(0) for i in range(0, len(x), 64)]
    np.testing.assert_allclose(seen[-1][moving_mean_index], np.mean(batch_means, 0), rtol=1e-4, atol=1e-5)


def test_chance_level_training_is_a_loud_warning(tmp_path_factory):
    # eps = the whole pixel range: PGD can draw any image, so nothing can be learned
    out, metrics, _ = _run(tmp_path_factory, "chance", defense="pgd", epochs=2, eps=16.0, step_size=8.0)
    assert any("never left chance level" in w for w in metrics["warnings"])
    assert json.loads((out / "metrics.json").read_text())["warnings"] == metrics["warnings"]


def test_no_warning_for_a_model_that_learned(pgd_run):
    assert pgd_run[1]["warnings"] == []


def test_optimizer_flag_builds_the_papers_optimiser():
    assert isinstance(experiment.build_optimizer(TrainConfig.from_flags(optimizer="adam"), 1e-4), keras.optimizers.Adam)
    sgd = experiment.build_optimizer(TrainConfig.from_flags(momentum=0.5), 0.1)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.momentum == 0.5
    with pytest.raises(ConfigError, match="--optimizer"):
        TrainConfig.from_flags(optimizer="rmsprop", output_dir="x").validate()


def test_mnist_flagfile_is_madrys_setting():
    values = {}
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "flags", "mnist.cfg")) as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("--") and "=" in line:
                name, value = line[2:].split("=", 1)
                values[name] = value
    assert values["optimizer"] == "adam" and float(values["lr"]) == 1e-4 and int(values["batch_size"]) == 50
    assert values["model"] == "mnist_cnn" and float(values["weight_decay"]) == 0


def test_history_is_truncated_to_the_checkpointed_epochs(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n0,1.0\n1,0.9\n2,0.8\n")
    experiment._truncate_history(str(path), 2)
    assert path.read_text() == "epoch,loss\n0,1.0\n1,0.9\n"
    experiment._truncate_history(str(path), 0)
    assert not path.exists()


def test_flags_file_round_trips_the_new_fields(tmp_path):
    config = TrainConfig.from_flags(optimizer="adam", weight_decay_scope="kernels", eps_warmup_epochs=2.5,
                         augmentation="none", output_dir=str(tmp_path))
    path = tmp_path / "flags.txt"
    path.write_text(config.to_flagfile())
    assert config_lib.read_flagfile(str(path)) == config



@pytest.mark.parametrize("defense", ["pgd", "fgsm_rs", "bat"])
def test_eps_warmup_grows_the_training_perturbation_linearly(defense, digits):
    # its own step flag; the k-step flags only for PGD (a flag the method does not read is refused)
    step = {"fgsm_rs": {"fgsm_rs_step_size": 1.0}, "bat": {}}.get(defense, {"step_size": 1.0, "attack_steps": 5})
    config = TrainConfig.from_flags(defense=defense, eps=2.0, eps_warmup_epochs=2.0, output_dir="unused", **step)
    keras.utils.set_random_seed(0)
    network = assembly.network(config)
    trainer = assembly.trainer(config, network, None, updates_per_epoch=4)
    assert trainer.eps_warmup_updates == 8
    trainer.compile(optimizer=keras.optimizers.SGD(0.01), jit_compile=False)
    trainer.optimizer.build(network.trainable_variables)
    x, y = tf.constant(digits.train[0][:64]), tf.constant(digits.train[1][:64].astype("int32"))
    for t in (0, 1, 3, 7, 20):
        trainer.optimizer.iterations.assign(t)
        bound = 0.125 * min(1.0, (t + 1) / 8)
        step = bound if defense == "bat" else bound / 2  # BAT steps eps (--bat_step_size=0), the others 1 of 2 levels
        assert float(trainer.attack.eps) == pytest.approx(bound)
        assert float(trainer.attack.step_size) == pytest.approx(step)
        if defense == "bat":
            x_adv = trainer.adversarial_examples(x, y, trainer.eval_logits(x))
        else:
            x_adv = trainer.adversarial_examples(x, y)
        size = float(tf.reduce_max(tf.abs(x_adv - x)))
        assert bound * 0.9 <= size <= bound + 1e-6, (t, size, bound)


@pytest.mark.parametrize("defense", ["pgd", "free", "trades", "bat", "ssat"])
def test_eps_warmup_trains_every_defense_and_is_refused_without_an_attack(defense, digits, tmp_path_factory):
    replays = {"free": {"free_replays": 2}, "ssat": {"ssat_replays": 2}}.get(defense, {})  # only its own options
    out, metrics, history = _run(tmp_path_factory, f"warmup-{defense}", defense=defense, epochs=2,
                                 eps_warmup_epochs=1.0, **replays)
    assert len(history) == 2 and np.isfinite(float(history[-1]["loss"]))
    assert "--eps_warmup_epochs=1.0" in (out / "flags.txt").read_text()
    # one epoch of 1212 // 64 = 18 minibatches, each 2 updates for the replay methods (Free-AT, SSAT m=2)
    replays = 2 if defense in ("free", "ssat") else 1
    assert metrics["eps_warmup"] == {"epochs": 1.0, "optimizer_updates": 18 * replays}
    with pytest.raises(ConfigError, match="--eps_warmup_epochs"):
        TrainConfig.from_flags(defense="natural", eps_warmup_epochs=1.0, output_dir="x").validate()


@pytest.mark.parametrize("flag, other", [("augmentation", "crop"), ("weight_decay_scope", "kernels"),
                                         ("optimizer", "adam")])
def test_each_new_run_flag_changes_the_trained_weights(flag, other, tmp_path_factory):
    """--augmentation, --weight_decay_scope and --optimizer reach the run: the same run with the other value
    trains other weights (an ignored flag would give identical ones; training is keyed, so equal flags do)."""
    weights = []
    for value in (None, other, None):
        overrides = {} if value is None else {flag: value}
        if flag == "optimizer" and value == "adam":
            overrides["lr"] = 1e-3
        out, _, _ = _run(tmp_path_factory, f"{flag}-{value}", defense="natural", epochs=1, val_every=1,
                         weight_decay=5e-3, **overrides)
        network, _ = runs.load_run_network(str(out))
        weights.append([w.numpy() for w in network.weights])
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))  # same flags: same weights
    assert any(not np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))


def test_final_numbers_are_measured_on_the_float32_network_that_is_exported(tmp_path_factory, monkeypatch):
    """A bfloat16 run reported numbers measured on its bfloat16 network while it exported the float32 copy:
    every network the final measurement sees computes in float32, and metrics.json says which precision trained
    and which measured. The numbers equal a fresh measurement of the exported SavedModel's logits."""
    seen = []
    original = evaluation.pgd_accuracy_fn

    def spying(*args, **kwargs):
        measure = original(*args, **kwargs)

        def spy(network, x, y):
            seen.append({layer.compute_dtype for layer in network.layers
                         if not isinstance(layer, keras.layers.InputLayer)})
            return measure(network, x, y)
        return spy

    monkeypatch.setattr(evaluation, "pgd_accuracy_fn", spying)
    out, metrics, _ = _run(tmp_path_factory, "bf16", defense="pgd", epochs=2, mixed_precision="bfloat16",
                           val_fraction=0.1, eval_examples=100)
    final_and_best = seen[-3:]  # final, best robust, best clean (validation measured before them)
    assert all(dtypes == {"float32"} for dtypes in final_and_best), final_and_best
    reason = metrics["precision"].pop("reason")  # ends with a warning on a CPU without bfloat16 instructions
    assert metrics["precision"] == {"training": "mixed_bfloat16", "measured": "float32", "requested": "bfloat16",
                                    "resolved": "bfloat16", "onednn": precision_lib.onednn_enabled(),
                                    "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")}
    assert reason == precision_lib.resolve("bfloat16").reason and reason.startswith("--mixed_precision=bfloat16")
    from tfadv import export
    served = export.load_logits_fn(runs.find_saved_model(str(out)))
    x, y = data.take(data.load("digits").test, 100)
    clean = float(np.mean(np.argmax(served(tf.constant(x)), -1) == y))
    assert clean == metrics["final"]["clean_accuracy"]


def test_validation_logs_only_the_best_checkpoints_it_keeps(tmp_path):
    """A Python-API validation that keeps only the best-robust checkpoint printed "best clean -1.0000 at epoch -1"
    (a sentinel); it names only what it keeps."""
    net = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    for paths in ({"robust": str(tmp_path / "r.weights.h5")}, {"clean": str(tmp_path / "c.weights.h5")}):
        lines = []
        validation = callbacks.RobustValidation(net, (None, None), lambda *_: (0.5, 0.25), paths, log=lines.append)
        validation.set_model(net)
        validation.on_epoch_end(0)
        assert "-1" not in lines[-1], lines[-1]
        assert ("best robust 0.2500 at epoch 1" in lines[-1]) == ("robust" in paths), lines[-1]
        assert ("best clean 0.5000 at epoch 1" in lines[-1]) == ("clean" in paths), lines[-1]
