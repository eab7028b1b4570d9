import os

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


def test_validation_split_is_seeded_and_disjoint(digits):
    a = data.load("digits", val_fraction=0.1, seed=3)
    b = data.load("digits", val_fraction=0.1, seed=3)
    c = data.load("digits", val_fraction=0.1, seed=4)
    assert len(a.val[1]) == 135 and len(a.train[1]) == 1347 - 135
    np.testing.assert_array_equal(a.val[0], b.val[0])
    assert not np.array_equal(a.val[0], c.val[0])
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("digits", val_fraction=1.0)


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
