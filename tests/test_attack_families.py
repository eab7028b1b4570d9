"""Every registered attack family, built-in or added later as one module of `tfadv.evaluation.families`, passes the
same checks, parametrized over the registry (no table of families here): it is discovered in the built-ins'
order; its entry is consistent and its `example` (a short run it declares) parses back to itself in every norm it
supports; a short run on a small digits model, compiled with an unknown batch as the runner compiles it, returns
finite images inside the eps-ball and [0, 1], breaks something, and gives each example the same image in any
batch; and it runs through `evaluation.evaluate_model` (the Evaluator), whose report row records it by its
metadata with its max perturbation and no invalid output.

tests/test_one_file_attack.py calls the checks for a family added as one file at run time; tests/test_attack_xla.py
compiles every family's example with XLA."""

import inspect
import json

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_dense_network
from tfadv import config, evaluation
from tfadv.attacks import rng
from tfadv.evaluation import families, runner, specs

# the built-in families in their registration order (the order of every listing of the registry), as before the
# families moved out of specs.py into one module each
BUILT_IN = ("fgsm", "pgd", "cw", "dlr", "apgd_ce", "apgd_dlr", "apgd_t", "deepfool", "square", "fab_t", "cwl2")
COUNT = 24
# every family the discovery registered when the tests were collected, and each with every norm it supports
FAMILIES = list(specs.registered_attacks())
FAMILY_NORMS = [(family, norm) for family, entry in specs.registered_attacks().items() for norm in entry.norms]


def make_setting(digits):
    """(network, logits_fn, x, y, budget): a small MLP on digits, its first COUNT test images and a digits budget
    of 2, 16 and 48 pixel levels (radii 0.125 l-inf, 1.0 l2, 3.0 l1: the default l1 radius, 0.25, is too small
    for a short run to break anything)."""
    net = small_dense_network(digits, seed=3)
    x, y = digits.test[0][:COUNT], digits.test[1][:COUNT].astype(np.int32)
    budget = config.budget(digits.spec, eps=2, eps_l2=16, eps_l1=48)
    return net, (lambda images: net(images, training=False)), x, y, budget


@pytest.fixture(scope="module")
def setting(digits):
    return make_setting(digits)


def _sizes(delta, norm):
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return {"linf": np.abs(flat).max(1), "l2": np.linalg.norm(flat, axis=1), "l1": np.abs(flat).sum(1)}[norm]


# -- discovery ------------------------------------------------------------------------------------------------------

def test_the_discovery_registers_the_built_in_families_first_in_todays_order():
    registered = list(evaluation.registered_attacks())
    assert registered[:len(BUILT_IN)] == list(BUILT_IN)
    # every built-in family comes from its module of the families package, in the package's display order
    modules = [evaluation.attack_entry(family).run.__module__ for family in BUILT_IN]
    assert all(module.startswith(families.__name__ + ".") for module in modules), modules
    order = [module.rpartition(".")[2] for module in dict.fromkeys(modules)]
    assert order == list(families.BUILT_IN_MODULES)
    # a second discovery imports nothing again (a module registers its families once)
    assert families.import_family_modules()[:len(order)] == order
    assert list(evaluation.registered_attacks()) == registered
    # specs.py holds the registry and the grammar only: no family is registered from it
    assert not [f for f, e in evaluation.registered_attacks().items() if e.run.__module__ == specs.__name__]


def test_an_example_must_be_a_short_run_the_names_can_give():
    run = evaluation.attack_entry("pgd").run
    for bad in ({"steps": 0}, {"steps": 2.5}, {"steps": True}, {"norm": 2}, {"restarts": 2}, {"eot_iter": 2}):
        with pytest.raises(ValueError, match="example must set positive integers of steps"):
            evaluation.register_attack("toy", run, kind="gradient", loss="ce", default_steps=3, restarts=False,
                                       example=bad)
    with pytest.raises(ValueError, match="its example needs steps"):
        evaluation.register_attack("toy", run, kind="gradient", loss="ce")
    assert "toy" not in evaluation.registered_attacks()
    entry = evaluation.register_attack("toy", run, kind="gradient", loss="ce", default_steps=3)
    try:
        assert entry.example == {} and evaluation.example_spec("toy", {"linf": 0.1}).name == "toy"
    finally:
        evaluation.unregister_attack("toy")


# -- the checks every family passes ---------------------------------------------------------------------------------

def check_entry(family):
    """The family's entry is consistent, and its example's canonical name parses back to the same spec (fields,
    metadata, salt) in every norm it supports, also behind the transfer prefix; its other norms are refused."""
    entry = evaluation.attack_entry(family)
    eps = {"linf": 0.125, "l2": 0.5, "l1": 3.0}
    assert entry.family == family and entry.kind in specs.KINDS and entry.norms
    assert set(entry.norms) <= set(specs.NORM_NAMES) and entry.min_classes >= 2
    assert list(inspect.signature(entry.run).parameters)[:5] == ["spec", "logits_fn", "x", "y", "keys"]
    for norm in entry.norms:
        spec = evaluation.example_spec(family, eps, norm)
        assert (spec.family, spec.entry, spec.norm, spec.eps) == (family, entry, norm, eps[norm])
        assert spec.name == spec.canonical_name
        again = evaluation.parse_attack(spec.name, eps)
        assert again == spec and again.metadata() == spec.metadata() and runner._salt(again) == runner._salt(spec)
        metadata = spec.metadata()
        assert (metadata["attack"], metadata["kind"], metadata["norm"], metadata["targeted"]) == (
            family, entry.kind, norm, entry.targeted)
        assert spec.category == entry.kind and spec.targeted == entry.targeted
        transfer = evaluation.parse_attack(f"transfer_{spec.name}", eps, source=lambda images: images)
        assert transfer.name == f"transfer_{spec.name}" and transfer.category == "transfer"
    steps = evaluation.example_spec(family, eps).steps
    for norm in sorted(set(specs.NORM_NAMES) - set(entry.norms)):
        with pytest.raises(ValueError, match=f"{family} supports"):
            evaluation.parse_attack(specs.canonical_attack_name(family, steps, norm), eps)


def check_threat_model(family, norm, setting):
    """A short run (the family's example), compiled with an unknown batch dimension: finite images in [0, 1]
    inside the eps-ball of `norm`, at least one example of the model broken, and each example's image the same
    whether it runs in the whole batch or in a pair."""
    _, fn, x, y, budget = setting
    spec = evaluation.example_spec(family, budget.radii(), norm)
    keys = rng.example_keys(tf.range(len(y), dtype=tf.int64), 5, runner._salt(spec))
    compiled = tf.function(lambda a, b, k: spec.run(fn, a, b, k), input_signature=[
        tf.TensorSpec([None, *x.shape[1:]], tf.float32), tf.TensorSpec([None], tf.int32),
        tf.TensorSpec([None], tf.int64)])
    images = compiled(tf.constant(x), tf.constant(y), keys).numpy()
    assert images.shape == x.shape and images.dtype == np.float32, spec.name
    assert np.all(np.isfinite(images)), spec.name
    assert images.min() >= 0.0 and images.max() <= 1.0, (spec.name, images.min(), images.max())
    tolerance = runner.threat_model_tolerance(norm, spec.eps, int(np.prod(x.shape[1:])))
    sizes = _sizes(images - x, norm)
    assert sizes.max() <= spec.eps + tolerance, (spec.name, spec.eps, sizes.max())
    clean = np.argmax(fn(x).numpy(), -1) == y
    broken = clean & (np.argmax(fn(images).numpy(), -1) != y)
    assert broken.any(), f"{spec.name} broke none of the {clean.sum()} examples the model classifies correctly"
    rows = np.array([3, 10])
    pair = compiled(tf.constant(x[rows]), tf.constant(y[rows]), tf.gather(keys, rows)).numpy()
    np.testing.assert_allclose(pair, images[rows], atol=1e-5, err_msg=f"{spec.name}: depends on the batch")


def check_evaluator(family, setting, output_dir):
    """The family's example in each of its norms through `evaluate_model` (the pipeline and the Evaluator): each
    report row carries the entry's metadata, the attacked examples, no invalid output and its max perturbation
    (within the radius; in pixel levels too), in the returned report and in report.json."""
    net, fn, x, y, budget = setting
    entry = evaluation.attack_entry(family)
    chosen = [evaluation.example_spec(family, budget.radii(), norm).name for norm in entry.norms]
    report = evaluation.evaluate_model(net, x, y, chosen, budget=budget, audit=False, log=None, seed=1,
                                       batch_size=10, output_dir=str(output_dir))
    assert list(report["attacks"]) == chosen and "warnings" not in report
    clean = np.argmax(fn(x).numpy(), -1) == y
    written = json.loads((output_dir / "report.json").read_text())
    for name, norm in zip(chosen, entry.norms):
        row = report["attacks"][name]
        radius = budget.radius(norm)
        assert (row["attack"], row["kind"], row["norm"], row["eps"], row["targeted"]) == (
            family, entry.kind, norm, radius, entry.targeted)
        assert row["attacked"] == int(clean.sum()) and row["robust_accuracy"] <= float(clean.mean())
        assert row["invalid_outputs"] == 0 and set(row["invalid_reasons"].values()) == {0}
        tolerance = runner.threat_model_tolerance(norm, radius, int(np.prod(x.shape[1:])))
        assert 0.0 < row["max_perturbation"] <= radius + tolerance, (name, row["max_perturbation"])
        assert row["max_perturbation_levels"] == row["max_perturbation"] * budget.pixel_max
        assert written["attacks"][name]["max_perturbation"] == row["max_perturbation"]
        assert written["attacks"][name]["robust_accuracy"] == row["robust_accuracy"]
    assert report["worst_case_accuracy"] <= min(row["robust_accuracy"] for row in report["attacks"].values())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_registered_family_has_a_consistent_entry_and_its_example_round_trips(family):
    check_entry(family)


@pytest.mark.parametrize("family,norm", FAMILY_NORMS)
def test_a_registered_family_stays_in_its_threat_model_and_is_batch_independent(family, norm, setting):
    check_threat_model(family, norm, setting)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_registered_family_runs_through_the_evaluator_with_its_max_perturbation(family, setting, tmp_path):
    check_evaluator(family, setting, tmp_path / "eval")
