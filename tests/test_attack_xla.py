"""Attacks compiled with XLA (evaluate.py --jit_compile, `evaluate_model(jit_compile=True)`,
`Evaluator(jit_compile=True)`) agree with the plain graphs.

Every family of the registry (its `example`, a short run the entry declares, so a family added as one module is
covered with no table to edit), and a few more names for other norms, restarts, EOT and the transfer prefix, runs
once as a plain `tf.function` and once with `jit_compile=True` on the same examples and per-example keys: every
adversarial
image lies in the eps-ball and [0, 1], the images agree within 1e-4 on (almost) every example, and every example
whose images agree has the same outcome. "Almost": XLA fuses and reorders float operations, so values differ by
a few ulp, and an attack that takes the sign of a gradient component near zero, or keeps the better of two
iterates of (nearly) equal loss, can turn that into one step of difference on an example (seen with the DLR loss
here); such an example may end robust in one run and broken in the other, depending on the CPU's last bits, so
the robust accuracies are equal but for those examples.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import small_dense_network
from tfadv import evaluation
from tfadv.attacks import rng
from tfadv.evaluation import api, runner, specs

EPS = {"linf": 0.125, "l2": 1.0, "l1": 4.0}
COUNT = 24
AGREE = 1e-4  # max |x_adv(XLA) - x_adv(plain)| of an example that "agrees"
MOST = 0.75  # the share of examples that must agree for every attack (all of them but for the DLR ones, here)

# besides every family's example (in its default norm), through the registry (AttackSpec.run). (Square's l2 form
# is left out: it takes 10-20 s to trace on 2 cores, twice.)
NAMES = ["pgd4_l2_r2", "pgd4_l1", "apgd_ce6_l2_eot2", "deepfool8_l2", "transfer_pgd4"]


@pytest.fixture(scope="module")
def setting(digits):
    net = small_dense_network(digits, seed=3)
    x, y = digits.test[0][:COUNT], digits.test[1][:COUNT].astype(np.int32)
    return net, (lambda images: net(images, training=False)), x, y


def _cases(fn):
    """{label: (family, norm, radius, run(x, y, keys) -> x_adv)}: every registered family's example, derived from
    its entry, then NAMES. A minimum-norm attack is scored at the budget (`specs.at_budget`), so its output is
    inside the ball too."""
    specs_by_label = {}
    for family in specs.registered_attacks():
        spec = evaluation.example_spec(family, EPS)
        specs_by_label[spec.name] = spec
    for name in NAMES:
        specs_by_label[name] = evaluation.parse_attack(name, EPS, source=fn)
    return {label: (spec.family, spec.norm, spec.eps, lambda x, y, k, spec=spec: spec.run(fn, x, y, k))
            for label, spec in specs_by_label.items()}


def _norms(delta, norm):
    flat = delta.reshape(len(delta), -1)
    return {"linf": np.abs(flat).max(1), "l2": np.linalg.norm(flat, axis=1), "l1": np.abs(flat).sum(1)}[norm]


def check_agrees(setting, label, case):
    """One case compiled with and without XLA on the same examples and keys: both outputs in [0, 1] and the
    eps-ball, (almost) every example's images agreeing, and those examples with the same outcome. Returns
    (label, robust, robust with XLA, max |difference|, share agreeing)."""
    net, fn, x, y = setting
    family, norm, radius, run = case
    keys = rng.example_keys(tf.range(COUNT, dtype=tf.int64), 5, 11)
    clean = np.argmax(fn(x).numpy(), -1) == y
    images = {}
    for jit in (False, True):
        out = tf.function(run, jit_compile=jit)(tf.constant(x), tf.constant(y), keys)
        images[jit] = out.numpy()
    survived = {jit: clean & (np.argmax(fn(a).numpy(), -1) == y) for jit, a in images.items()}
    robust = {jit: float(np.mean(s)) for jit, s in survived.items()}
    difference = np.abs(images[True] - images[False]).reshape(COUNT, -1).max(1)
    agree = difference <= AGREE
    # The same outcome on every example whose images agree (so the robust accuracies differ by the other
    # examples at most). Where XLA's rounding turned a step (the docstring), each run followed its own valid
    # attack path (both checked below): that example's outcome is fixed by the last bits of the float
    # operations, which differ from one CPU to another, not by the attack.
    np.testing.assert_array_equal(survived[True][agree], survived[False][agree], err_msg=label)
    assert np.mean(agree) >= MOST, (label, difference)
    for adversarial in images.values():
        assert adversarial.min() >= 0 and adversarial.max() <= 1, label
        assert _norms(adversarial - x, norm).max() <= radius * (1 + 1e-5) + 1e-6, label
    return label, robust[False], robust[True], float(difference.max()), float(np.mean(agree))


def test_every_attack_family_compiles_with_xla_and_agrees(setting):
    cases = _cases(setting[1])
    # a case of every registered family, derived from its entry: its example's spec leads back to it (its kind tag
    # and loss name no other family's entry)
    for family in specs.registered_attacks():
        assert cases[evaluation.example_spec(family, EPS).name][0] == family
    rows = [check_agrees(setting, label, case) for label, case in cases.items()]
    print("\n".join(f"{label:22s} robust {a:.3f} / XLA {b:.3f}; max |diff| {d:.2e}; agree {s:.0%}"
                    for label, a, b, d, s in rows))


def test_the_evaluator_and_evaluate_model_compile_with_xla(setting):
    """jit_compile reaches the runner (a report equal to the plain one, the cascade included) and XLA really
    compiles: an attack that calls Python is refused by name, not silently run without XLA."""
    net, fn, x, y = setting
    chosen = [evaluation.parse_attack("pgd4", EPS), *[dataclasses.replace(evaluation.parse_attack(n, EPS),
                                                                          group="cascade")
                                                      for n in ("apgd_ce6", "square20")]]
    plain = runner.Evaluator(fn, chosen, batch_size=10, seed=2)(x, y)
    compiled = evaluation.evaluate_model(net, x, y, chosen, budget=EPS, seed=2, batch_size=10, audit=False,
                                         log=None, jit_compile=True)
    assert compiled["jit_compile"] is True
    for name in ("pgd4", "apgd_ce6", "square20"):
        assert compiled["attacks"][name]["robust_accuracy"] == plain["attacks"][name]["robust_accuracy"]
    assert compiled["worst_case_accuracy"] == plain["worst_case_accuracy"]
    assert compiled["groups"]["cascade"]["robust_accuracy"] == plain["groups"]["cascade"]["robust_accuracy"]

    def python_noise(spec, logits_fn, images, labels, keys):
        noise = tf.numpy_function(lambda a: np.sign(a - 0.5).astype(np.float32), [images], tf.float32)
        return tf.clip_by_value(images + spec.eps * tf.reshape(noise, tf.shape(images)), 0.0, 1.0)

    evaluation.register_attack("python_noise", python_noise, kind="score_based", loss="none", default_steps=1,
                               step_count=False, restarts=False, norms=("linf",))
    try:
        spec = evaluation.parse_attack("python_noise", EPS)
        runner.Evaluator(fn, [spec], batch_size=10)(x, y)  # fine without XLA
        with pytest.raises(api.EvaluationError, match="^--jit_compile: attack python_noise does not compile with XLA"):
            evaluation.evaluate_model(net, x, y, [spec], budget=EPS, audit=False, log=None, jit_compile=True)
    finally:
        evaluation.unregister_attack("python_noise")
