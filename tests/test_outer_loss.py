"""The composed outer loss (`Trainer.outer_loss`): targets -> cross-entropy -> distillation -> logit squeezing,
in one place for every method.

* Every combination trains as its method's formula, computed by hand (numpy, float64, the network's forward
  pass included) in the same process from the step's own intermediates: SCENARIOS (31 combinations that worked
  before the composition, two SGD steps each on a BatchNorm network) and FEATURES (the ones that were accepted
  but silently dropped a feature before it, PGD with BAT's labels and --squeeze_beta or teachers, TRADES with
  teachers and --ls_method or --squeeze_beta, SSAT with --squeeze_beta, and the ones it newly enables, teachers
  for Free-AT, BAT and SSAT: with and without the feature, on an MLP; the feature must change the loss).
  The compiled train step records, for each weight update, the images its outer loss was given (the keyed
  adversarial examples / deltas it trained on), its own targets and the weights at that point. For every update:
    - the loss train_on_batch reports equals the hand formula (its mean over a step's replays);
    - the weights that follow equal SGD with momentum and coupled weight decay on the hand formula's exact
      gradient (complex-step directional derivatives), and BatchNorm's moving statistics the batch statistics
      of the update's training-mode forward passes;
    - the adversarial inputs stay in the eps-ball of the threat norm and in [0, 1];
  and step 2 starts from the weights step 1 produced, so the whole two-step trajectory is checked.
  Nothing is compared with numbers stored from one machine: an attack's path (TRADES' start, a sign near 0) may
  round differently on another CPU, and the check holds for whichever path the step took.
* The composition keeps the float operations of the code before it (in-process, exact), and a method with its
  own targets refuses --ls_method instead of dropping it.
"""

import dataclasses
import types
from typing import Callable, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfadv import losses, models, training
from tfadv.training import bat, free, pgd, ssat, trades

S = training.SmoothingConfig
LA = training.LabelAdversary
ATTACKS = dict(pgd=training.AttackConfig(0.125, 0.03, 3), pgd_l2=training.AttackConfig(0.5, 0.2, 3, norm="l2"),
               fgsm_rs=training.AttackConfig(0.125, 1.25 * 0.125, 1), free=training.AttackConfig(0.125, 0.125, 1),
               trades=training.AttackConfig(0.125, 0.03, 3), bat=training.AttackConfig(0.125, 0.125, 1),
               bat_fixed=training.AttackConfig(0.125, 0.125, 1, random_start=False),
               ssat=training.AttackConfig(0.125, 0.125 / 2, 1),
               ssat_l2=training.AttackConfig(0.5, 0.25, 1, norm="l2"),
               natural=training.AttackConfig(0.125, 0.03, 1))
LEARNING_RATE, MOMENTUM = 0.05, 0.9
NATURAL = ("natural", "label_smoothing", "logit_squeeze")

# name: (defense, attack, options, keywords, with teachers): the combinations that worked before the composition
SCENARIOS = {
    "natural": ("natural", "natural", None, {}, False),
    "natural_uniform": ("natural", "natural", None, dict(smoothing=S("uniform", 0.2)), False),
    "label_smoothing_als": ("label_smoothing", "natural", None, dict(smoothing=S("als", 0.1)), False),
    "label_smoothing_bls": ("label_smoothing", "natural", None, dict(smoothing=S("bls", 0.1)), False),
    "logit_squeeze": ("logit_squeeze", "natural", None, dict(smoothing=S(squeeze_beta=0.5)), False),
    "logit_squeeze_mean_l2": ("logit_squeeze", "natural", None,
                              dict(smoothing=S(squeeze_beta=0.5, squeeze_reduction="mean_l2")), False),
    "natural_teachers": ("natural", "natural", None, {}, True),
    "natural_teachers_sls_squeeze": ("natural", "natural", None, dict(smoothing=S("sls", 0.1, squeeze_beta=0.1)),
                                     True),
    "pgd": ("pgd", "pgd", None, {}, False),
    "pgd_squeeze": ("pgd", "pgd", None, dict(smoothing=S(squeeze_beta=0.1)), False),
    "pgd_teachers": ("pgd", "pgd", None, {}, True),
    "pgd_sbls": ("pgd", "pgd", None, dict(smoothing=S("sbls", 0.1)), False),
    "pgd_l2": ("pgd", "pgd_l2", None, {}, False),
    "pgd_bat_labels": ("pgd", "pgd", pgd.Options(labels="bat"), dict(label_adversary=LA()), False),
    "pgd_bat_labels_top3": ("pgd", "pgd", pgd.Options(labels="bat"), dict(label_adversary=LA(top_k=3)), False),
    "fgsm_rs_uniform_squeeze": ("fgsm_rs", "fgsm_rs", None, dict(smoothing=S("uniform", 0.1, squeeze_beta=0.1)),
                                False),
    "fgsm_rs_teachers": ("fgsm_rs", "fgsm_rs", None, {}, True),
    "free": ("free", "free", free.Options(replays=2), dict(batch_size=64), False),
    "free_uniform_squeeze": ("free", "free", free.Options(replays=2),
                             dict(batch_size=64, smoothing=S("uniform", 0.1, squeeze_beta=0.1)), False),
    "trades": ("trades", "trades", None, {}, False),
    "trades_als_squeeze": ("trades", "trades", trades.Options(beta=3.0),
                           dict(smoothing=S("als", 0.1, squeeze_beta=0.1)), False),
    "trades_teachers": ("trades", "trades", None, {}, True),
    "bat": ("bat", "bat", None, {}, False),
    "bat_uniform": ("bat", "bat", bat.Options(labels="uniform"), dict(label_adversary=LA(eps_y=0.4)), False),
    "bat_ll_hard": ("bat", "bat", bat.Options(attack="ll", labels="hard"), {}, False),
    "bat_fgsm_fixed_start": ("bat", "bat_fixed", bat.Options(attack="fgsm", random_start=False), {}, False),
    "bat_squeeze": ("bat", "bat", None, dict(smoothing=S(squeeze_beta=0.1)), False),
    "bat_top3": ("bat", "bat", None, dict(label_adversary=LA(top_k=3)), False),
    "ssat": ("ssat", "ssat", ssat.Options(replays=2), {}, False),
    "ssat_ablation": ("ssat", "ssat", ssat.Options(replays=2, boundary_split=False, adaptive=False, target_beta=0.0),
                      {}, False),
    "ssat_l2": ("ssat", "ssat_l2", ssat.Options(replays=2, lambda0=0.9, lambda1=0.2, target_beta=0.3), {}, False),
}


def _bn_networks():
    """Student, robust teacher, standard teacher: Dense-BatchNorm-ReLU-Dense on digits, seeded."""
    keras.utils.set_random_seed(0)
    out = []
    for _ in range(3):
        inputs = keras.Input((8, 8, 1))
        h = keras.layers.BatchNormalization()(keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
        out.append(keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(h))))
    return out


def _mlps(digits):
    """Student, robust teacher, standard teacher: tfadv's MLP (its input normalisation first), seeded."""
    keras.utils.set_random_seed(0)
    spec = digits.spec
    return [models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std) for _ in range(3)]


# paper 001's weights and temperature: CE 0.25, robust teacher 0.5, standard teacher 0.25, T = 2
KD_WEIGHTS, KD_TEMPERATURE = (0.25, 0.5, 0.25), 2.0


def _teachers(robust, standard, weights=KD_WEIGHTS):
    return training.Distillation({"robust": (lambda v: robust(v, training=False), weights[1]),
                                  "standard": (lambda v: standard(v, training=False), weights[2])},
                                 ce_weight=weights[0], temperature=KD_TEMPERATURE)


# ---------------------------------------------------------------------------------------------------------
# the hand formulas: numpy float64 (complex128 for the complex-step derivatives; nothing below takes an abs or
# an argmax of a value that depends on the trained weights, and the max in the log-softmax only shifts the real
# part, which the result does not depend on, so the complex step is exact)

def _relu(h):
    return np.where(h.real > 0, h, 0)


def _log_softmax(z):
    z = z - z.real.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _softmax(z):
    return np.exp(_log_softmax(z))


def _ce(soft, z):
    """Per-example cross-entropy of logits z against soft targets."""
    return -(soft * _log_softmax(z)).sum(-1)


def _kd(teacher, z, temperature=KD_TEMPERATURE):
    """Paper 001: T^2 times the soft CE of the student's tempered softmax against the teacher's."""
    return temperature ** 2 * _ce(_softmax(teacher / temperature), z / temperature)


def _kl(clean, adv):
    """TRADES: KL(p(clean) || p(adv)) per example."""
    return (_softmax(clean) * (_log_softmax(clean) - _log_softmax(adv))).sum(-1)


def _squeeze(z, beta, reduction):
    """Paper 004 Eq. 5: beta ||Z||_F of the minibatch's logits, over the batch size as the CE is a mean here;
    "mean_l2": beta times the mean per-example L2 norm."""
    if reduction == "frobenius":
        return beta * np.sqrt((z ** 2).sum()) / len(z)
    return beta * np.sqrt((z ** 2).sum(-1)).mean()


def _one_hot_of(indices, classes=10):
    return np.eye(classes)[indices]


def _smoothed(smoothing, y, z):
    """The outer loss's targets from one-hot y and the (real) logits z the CE is on: papers 003 / 004."""
    a, classes = smoothing.alpha, y.shape[-1]
    wrong = 1.0 - y
    if smoothing.method == "none":
        return y
    if smoothing.method == "uniform":  # papers 000 / 004: y - alpha (y - 1/K)
        return y - a * (y - 1.0 / classes)
    if smoothing.method == "sls":  # paper 003 Eq. 5
        other = wrong / (classes - 1)
    elif smoothing.method == "als":  # Eq. 4: the arg-min logit over all classes
        other = _one_hot_of(z.argmin(-1), classes)
    elif smoothing.method == "bls":  # Eq. 6: Boltzmann over the wrong classes at temperature T
        energies = np.where(y > 0, -np.inf, -z / smoothing.temperature)
        other = np.exp(energies - energies.max(-1, keepdims=True))
        other /= other.sum(-1, keepdims=True)
    else:  # sbls, Eq. 7: the highest wrong logit
        other = _one_hot_of(np.where(y > 0, -np.inf, z).argmax(-1), classes)
    return (1 - a) * y + a * other


def _adversarial_labels(adversary, y, clean_logits):
    """Paper 002's labels from the clean logits: Eq. 13 v = -log p; Eq. 14 spread with the budget of Eq. 18;
    with top_k, Eq. 26 over the k wrong classes of largest v with the budget of Eq. 28 (App. B's LA9); uniform:
    Eq. 15; hard: one-hot. (The code clips p at 1e-12 before the log; no probability here is that small.)"""
    if adversary.kind == "hard":
        return y
    n = y.shape[-1]
    wrong = y == 0
    if adversary.kind == "uniform":
        return (1 - adversary.eps_y) * y + adversary.eps_y / (n - 1) * wrong
    v = -_log_softmax(clean_logits)
    labels = np.zeros_like(y)
    for i in range(len(y)):
        vw = np.where(wrong[i], v[i], np.nan)
        if adversary.top_k:
            chosen = np.argsort(np.where(wrong[i], v[i], -np.inf))[::-1][:adversary.top_k]
            total = v[i, chosen].sum()
            eps_y = 1.0 / (1.0 + adversary.beta * v[i, chosen].max() / total)
            labels[i, chosen] = eps_y * v[i, chosen] / total
        else:
            v_mc, v_ll, mean = np.nanmin(vw), np.nanmax(vw), np.nansum(vw) / (n - 1)
            eps_y = 1.0 / (1.0 + adversary.beta / (n - 1) * (v_ll - v_mc + adversary.gamma)
                           / (mean - v_mc + adversary.gamma))
            labels[i] = np.where(wrong[i], eps_y / (n - 1) * (v[i] - v_mc + adversary.gamma)
                                 / (mean - v_mc + adversary.gamma), 0.0)
        labels[i] += (1 - eps_y) * y[i]
    return labels


def _perturbation_sizes(delta, norm):
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return np.abs(flat).max(-1) if norm == "linf" else np.sqrt((flat ** 2).sum(-1))


class _Forward:
    """A network's forward pass by hand, from its layers and values aligned with `network.weights`: Keras'
    Normalization ((x - mean) / sqrt(variance)), Flatten, Dense (linear or ReLU), BatchNormalization (batch
    statistics, biased variance, in training mode; moving ones in inference mode), ReLU, a linear Activation."""

    def __init__(self, network):
        index = {id(v): i for i, v in enumerate(network.weights)}
        self.trainable = [index[id(v)] for v in network.trainable_weights]
        self.layers = []
        for layer in network.layers:
            kind = type(layer).__name__
            if kind == "InputLayer":
                continue
            if kind == "Normalization":
                arguments = (np.asarray(layer.mean, np.float64), np.sqrt(np.asarray(layer.variance, np.float64)))
            elif kind == "Dense":
                arguments = (index[id(layer.kernel)], index[id(layer.bias)], layer.activation.__name__)
                assert arguments[2] in ("linear", "relu"), arguments
            elif kind == "BatchNormalization":
                arguments = tuple(index[id(v)] for v in (layer.gamma, layer.beta, layer.moving_mean,
                                                         layer.moving_variance)) + (layer.epsilon, layer.momentum)
            elif kind == "Activation":
                assert layer.activation.__name__ == "linear"
                continue
            else:
                assert kind == "Flatten" or (kind == "ReLU" and layer.max_value is None and not layer.negative_slope
                                             and not layer.threshold), kind
                arguments = None
            self.layers.append((kind, arguments))

    def __call__(self, values, images, training):
        """(logits, [(batch mean, batch variance) of each BatchNormalization layer in training mode])."""
        h = np.asarray(images, np.float64)
        statistics = []
        for kind, arguments in self.layers:
            if kind == "Normalization":
                h = (h - arguments[0]) / arguments[1]
            elif kind == "Flatten":
                h = h.reshape(len(h), -1)
            elif kind == "Dense":
                h = h @ values[arguments[0]] + values[arguments[1]]
                h = _relu(h) if arguments[2] == "relu" else h
            elif kind == "BatchNormalization":
                gamma, beta, moving_mean, moving_variance, epsilon, _ = arguments
                if training:
                    mean = h.mean(0)
                    variance = ((h - mean) ** 2).mean(0)
                    statistics.append((mean, variance))
                else:
                    mean, variance = values[moving_mean], values[moving_variance]
                h = (h - mean) / np.sqrt(variance + epsilon) * values[gamma] + values[beta]
            else:
                h = _relu(h)
        return h, statistics

    def batch_norm_layers(self):
        return [arguments for kind, arguments in self.layers if kind == "BatchNormalization"]


def _record_updates(trainer):
    """Makes the trainer record, inside its compiled train step, what each weight update's outer loss is given:
    the images its student logits came from (`inputs`; TRADES: the clean ones, and its adversarial ones as
    `distill_inputs`), the method's own targets, the optimizer's iteration and the network's weights there
    (read before the update, after the update's forward passes)."""
    records = []
    outer_loss = trainer.outer_loss
    weights = trainer.network.weights

    def recording(labels, logits, inputs=None, targets=None, per_example_ce=None, distill_on=None, **more):
        named = {"iteration": trainer.optimizer.iterations.value, "inputs": inputs}
        if distill_on is not None:
            named["distill_inputs"] = distill_on[0]
        if targets is not None:
            named["targets"] = targets
        named.update((f"weight{i}", v.value) for i, v in enumerate(weights))
        keys = list(named)

        def keep(*values):
            records.append(dict(zip(keys, (np.array(v) for v in values))))
            return 0

        done = tf.py_function(keep, [named[key] for key in keys], tf.int32)
        with tf.control_dependencies([done]):
            return outer_loss(labels, logits, inputs, targets, per_example_ce, distill_on, **more)

    trainer.outer_loss = recording
    return records


@dataclasses.dataclass
class _Run:
    defense: str
    trainer: training.Trainer
    student: _Forward
    teachers: list  # [(weight, _Forward, values)]
    batches: list  # [(x, labels)] per step
    snapshots: list  # the network's weights before each step, and after the last
    records: list  # one per weight update, in order
    reported: list  # train_on_batch's loss per step
    # the method's declared float64 loss (`registry.Method.reference`), or None: the hand formulas below
    reference: Optional[Callable] = None

    @property
    def per_step(self):
        return len(self.records) // len(self.batches)


def _run(networks, defense, attack, options, keywords, teachers, digits, steps=2, reference=None):
    """Two SGD steps (minibatches of 64) of the combination, recorded. `attack`: a name in ATTACKS or an
    AttackConfig; `reference`: check against the method's declared reference instead of the hand formulas."""
    student, robust, standard = networks
    keywords = dict(keywords)
    if teachers:
        keywords["distillation"] = _teachers(robust, standard)
    method = training.registry.get(defense)
    attack = ATTACKS[attack] if isinstance(attack, str) else attack
    trainer = method.trainer(student, attack, options, **keywords)
    trainer.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM), jit_compile=False)
    records = _record_updates(trainer)
    x, y = digits.train[0][:64 * steps], digits.train[1][:64 * steps].astype("int32")
    batches = [(x[i * 64:(i + 1) * 64], y[i * 64:(i + 1) * 64]) for i in range(steps)]
    snapshots, reported = [], []
    for images, labels in batches:
        snapshots.append([w.numpy() for w in student.weights])
        reported.append(float(trainer.train_on_batch(images, labels, return_dict=True)["loss"]))
    snapshots.append([w.numpy() for w in student.weights])
    records.sort(key=lambda record: int(record["iteration"]))
    assert [int(r["iteration"]) for r in records] == list(range(len(records)))
    assert len(records) == steps * method.updates_per_batch(trainer.options)
    if reference is None:
        assert len(records) == steps * getattr(trainer.options, "replays", 1)
    teacher_forwards = [(weight, _Forward(net), [w.numpy().astype(np.float64) for w in net.weights])
                        for weight, net in ((KD_WEIGHTS[1], robust), (KD_WEIGHTS[2], standard))] if teachers else []
    return _Run(defense, trainer, _Forward(student), teacher_forwards, batches, snapshots, records, reported,
                reference)


def _values(record, count):
    return [record[f"weight{i}"].astype(np.float64) for i in range(count)]


def _hand_update(run, t):
    """Update t's loss by hand, as a function of the trained weights (the targets, the teachers' logits and the
    adversarial inputs are constants of it, as under the code's stop_gradient), and the images its training-mode
    forward passes saw, in order."""
    trainer, record, student = run.trainer, run.records[t], run.student
    step = t // run.per_step
    x, labels = run.batches[step]
    y = _one_hot_of(labels)
    values = _values(record, len(run.snapshots[0]))
    smoothing = trainer.smoothing

    def logits(trained, images):
        current = list(values)
        for i, w in zip(student.trainable, trained):
            current[i] = w
        return student(current, images, training=True)[0]

    trained = [values[i] for i in student.trainable]
    inputs = record["inputs"]
    if run.reference is not None:
        return _declared_update(run, record, y, logits, trained, inputs)
    if run.defense == "trades":
        np.testing.assert_array_equal(inputs, x)  # its outer loss is on the clean logits
        distill_inputs = record["distill_inputs"]
        trained_on = [x, distill_inputs]  # two forward passes, clean then adversarial, as the code does
    else:
        distill_inputs = inputs
        trained_on = [inputs]
    z = logits(trained, inputs)  # the logits the CE is on, at the weights of the update
    if run.defense == "bat" or (run.defense == "pgd" and trainer.options.labels == "bat"):
        # from the clean logits, BatchNorm in inference mode, at the start of the step
        clean = student([w.astype(np.float64) for w in run.snapshots[step]], x, training=False)[0]
        adversary = trainer.labels if run.defense == "bat" else trainer.label_adversary
        targets = _adversarial_labels(adversary, y, clean)
        per_example = lambda zz: _ce(targets, zz)  # noqa: E731
    elif run.defense == "ssat":
        options, attack = trainer.options, trainer.attack
        # Eq. 7: lambda(delta), delta = the step's x + delta minus x (exact but for float32 rounding of x + delta)
        ratio = np.minimum(_perturbation_sizes(inputs - x, attack.norm) / attack.eps, 1.0)
        lam = options.lambda0 + (options.lambda1 - options.lambda0) * ratio if options.adaptive else \
            np.full(len(x), options.lambda1)
        smooth = y - lam[:, None] * (y - 1.0 / y.shape[-1])
        # Eq. 6: hard labels for perturbed points already misclassified (B_O). Where the true logit and the
        # highest wrong one are within float32 rounding of a tie, the step's own decision is taken: either side
        # of a tie is right, and the float64 logits cannot tell which one float32 saw.
        best_wrong = np.where(y > 0, -np.inf, z).argmax(-1)
        margin = z[np.arange(len(z)), labels] - z[np.arange(len(z)), best_wrong]
        outside = np.where(np.abs(margin) < 1e-4, (record["targets"] == y).all(-1), margin < 0)
        targets = np.where((outside & options.boundary_split)[:, None], y, smooth)
        wrong = _one_hot_of(best_wrong)
        beta = options.target_beta
        per_example = lambda zz: (1 + beta) * _ce(targets, zz) - beta * _ce(wrong, zz)  # noqa: E731  Eq. 21
    else:
        targets = _smoothed(smoothing, y, z)
        per_example = lambda zz: _ce(targets, zz)  # noqa: E731
    if "targets" in record:  # the method's own targets: the code's equal the hand ones (targets are at most 1,
        # from a few dozen float32 operations of 2^-24 relative rounding each: 2e-6 is about 30 of them)
        np.testing.assert_allclose(record["targets"], targets, rtol=0, atol=2e-6)
    teacher_logits = [(weight, forward(teacher_values, distill_inputs, training=False)[0])
                      for weight, forward, teacher_values in run.teachers]

    def loss(trained):
        z = logits(trained, inputs)
        total = per_example(z).mean()
        distill_logits = logits(trained, distill_inputs) if run.defense == "trades" else z
        if run.defense == "trades":  # the method's loss L = CE + beta * KL (paper 001 Eq. 1 weights L as a whole)
            total = total + trainer.options.beta * _kl(z, distill_logits).mean()
        return _with_teachers_and_squeeze(total, z, distill_logits, teacher_logits, smoothing)

    return loss, trained, trained_on


def _with_teachers_and_squeeze(total, z, distill_logits, teacher_logits, smoothing):
    """Paper 001 Eq. 1 around a method's loss L: (1 - sum of teacher weights) L + the teachers' KD terms on the
    distill logits, then logit squeezing of `z` added after the weighting."""
    if teacher_logits:
        total = KD_WEIGHTS[0] * total + sum(weight * _kd(teacher, distill_logits).mean()
                                            for weight, teacher in teacher_logits)
    if smoothing.squeeze_beta:
        total = total + _squeeze(z, smoothing.squeeze_beta, smoothing.squeeze_reduction)
    return total


# the float64 per-example functions a method's declared reference is written with (`registry.Method.reference`)
REFERENCE_OPS = types.SimpleNamespace(ce=_ce, kl=_kl, log_softmax=_log_softmax)


def _declared_update(run, record, y, logits, trained, inputs):
    """_hand_update for a method checked against its declared reference L(ops, options, targets, logits,
    distill_logits): the outer loss's targets (one-hot or --ls_method's, from the logits of `inputs`), L, the
    teachers on the `distill_on` pair, logit squeezing of the logits of `inputs`; the training-mode forward
    passes are `inputs`' then the distill_on images' when the method passes those apart (as TRADES)."""
    trainer, smoothing = run.trainer, run.trainer.smoothing
    assert "targets" not in record, (f"{run.defense} trains on its own targets: the declared reference does not "
                                     "give them; add a hand-written scenario (SCENARIOS) for it")
    separate = "distill_inputs" in record
    distill_inputs = record["distill_inputs"] if separate else inputs
    trained_on = [inputs, distill_inputs] if separate else [inputs]
    targets = _smoothed(smoothing, y, logits(trained, inputs).real)
    teacher_logits = [(weight, forward(teacher_values, distill_inputs, training=False)[0])
                      for weight, forward, teacher_values in run.teachers]

    def loss(weights):
        z = logits(weights, inputs)
        distill_logits = logits(weights, distill_inputs) if separate else z
        total = run.reference(REFERENCE_OPS, trainer.options, targets, z, distill_logits)
        return _with_teachers_and_squeeze(total, z, distill_logits, teacher_logits, smoothing)

    return loss, trained, trained_on


def _check_threat_model(run, t):
    """The images of update t are x itself (clean methods, TRADES' CE), or within eps of x in the threat norm
    and in [0, 1]; an attack moved them (but Free-AT's first replay, from the zero delta)."""
    record, step = run.records[t], t // run.per_step
    x = run.batches[step][0]
    declared = run.reference is not None
    if (training.registry.get(run.defense).clean if declared else run.defense in NATURAL):
        np.testing.assert_array_equal(record["inputs"], x)
        return
    separate = "distill_inputs" in record if declared else run.defense == "trades"
    adversarial = record["distill_inputs" if separate else "inputs"]
    attack = run.trainer.attack
    sizes = _perturbation_sizes(adversarial - x, attack.norm)
    # float32 rounding of x + delta: half an ulp of 1 per coordinate
    slack = 2.0 ** -24 * (1 if attack.norm == "linf" else np.sqrt(x[0].size))
    assert sizes.max() <= attack.eps * (1 + 1e-6) + slack, (sizes.max(), attack.eps)
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    if not (run.defense == "free" and t == 0):
        assert sizes.max() > 0.1 * attack.eps


def _check_run(run):
    """Every update of the run against its hand formula; returns the hand loss of each step."""
    count = len(run.snapshots[0])
    bn_layers = run.student.batch_norm_layers()
    hand_losses = []
    previous = [w.astype(np.float64) for w in run.snapshots[0]]  # the weights before the update before
    for t in range(len(run.records)):
        _check_threat_model(run, t)
        loss, trained, trained_on = _hand_update(run, t)
        hand_losses.append(float(loss(trained).real))
        values = _values(run.records[t], count)
        # BatchNorm's moving statistics: momentum * moving + (1 - momentum) * batch statistic, for each of the
        # update's training-mode forward passes in turn (at the update's weights)
        expected = [(previous[mean], previous[var]) for _, _, mean, var, _, _ in bn_layers]
        for images in trained_on:
            statistics = run.student(values, images, training=True)[1]
            expected = [(m * momentum + batch_mean * (1 - momentum), v * momentum + batch_var * (1 - momentum))
                        for (m, v), (batch_mean, batch_var), (*_, momentum) in zip(expected, statistics, bn_layers)]
        for (mean, var), (_, _, mean_index, var_index, _, _) in zip(expected, bn_layers):
            # float32 batch statistics, sums over 64 examples: at most 64 roundings of 2^-24 relative to the
            # largest statistic
            for got, want in ((values[mean_index], mean), (values[var_index], var)):
                np.testing.assert_allclose(got, want, rtol=0, atol=64 * 2.0 ** -24 * np.abs(want).max())
        # the update: w' = w + m', m' = momentum * m - lr * (g + weight_decay * w), m the previous update (0 at
        # first), g the gradient of the hand loss
        following = run.records[t + 1] if t + 1 < len(run.records) else None
        after = [w.astype(np.float64) for w in run.snapshots[-1]] if following is None else _values(following, count)
        _check_update(run, t, loss, trained, [previous[i] for i in run.student.trainable],
                      [after[i] for i in run.student.trainable])
        previous = values
    untrained = [i for i in range(count) if i not in run.student.trainable]
    for i in untrained:  # nothing after the last update's forward passes changes the moving statistics
        np.testing.assert_array_equal(run.snapshots[-1][i], run.records[-1][f"weight{i}"])
    return hand_losses


def _check_update(run, t, loss, trained, previous, after):
    """Update t (weights `trained` -> `after`, `previous` the ones before `trained`) is Keras' SGD with momentum,
    m' = momentum * m - lr * (g + weight_decay * w), w' = w + m' (m = w - previous, 0 at the first update), with
    g the gradient of the hand loss: for each variable, the gradient the update applied, projected on a random
    direction and on its own, equals the hand loss's directional derivative (complex step, exact in float64)."""
    lr, momentum, decay = np.float32(LEARNING_RATE), np.float32(MOMENTUM), run.trainer.weight_decay
    velocity = [w - p for w, p in zip(trained, previous)] if t else [np.zeros_like(w) for w in trained]
    applied = [(w + momentum * v - a) / lr - decay * w for w, v, a in zip(trained, velocity, after)]
    # How exactly `applied` is known: every float32 weight, and so every velocity read off two of them, is
    # rounded to 2^-24 relative when stored, so lr * applied is off by at most 2^-24 (|w| + |w'| + |m| + |m'|)
    # per coordinate (2^-23 below, for the momentum product's and the step's own roundings). The float32
    # gradient itself is taken to be within 1e-5 of the whole gradient's norm, as the losses (the whole norm:
    # the gradient of the bias before BatchNorm is exactly 0, its float32 value pure rounding).
    scale = np.sqrt(sum((g ** 2).sum() for g in applied))
    rng = np.random.default_rng(t)
    h = 1e-20
    for k, (g, w, v, a) in enumerate(zip(applied, trained, velocity, after)):
        rounding = 2.0 ** -23 * (np.linalg.norm(w) + np.linalg.norm(a) + np.linalg.norm(v) +
                                 np.linalg.norm(a - w)) / lr
        tolerance = rounding + 1e-5 * scale
        norm = np.linalg.norm(g)
        directions = [rng.normal(size=g.shape)]
        if norm > 0:
            directions.append(g / norm)
        for u in directions:
            u = u / np.linalg.norm(u)
            shifted = [wi + 1j * h * u if i == k else wi for i, wi in enumerate(trained)]
            derivative = loss(shifted).imag / h  # complex step: exact to float64 rounding
            observed = float((g * u).sum())
            assert abs(observed - derivative) <= tolerance, (t, k, observed, derivative, tolerance)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_every_combination_trains_as_its_hand_formula(name, digits):
    defense, attack, options, keywords, teachers = SCENARIOS[name]
    run = _run(_bn_networks(), defense, attack, options, keywords, teachers, digits)
    hand = _check_run(run)
    per_step = run.per_step
    for step, reported in enumerate(run.reported):
        # train_on_batch reports the mean over the step's replays. rtol: the step computes in float32, the hand
        # formula in float64 on the same inputs; roundings of 2^-24 (6e-8) through a small network and a mean
        # over 64 examples stay below 1e-6 relative (measured: 1e-7); 1e-5 keeps a margin of 10 and is still
        # a hundredth of the smallest effect of a feature asserted below.
        np.testing.assert_allclose(reported, np.mean(hand[step * per_step:(step + 1) * per_step]), rtol=1e-5,
                                   err_msg=f"{name} step {step + 1}")


def test_every_registered_method_has_a_combination():
    """Every registered method has a hand-written scenario above or declares its reference loss (a method added
    as one module: `registry.Method.reference`, checked by the test below); every scenario is of a registered
    method."""
    hand_written = {scenario[0] for scenario in SCENARIOS.values()}
    assert hand_written <= set(training.DEFENSES)
    assert hand_written >= {"natural", "pgd", "fgsm_rs", "free", "trades", "bat", "ssat", "label_smoothing",
                            "logit_squeeze"}
    missing = [m.name for m in training.registry.methods() if m.name not in hand_written and m.reference is None]
    assert not missing, f"no scenario and no declared reference: {missing}"


def check_declared_reference(name, digits):
    """Method `name` (its default options, its step rule at eps 0.125 and --step_size 0.03, 3 steps) trains as
    its declared reference, two SGD steps on a BatchNorm network: plain, then with every feature it supports
    (--ls_method ALS, --squeeze_beta, the teachers), which must change the loss."""
    method = training.registry.get(name)
    assert method.reference is not None, f"{name} declares no reference loss"
    options = method.options()
    attack = training.AttackConfig(0.125, float(method.step_levels(options, 0.125, 0.03)), 3,
                                   random_start=method.random_start(options))
    smoothing = S("als" if "label_smoothing" in method.supports else "none",
                  0.1 if "label_smoothing" in method.supports else 0.0,
                  squeeze_beta=0.1 if "logit_squeeze" in method.supports else 0.0)
    first = {}
    for features in (False, True):
        keywords = dict(batch_size=64, smoothing=smoothing if features else S())
        run = _run(_bn_networks(), name, attack, options, keywords, features and "distillation" in method.supports,
                   digits, reference=method.reference)
        hand = _check_run(run)
        per_step = run.per_step
        for step, reported in enumerate(run.reported):  # rtol: as in the hand-written combinations
            np.testing.assert_allclose(reported, np.mean(hand[step * per_step:(step + 1) * per_step]), rtol=1e-5,
                                       err_msg=f"{name} features={features} step {step + 1}")
        first[features] = run.reported[0]
    if {"label_smoothing", "logit_squeeze", "distillation"} & method.supports:
        assert abs(first[True] - first[False]) > 1e-3 * abs(first[False]), first


@pytest.mark.parametrize("name", [m.name for m in training.registry.methods() if m.reference is not None])
def test_a_method_trains_as_its_declared_reference(name, digits):
    check_declared_reference(name, digits)


# ---------------------------------------------------------------------------------------------------------
# the same op order as the code before the composition, in-process (exact on any machine)

def _logits(seed, rows=16, classes=10):
    return tf.constant(np.random.default_rng(seed).normal(size=(rows, classes)).astype(np.float32) * 3)


def _linear_teachers():
    keras.utils.set_random_seed(3)
    robust, standard = (models.build("linear", (8, 8, 1), 10) for _ in range(2))
    return _teachers(robust, standard)


def _plain_trainer(cls=training.NaturalTrainer, options=None, **keywords):
    return cls(models.build("linear", (8, 8, 1), 10), ATTACKS["natural"], options, **keywords)


def test_outer_loss_keeps_the_old_float_operations():
    labels = tf.constant(np.arange(16) % 10, tf.int32)
    logits, other = _logits(0), _logits(1)
    x = tf.constant(np.random.default_rng(2).uniform(size=(16, 8, 8, 1)).astype(np.float32))
    kd = _linear_teachers()
    soft = tf.nn.softmax(_logits(4))
    squeeze = S(squeeze_beta=0.3)
    # hard labels, --ls_method, teachers, squeeze: mean CE, ce_weight * CE + sum of weighted KD means, + squeeze
    smooth = S("sbls", 0.2, squeeze_beta=0.3)
    old = tf.reduce_mean(losses.soft_cross_entropy(_plain_trainer(smoothing=smooth).soft_targets(labels, logits),
                                                   logits))
    old = kd.ce_weight * old + kd.loss(x, logits)
    old += losses.logit_squeeze(logits, 0.3)
    new = _plain_trainer(smoothing=smooth, distillation=kd).outer_loss(labels, logits, x)
    assert float(new) == float(old)
    hard = tf.reduce_mean(losses.hard_cross_entropy(labels, logits))
    assert float(_plain_trainer().outer_loss(labels, logits, x)) == float(hard)
    # BAT / Madry-LA: the mean soft CE on their labels (+ squeeze for BAT)
    mean_soft = tf.reduce_mean(losses.soft_cross_entropy(soft, logits))
    assert float(_plain_trainer().outer_loss(labels, logits, x, targets=soft)) == float(mean_soft)
    with_squeeze = mean_soft + losses.logit_squeeze(logits, 0.3)
    assert float(_plain_trainer(smoothing=squeeze).outer_loss(labels, logits, x, targets=soft)) == float(with_squeeze)
    # TRADES with teachers: ce_weight * hard CE on the clean logits + KD on the adversarial pair
    trades_old = kd.ce_weight * hard + kd.loss(x + 0.1, other)
    trades_new = _plain_trainer(distillation=kd).outer_loss(labels, logits, x, distill_on=(x + 0.1, other))
    assert float(trades_new) == float(trades_old)
    # SSAT: the mean of Eq. 21 per example
    wrong = tf.constant(np.arange(1, 17) % 10, tf.int32)
    eq_21 = lambda t, z: ssat.regularised_loss(t, z, wrong, 0.2)  # noqa: E731
    ssat_old = tf.reduce_mean(ssat.regularised_loss(soft, logits, wrong, 0.2))
    ssat_new = _plain_trainer().outer_loss(labels, logits, x, targets=soft, per_example_ce=eq_21)
    assert float(ssat_new) == float(ssat_old)


def test_own_targets_refuse_label_smoothing_instead_of_dropping_it():
    trainer = _plain_trainer(smoothing=S("uniform", 0.1))
    soft = tf.nn.softmax(_logits(4))
    with pytest.raises(ValueError, match="ls_method=uniform"):
        trainer.outer_loss(tf.zeros([16], tf.int32), _logits(0), targets=soft)
    with pytest.raises(ValueError, match="inputs"):
        _plain_trainer(distillation=_linear_teachers()).outer_loss(tf.zeros([16], tf.int32), _logits(0))


# ---------------------------------------------------------------------------------------------------------
# features that were dropped before, or are new with the composition: applied, and equal to the hand formula

# name: (defense, attack, options, keywords without the feature, teachers without it, the feature: keywords or
# "teachers")
FEATURES = {
    "pgd_bat_labels+squeeze": ("pgd", "pgd", pgd.Options(labels="bat"), dict(label_adversary=LA()), False,
                               dict(smoothing=S(squeeze_beta=0.5))),
    "pgd_bat_labels+teachers": ("pgd", "pgd", pgd.Options(labels="bat"), dict(label_adversary=LA()), False,
                                "teachers"),
    "trades+teachers+ls_method": ("trades", "trades", trades.Options(beta=6.0), {}, True,
                                  dict(smoothing=S("sbls", 0.2))),
    "trades+teachers+squeeze": ("trades", "trades", trades.Options(beta=6.0), {}, True,
                                dict(smoothing=S(squeeze_beta=0.5))),
    "ssat+squeeze": ("ssat", "ssat", ssat.Options(replays=1, gamma=0.5, lambda0=0.9, lambda1=0.2, target_beta=0.3),
                     {}, False, dict(smoothing=S(squeeze_beta=0.5))),
    "ssat+teachers": ("ssat", "ssat", ssat.Options(replays=1, gamma=0.5, lambda0=0.9, lambda1=0.2, target_beta=0.3),
                      {}, False, "teachers"),
    "bat+teachers": ("bat", "bat", None, dict(label_adversary=LA()), False, "teachers"),
    "free+teachers": ("free", "free", free.Options(replays=1), dict(batch_size=64), False, "teachers"),
}


@pytest.mark.parametrize("case", sorted(FEATURES))
def test_the_feature_is_applied_as_the_composed_formula(case, digits):
    defense, attack, options, keywords, teachers, feature = FEATURES[case]
    runs = {}
    for with_feature in (True, False):
        more = feature if with_feature and feature != "teachers" else {}
        run = _run(_mlps(digits), defense, attack, options, {**keywords, **more},
                   teachers or (with_feature and feature == "teachers"), digits)
        hand = _check_run(run)
        per_step = run.per_step
        for step, reported in enumerate(run.reported):  # rtol: as in the combinations above
            np.testing.assert_allclose(reported, np.mean(hand[step * per_step:(step + 1) * per_step]), rtol=1e-5,
                                       err_msg=f"{case} with_feature={with_feature} step {step + 1}")
        runs[with_feature] = run
    loss, without = runs[True].reported[0], runs[False].reported[0]
    assert abs(loss - without) > 1e-3 * abs(without), (loss, without)  # the feature changes the loss
    if defense == "free":  # the second minibatch starts from the delta the first one left
        assert np.abs(runs[True].records[1]["inputs"] - runs[True].batches[1][0]).max() > 0.1
