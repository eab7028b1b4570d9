import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfadv import data


def test_digits_split_is_fixed_stratified_and_in_range(digits):
    (x, y), (xt, yt) = digits.train, digits.test
    assert x.shape[1:] == (8, 8, 1) and x.dtype == np.float32
    assert len(x) + len(xt) == 1797 and len(xt) == 450
    assert x.min() == 0.0 and x.max() == 1.0
    # stratified: each class holds the same share in both splits (within one example)
    for c in range(10):
        assert abs(np.mean(y == c) - np.mean(yt == c)) < 0.01
    again = data.load("digits")
    np.testing.assert_array_equal(again.test[0], xt)


def test_validation_split_is_fixed_and_disjoint(digits):
    a = data.load("digits", val_fraction=0.1)
    b = data.load("digits", val_fraction=0.1)
    assert len(a.val[1]) == 135 and len(a.train[1]) == 1347 - 135
    np.testing.assert_array_equal(a.val[0], b.val[0])
    held_out = {row.tobytes() for row in a.val[0]}
    assert not held_out & {row.tobytes() for row in a.train[0]}
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("digits", val_fraction=1.0)


def test_runs_with_different_seeds_hold_out_the_same_images(tmp_path):
    """Issue: the split followed --seed, so a teacher (seed 0) and its student (seed 1) validated on images the
    other had trained on. The held-out split is now one fixed index set per dataset and fraction."""
    from tfadv import experiment
    from tfadv.config import TrainConfig

    held_out = []
    for seed in (0, 1):
        config = TrainConfig.from_flags(val_fraction=0.1, seed=seed, output_dir=str(tmp_path / f"run{seed}"))
        held_out.append(experiment.prepare(config, log=lambda *_: None).splits.val)
    np.testing.assert_array_equal(held_out[0][0], held_out[1][0])
    np.testing.assert_array_equal(held_out[0][1], held_out[1][1])


def _batches(ds, n):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_train_pipeline_is_deterministic_and_resumes_exactly(digits):
    spec = data.get_spec("cifar10")  # crop + flip augmentation on arbitrary images
    rng = np.random.default_rng(0)
    arrays = (rng.random((40, 32, 32, 3), dtype=np.float32), np.arange(40, dtype=np.int32) % 10)
    full = _batches(data.train_pipeline(arrays, spec, 8, seed=1, epochs=3), 15)
    again = _batches(data.train_pipeline(arrays, spec, 8, seed=1, epochs=3), 15)
    resumed = _batches(data.train_pipeline(arrays, spec, 8, seed=1, epochs=3, initial_epoch=2), 5)
    for (a, b), (c, d) in zip(full, again):
        np.testing.assert_array_equal(a, c)
    for (a, b), (c, d) in zip(full[10:], resumed):  # epoch 3 of the full run == the resumed epoch 3
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    # epochs differ in order, and augmentation changes images but keeps shape and range
    assert not np.array_equal(full[0][1], full[5][1])
    assert all(x.shape == (8, 32, 32, 3) and 0 <= x.min() and x.max() <= 1 for x, _ in full)


def test_gaussian_noise_is_clipped():
    image = tf.fill([8, 8, 1], 0.5)
    noisy = data.add_gaussian_noise(image, 0.3, tf.constant([1, 2], tf.int64))
    assert 0.0 <= float(tf.reduce_min(noisy)) and float(tf.reduce_max(noisy)) <= 1.0
    assert float(tf.math.reduce_std(noisy)) > 0.1


def test_tfds_datasets_load_through_the_real_path_with_mock_data():
    with tfds.testing.mock_data(num_examples=40):
        for name, shape in (("cifar10", (32, 32, 3)), ("mnist", (28, 28, 1)), ("svhn", (32, 32, 3))):
            splits = data.load(name, val_fraction=0.25)
            assert splits.train[0].shape[1:] == shape
            assert splits.train[0].dtype == np.float32
            assert 0.0 <= splits.train[0].min() and splits.train[0].max() <= 1.0
            assert len(splits.val[1]) == 10 and len(splits.test[1]) == 40


def test_missing_tfds_dataset_gives_one_clear_message(tmp_path):
    with pytest.raises(data.DataUnavailableError) as info:
        data.load("cifar10", data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert "cifar10" in message and str(tmp_path) in message and "download_and_prepare" in message
    assert "\n" not in message


BAD_ARRAYS = {  # name: (x, y, what the message says)
    "rank": (np.zeros((3, 8, 8), np.float32), np.array([1, 2, 3]), "NHWC"),
    "one_hot": (np.zeros((3, 8, 8, 1), np.float32), np.eye(10)[:3], "one-hot"),
    "empty": (np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, np.int64), "no examples"),
    "mismatch": (np.zeros((3, 8, 8, 1), np.float32), np.array([1, 2]), "3 examples but y has 2"),
    "float_labels": (np.zeros((3, 8, 8, 1), np.float32), np.array([1.0, 2.0, 3.0]), "integer class indices"),
    "negative": (np.zeros((3, 8, 8, 1), np.float32), np.array([1, -2, 3]), "non-negative"),
    "nan": (np.full((3, 8, 8, 1), np.nan, np.float32), np.array([1, 2, 3]), "NaN"),
    "bright": (np.full((3, 8, 8, 1), 255.0, np.float32), np.array([1, 2, 3]), "[0, 1]"),
}


@pytest.mark.parametrize("name", sorted(BAD_ARRAYS))
def test_one_check_of_a_users_examples_from_a_file_and_from_python(tmp_path, name):
    """data.check_arrays is the one check: load_examples (evaluate.py --examples) prefixes the file,
    evaluation.evaluate_model's check prefixes the flag, the reason is the same text."""
    from tfadv.evaluation import api

    x, y, says = BAD_ARRAYS[name]
    with pytest.raises(ValueError) as direct:
        data.check_arrays(x, y)
    assert says in str(direct.value)
    path = tmp_path / f"{name}.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(ValueError) as from_file:
        data.load_examples(str(path))
    assert str(from_file.value) == f"{path}: {direct.value}"
    with pytest.raises(api.EvaluationError) as from_python:
        api.check_examples(x, y, flag="--examples")
    assert str(from_python.value) == f"--examples: {direct.value}"


def test_labels_are_checked_against_the_models_classes():
    x, y = np.zeros((3, 8, 8, 1), np.float32), np.array([1, 9, 10])
    assert data.check_arrays(x, y)[1].tolist() == [1, 9, 10]  # no class count given: any index
    with pytest.raises(ValueError, match=r"label 10 is out of range for the model's 10 classes \(0\.\.9\)"):
        data.check_arrays(x, y, num_classes=10)
    x_checked, y_checked = data.check_arrays(x.astype(np.float64), y, num_classes=11)
    assert x_checked.dtype == np.float32 and y_checked.dtype == np.int32


def test_user_examples_are_checked(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, x=np.zeros((3, 8, 8, 1), np.float32), y=np.array([1, 2, 3]))
    x, y = data.load_examples(str(good))
    assert x.shape == (3, 8, 8, 1) and y.tolist() == [1, 2, 3]
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((3, 8, 8, 1), 2.0, np.float32), y=np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        data.load_examples(str(bad))
    np.savez(bad, images=np.zeros((3, 8, 8, 1)))
    with pytest.raises(ValueError, match="lacks"):
        data.load_examples(str(bad))
