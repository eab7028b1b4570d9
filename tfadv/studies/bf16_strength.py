"""How strong an attack stays when its iterations run in bfloat16 (evaluate.py --attack_precision=bfloat16): per
attack, the same examples attacked twice, once on the float32 model and once on its mixed_bfloat16 copy
(`tfadv.export.as_mixed_bfloat16`), both judged by the float32 model (`tfadv.evaluation.Evaluator`'s
`attack_logits_fn`). Each attack runs alone (not as a cascade stage), from the clean input, with the same
per-example random numbers in both precisions, so the per-example verdicts compare directly.

A row: robust accuracy in each precision, the examples only the float32 attack broke (`float32_only`: what
bfloat16 iterations lose), those only the bfloat16 attack broke (`bfloat16_only`), the bfloat16 outputs that fool
the copy but not the float32 model (`unconfirmed`: counted robust, as the option does), and the seconds of each
(tracing included). `scripts/bf16_strength.py` prints the table.

Models: two digits MLPs trained here (natural and PGD-AT, as tests/conftest.py trains them), or a tfadv run
directory (its SavedModel is the float32 model, its network rebuilt from the final checkpoint the bfloat16 copy:
`tfadv.evaluation.pipeline.bfloat16_attack_model`); `masked` wraps both in the input quantisation of the
gradient-masking tests (tests/test_audit.py: round to `levels` steps under stop_gradient).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

ATTACKS = ("fgsm", "pgd20", "apgd_ce", "apgd_t", "fab_t", "square")
DIGITS_EPS = 0.125  # 2 of digits' 16 levels: the eps of the tests' PGD-AT MLP
MASK_LEVELS = 4


def digits_models(examples: int = 200):
    """({name: keras network}, x, y, radii): the natural and PGD-AT digits MLPs (tests/conftest.py's recipes) and
    the first `examples` test images."""
    import keras
    import tensorflow as tf

    from tfadv import data, models, training

    digits = data.load("digits")
    spec = digits.spec
    keras.utils.set_random_seed(0)
    natural = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    natural.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    natural.fit(*digits.train, epochs=15, batch_size=64, verbose=0)
    keras.utils.set_random_seed(0)
    robust = models.build("mlp", spec.image_shape, spec.num_classes, spec.mean, spec.std)
    trainer = training.PGDTrainer(robust, training.AttackConfig(eps=DIGITS_EPS, step_size=0.05, steps=5))
    trainer.compile(optimizer=keras.optimizers.Adam(3e-3), jit_compile=False)
    x, y = digits.train
    dataset = tf.data.Dataset.from_tensor_slices((x, y.astype("int32"))).shuffle(len(y), seed=0).batch(64)
    trainer.fit(dataset, epochs=20, verbose=0)
    radii = {"linf": DIGITS_EPS, "l2": 1.0, "l1": 10.0}
    return {"natural MLP": natural, "PGD-AT MLP": robust}, digits.test[0][:examples], digits.test[1][:examples], radii


def keras_pair(network):
    """(float32 logits_fn, bfloat16 logits_fn) of a keras network, as evaluate_model builds them."""
    from tfadv.evaluation import pipeline

    return pipeline.bfloat16_attack_model(network, None, None)


def run_pair(run_dir: str, dataset: str, data_dir: str, examples: int):
    """(float32 logits_fn, bfloat16 logits_fn, x, y, radii) of a tfadv run directory on the first `examples` test
    images of `dataset`, as evaluate.py --attack_precision=bfloat16 builds them."""
    from tfadv import data, export, runs
    from tfadv.evaluation import pipeline

    path = runs.find_saved_model(run_dir)
    _, budget = pipeline.budget_of(export.read_metadata(path), dataset)
    x, y = data.take(data.load(dataset, data_dir, 0.0, False).test, examples)
    float32_fn = export.load_logits_fn(path)
    float32_fn, bfloat16_fn = pipeline.bfloat16_attack_model(run_dir, float32_fn, x[:256])
    return float32_fn, bfloat16_fn, x, y, pipeline.radii_of(budget)


def masked(logits_fn: Callable, levels: int = MASK_LEVELS) -> Callable:
    """`logits_fn` behind tests/test_audit.py's shattered-gradient "defense": the input rounded to `levels` steps
    with no gradient through the rounding."""
    import tensorflow as tf

    return lambda images: logits_fn(tf.stop_gradient(tf.round(images * levels) / levels))


def compare(float32_fn: Callable, bfloat16_fn: Callable, x, y, radii: dict, attacks: Sequence[str] = ATTACKS,
            batch_size: int = 256, seed: int = 0, log: Callable = print) -> list:
    """One row per attack (see the module): the attack on the float32 model and on the bfloat16 copy, both
    judged by `float32_fn`."""
    import numpy as np

    from tfadv.evaluation import runner, specs

    y = np.asarray(y, np.int32)
    rows = []
    for name in attacks:
        spec = specs.parse_attack(name, radii)
        results, seconds = {}, {}
        for precision, attack_fn in (("float32", None), ("bfloat16", bfloat16_fn)):
            evaluator = runner.Evaluator(float32_fn, [spec], batch_size, seed, attack_logits_fn=attack_fn)
            start = time.time()
            report = evaluator(x, y, keep_adversarial=precision == "bfloat16")
            seconds[precision] = time.time() - start
            results[precision] = report["per_example_correct"]["attacks"][spec.name]
        outputs = report["adversarial"][spec.name]
        fooled = np.zeros([len(y)], bool)
        if len(outputs["indices"]):
            images = outputs["images"][outputs["valid"]]
            labels = y[outputs["indices"][outputs["valid"]]]
            fooled_copy = np.argmax(np.asarray(bfloat16_fn(images)), -1) != labels
            fooled[outputs["indices"][outputs["valid"]][fooled_copy]] = True
        robust32, robust16 = results["float32"], results["bfloat16"]
        row = {"attack": spec.name, "float32": float(robust32.mean()), "bfloat16": float(robust16.mean()),
               "float32_only": int(np.sum(~robust32 & robust16)), "bfloat16_only": int(np.sum(robust32 & ~robust16)),
               "unconfirmed": int(np.sum(fooled & robust16)), "seconds_float32": seconds["float32"],
               "seconds_bfloat16": seconds["bfloat16"], "examples": int(len(y))}
        rows.append(row)
        log(format_row(row))
    return rows


HEADER = (f"{'attack':<9} {'RA f32':>7} {'RA bf16':>7} {'f32 only':>8} {'bf16 only':>9} {'unconf.':>7} "
          f"{'s f32':>7} {'s bf16':>7}")


def format_row(row: dict) -> str:
    """A table line: robust accuracy each, the disagreements both ways, the unconfirmed count, the seconds."""
    return (f"{row['attack']:<9} {row['float32']:>7.3f} {row['bfloat16']:>7.3f} {row['float32_only']:>8d} "
            f"{row['bfloat16_only']:>9d} {row['unconfirmed']:>7d} {row['seconds_float32']:>7.1f} "
            f"{row['seconds_bfloat16']:>7.1f}")


def equal_strength(rows: Sequence[dict]) -> bool:
    """Whether bfloat16 iterations broke every example float32 iterations broke, on every row."""
    return all(row["float32_only"] == 0 for row in rows)
