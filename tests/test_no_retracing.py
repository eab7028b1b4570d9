"""No TF "retracing" warnings from an evaluation (issue 25, item 9): each attack's graph is traced once per image
shape, but TF's frequent-tracing detector keyed every attack's graph on the one Python function they share, so a
cascade of five attacks printed "5 out of the last 5 calls ... triggered tf.function retracing" as if something
were wrong."""

import logging

import tensorflow as tf

from tfadv import data, evaluation


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_cascade_of_attacks_with_the_audit_prints_no_retracing_warning(natural_mlp, digits):
    records = _Records()
    tf.get_logger().addHandler(records)
    try:
        x, y = data.take(digits.test, 60)
        report = evaluation.evaluate_model(natural_mlp, x, y, suite="autoattack", attacks=["fgsm", "pgd20", "cw20"],
                                           budget={"linf": 0.125, "l2": 1.0, "l1": 8.0}, batch_size=25, log=None)
    finally:
        tf.get_logger().removeHandler(records)
    assert len(report["attacks"]) == 7 and "audit" in report  # every attack ran, in batches of 25 and a last 10
    assert [m for m in records.messages if "retracing" in m] == []
