import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

from tfadv import data, models  # noqa: E402

from helpers import small_dense_network  # noqa: E402,F401  (re-exported for fixtures below)



@pytest.fixture(scope="session")
def digits():
    return data.load("digits")


@pytest.fixture(scope="session")
def natural_mlp(digits):
    """An undefended MLP trained on digits for a few epochs (clean accuracy > 90 %)."""
    keras.utils.set_random_seed(0)
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    network.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(*digits.train, epochs=15, batch_size=64, verbose=0)
    return network


@pytest.fixture(scope="session")
def pgd_at_mlp(digits):
    """An MLP adversarially trained on digits with PGD-5 at eps 2/16 (l-inf); robust accuracy well above the
    natural MLP's under the same attack."""
    import tensorflow as tf

    from tfadv import training

    keras.utils.set_random_seed(0)
    spec = digits.spec
    network = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    trainer = training.PGDTrainer(network, training.AttackConfig(eps=0.125, step_size=0.05, steps=5))
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    x, y = digits.train
    dataset = tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))).shuffle(len(y), seed=0).batch(64)
    trainer.fit(dataset, epochs=20, verbose=0)
    return network


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (setup.cfg): one test process more than CPU cores, at most 4 (each holds TensorFlow, ~2 GB, and
    forks the scripts it runs from a server of its own; see tests/script_server.py). The tests leave cores idle
    while they wait for the processes they start and in single-threaded Python, so one extra process fills the
    gaps: measured 2026-11-28 on 2 cores, quiet, the whole suite one after another: -n 2 9 min 59 s, -n 3
    9 min 7 s, -n 4 9 min 50 s."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores + 1))


# The files that take longest (seconds summed over their tests, measured 2026-11-28 with --durations=0), run
# first: pytest-xdist's --dist loadfile hands files to the test processes in collection order as each one frees
# up, so a long file collected last would run alone at the end while the other process idles (longest first
# keeps the tail short). Files not listed keep their order after these.
LONGEST_FIRST = ("test_end_to_end.py", "test_apgd.py", "test_attack_batches.py", "test_first_run.py",
                 "test_experiment.py", "test_parity.py", "test_cossat.py", "test_attack_xla.py", "test_outer_loss.py",
                 "test_multi_worker.py", "test_evaluation.py", "test_training_randomness.py", "test_square.py",
                 "test_training.py", "test_xla_training.py", "test_presets.py", "test_fab.py", "test_audit.py",
                 "test_cossat_build.py", "test_cw.py", "test_float16_training.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    order = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (rank.get(os.path.basename(str(item.fspath)), len(rank)), order[id(item)]))


@pytest.fixture(autouse=True)
def float32_policy_after_each_test():
    """Keras' dtype policy is process-wide: `experiment.prepare` sets the run's (under --mixed_precision=auto,
    the default, mixed bfloat16 on a CPU with AMX-BF16) and only `experiment.train` gives the caller its own
    back; no test leaves another policy to the tests after it."""
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def training_flags():
    """A fresh absl FlagValues with train.py's flags (tests of the command line's flagfile handling)."""
    from absl import flags

    from tfadv import config as config_lib

    values = flags.FlagValues()
    config_lib.define_flags(values)
    return values
