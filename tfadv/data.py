"""Datasets as `tf.data` pipelines: pixels float32 in [0, 1], NHWC.

`digits` (scikit-learn's `load_digits`, shipped inside the package) is the embedded default; `mnist`,
`fashion_mnist`, `cifar10`, `cifar100` and `svhn` come from tensorflow-datasets under `--data_dir`.

Randomness (shuffling, augmentation, Gaussian noise) is stateless and keyed on `(seed, epoch, index)`, so a
run is reproducible under `--seed` and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a dataset."""

    name: str
    image_shape: tuple
    num_classes: int
    # The value of a white pixel in the dataset's own units: eps and step sizes on the command line are in
    # these levels (eps=8 means 8/255 on 8-bit images; digits pixels run 0..16).
    pixel_max: float
    mean: tuple
    std: tuple
    augmentation: str  # "none", "crop_flip" (CIFAR), "crop" (SVHN)
    tfds_name: Optional[str] = None
    test_split: str = "test"


DATASETS = {
    "digits": DatasetSpec("digits", (8, 8, 1), 10, 16.0, (0.3065,), (0.3758,), "none"),
    "mnist": DatasetSpec("mnist", (28, 28, 1), 10, 255.0, (0.1307,), (0.3081,), "none", "mnist"),
    "fashion_mnist": DatasetSpec(
        "fashion_mnist", (28, 28, 1), 10, 255.0, (0.2860,), (0.3530,), "none", "fashion_mnist"
    ),
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), 10, 255.0, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616),
        "crop_flip", "cifar10",
    ),
    "cifar100": DatasetSpec(
        "cifar100", (32, 32, 3), 100, 255.0, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        "crop_flip", "cifar100",
    ),
    "svhn": DatasetSpec(
        "svhn", (32, 32, 3), 10, 255.0, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
        "crop", "svhn_cropped",
    ),
}

DIGITS_TEST_FRACTION = 0.25
DIGITS_SPLIT_SEED = 0


class DataUnavailableError(RuntimeError):
    """A dataset is not on disk and could not be downloaded; the message says how to prepare it."""


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@dataclasses.dataclass
class Splits:
    """In-memory arrays: x float32 [N,H,W,C] in [0,1], y int32 [N]. `val` is None without --val_fraction."""

    spec: DatasetSpec
    train: tuple
    test: tuple
    val: Optional[tuple] = None


def _load_digits_arrays():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[..., None]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=DIGITS_SPLIT_SEED, stratify=y
    )
    return (x_train, y_train), (x_test, y_test)


def _tfds_prepare_hint(spec: DatasetSpec, data_dir: Optional[str]) -> str:
    return (
        f"dataset {spec.name!r} (tensorflow-datasets name {spec.tfds_name!r}) is not prepared in "
        f"{data_dir or tfds_default_dir()!r}; with internet access pass --download, or prepare it elsewhere with "
        f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{spec.tfds_name}', "
        f"data_dir='DIR').download_and_prepare()\"`, copy DIR here and pass --data_dir=DIR"
    )


def tfds_default_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR", os.path.join(os.path.expanduser("~"), "tensorflow_datasets"))


def _load_tfds_arrays(spec: DatasetSpec, data_dir: Optional[str], download: bool):
    import tensorflow_datasets as tfds

    def load(split):
        ds = tfds.load(spec.tfds_name, split=split, data_dir=data_dir, as_supervised=True, download=download)
        images, labels = [], []
        for x, y in tfds.as_numpy(ds.batch(4096)):
            images.append(x)
            labels.append(y)
        x = np.concatenate(images).astype(np.float32) / 255.0
        return x, np.concatenate(labels).astype(np.int32).reshape(-1)

    try:
        return load("train"), load(spec.test_split)
    except DataUnavailableError:
        raise
    except Exception as error:  # tfds raises assertion, not-found and network errors alike
        raise DataUnavailableError(_tfds_prepare_hint(spec, data_dir) + f" ({type(error).__name__})") from None


# The held-out split is one fixed index set for a dataset and fraction, whatever the run's --seed: a
# teacher and its student (paper 001) trained with different seeds never see each other's validation images.
SPLIT_SEED = 0


def split_validation(train, fraction: float):
    """A fixed (SPLIT_SEED), stratified split of the training arrays into (train, validation)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction: must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return train, None
    from sklearn.model_selection import train_test_split

    x, y = train
    counts = np.bincount(y)
    counts = counts[counts > 0]
    # Stratified when every class can appear on both sides; a plain seeded split otherwise (tiny data).
    feasible = counts.min() >= 2 and round(fraction * len(y)) >= len(counts)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=fraction, random_state=SPLIT_SEED, stratify=y if feasible else None
    )
    return (x_train, y_train), (x_val, y_val)


def load(name: str, data_dir: Optional[str] = None, val_fraction: float = 0.0, download: bool = False) -> Splits:
    """Loads a dataset into memory as float32 [0,1] NHWC arrays with an optional validation split (the same
    images for every run of the dataset at this fraction: `split_validation`)."""
    spec = get_spec(name)
    if spec.tfds_name is None:
        train, test = _load_digits_arrays()
    else:
        train, test = _load_tfds_arrays(spec, data_dir, download)
    train, val = split_validation(train, val_fraction)
    return Splits(spec, train, test, val)


# ----------------------------------------------------------------------------------------------------------
# tf.data pipelines


def augment(image, seed, kind: str, padding: int = 4):
    """Per-dataset augmentation with a stateless seed: random crop from a `padding`-pixel pad (+ horizontal flip
    for CIFAR)."""
    if kind == "none":
        return image
    shape = tf.shape(image)
    pad = [[padding, padding], [padding, padding], [0, 0]]
    padded = tf.pad(image, pad, mode="REFLECT" if kind == "crop" else "CONSTANT")
    image = tf.image.stateless_random_crop(padded, shape, seed=seed)
    if kind == "crop_flip":
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return image


def add_gaussian_noise(image, sigma: float, seed):
    """Gaussian noise augmentation (paper 004): sigma as a fraction of the pixel range, then clipped."""
    noise = tf.random.stateless_normal(tf.shape(image), seed=seed + 2, stddev=sigma, dtype=image.dtype)
    return tf.clip_by_value(image + noise, 0.0, 1.0)


def train_pipeline(arrays, spec: DatasetSpec, batch_size: int, seed: int, epochs: int, initial_epoch: int = 0,
                   augmentation: Optional[str] = None, noise_sigma: float = 0.0,
                   crop_padding: int = 4) -> tf.data.Dataset:
    """An endless-per-run stream of `epochs - initial_epoch` shuffled, augmented epochs.

    Each epoch's order and augmentation depend only on (seed, epoch), so resuming at `initial_epoch`
    reproduces the batches of the uninterrupted run. Incomplete final batches are dropped (Free-AT carries a
    fixed-size perturbation across minibatches, and mirrored training splits batches evenly). Sharded over
    workers by `distributed_input_options`.
    """
    x, y = arrays
    n = len(x)
    kind = spec.augmentation if augmentation is None else augmentation
    x_const = tf.constant(x)
    y_const = tf.constant(y)

    def one_epoch(epoch):
        epoch_seed = tf.stack([tf.cast(seed, tf.int64), epoch])
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=epoch_seed)
        ds = tf.data.Dataset.from_tensor_slices(order)

        def fetch(index):
            image = tf.gather(x_const, index)
            label = tf.gather(y_const, index)
            element_seed = tf.stack([epoch * 1_000_003 + index, tf.cast(seed, tf.int64)])
            image = augment(image, element_seed, kind, crop_padding)
            if noise_sigma > 0:
                image = add_gaussian_noise(image, noise_sigma, element_seed)
            return image, label

        return ds.map(fetch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(
            batch_size, drop_remainder=True
        )

    epochs_ds = tf.data.Dataset.range(initial_epoch, epochs)
    return epochs_ds.flat_map(one_epoch).prefetch(tf.data.AUTOTUNE).with_options(distributed_input_options())


def distributed_input_options() -> tf.data.Options:
    """How `tf.distribute` shards a training pipeline over workers: auto-shard policy DATA (the arrays are in
    memory, so there are no files to shard by). Each worker runs the whole pipeline and keeps its replicas'
    shares of every global batch (the batch is split into one contiguous share per replica, in replica
    order), so the global batch stays --batch_size and each worker sees a different part of it. Without a
    multi-worker strategy the option changes nothing."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return num_examples // batch_size


def eval_pipeline(arrays, batch_size: int) -> tf.data.Dataset:
    """Unshuffled, unaugmented batches (the last one may be smaller)."""
    return tf.data.Dataset.from_tensor_slices(arrays).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def take(arrays, num_examples: int):
    """The first `num_examples` examples (all of them for -1 or None); ValueError naming `num_examples` for 0, a
    negative number other than -1 (which returned everything) or a non-integer."""
    x, y = arrays
    if num_examples is None or (num_examples == -1 and not isinstance(num_examples, bool)):
        return x, y
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples: must be a positive number of examples or -1 (all), got {num_examples!r}")
    return x[:num_examples], y[:num_examples]


def load_examples(path: str):
    """A user's own examples: an .npz with `x` (float in [0,1], NHWC) and `y` (integer class indices).

    ValueError (no flag in the message: the caller names it) for a file that is not a readable .npz, missing
    arrays, no examples, x/y length mismatch, non-finite pixels or pixels outside [0, 1], and labels that are not
    non-negative integer class indices (one-hot labels are recognised and named). Whether the labels fit the
    model's classes is checked where the model is loaded (`tfadv.evaluation.evaluate_model`)."""
    class _Refused(ValueError):
        pass

    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise _Refused(f"{path} holds a single array, not an .npz with x and y")
        with archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise _Refused(f"{path} lacks array(s) {sorted(missing)}; it needs x (NHWC in [0,1]) and y")
            x, y = archive["x"], archive["y"]
    except _Refused as error:
        raise ValueError(str(error)) from None
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as error:  # a truncated or corrupt archive: zipfile, zlib, EOF and format errors alike
        raise ValueError(f"{path} is not a readable .npz ({type(error).__name__}: {error}); save it with "
                         "numpy.savez(path, x=images, y=labels)") from None
    try:
        return check_arrays(x, y)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def check_arrays(x, y, num_classes: Optional[int] = None):
    """(x as float32, y as flat int32) for a batch of examples, else ValueError saying what is wrong (without a
    prefix: the caller names the file or the flag). The one check of a user's examples, from a file
    (`load_examples`) or from Python (`tfadv.evaluation.evaluate_model`): x NHWC real numbers, finite, in
    [0, 1]; y integer class indices (one-hot recognised and named), non-negative, below `num_classes` when
    given; at least one example and as many labels as images."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC (rank 4), got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"x must hold real numbers, got dtype {x.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(f"labels look one-hot; pass class indices (y has shape {y.shape}: save y.argmax(axis=1))")
    if len(x) == 0 or y.size == 0:
        raise ValueError(f"no examples (x has shape {x.shape}, y {y.shape})")
    y = y.reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    if not np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, got {int(y.min())}")
    if y.max() > np.iinfo(np.int32).max:
        raise ValueError(f"label {int(y.max())} is not a class index")
    if num_classes is not None and y.max() >= num_classes:
        raise ValueError(f"label {int(y.max())} is out of range for the model's {num_classes} classes "
                         f"(0..{num_classes - 1})")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"x holds {int(np.sum(~np.isfinite(x)))} NaN or infinite pixel value(s)")
    if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(f"x must lie in [0, 1], got [{x.min():.3g}, {x.max():.3g}]")
    return x, y.astype(np.int32)
