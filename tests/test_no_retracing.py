"""No TF "retracing" warnings from an evaluation (issue 25, item 9): each attack's graph is traced once per image
shape, but TF's frequent-tracing detector keyed every attack's graph on the one Python function they share, so a
cascade of five attacks printed "5 out of the last 5 calls ... triggered tf.function retracing" as if something
were wrong."""

import logging

import pytest
import tensorflow as tf
from tensorflow.python.eager.polymorphic_function import polymorphic_function

from tfadv import data, evaluation


@pytest.fixture
def fresh_tracing_detector(monkeypatch):
    """TF's detector remembers every traced function's recent calls for the whole process and warns at most
    twice per Python function, so whether an earlier test in the same worker already used up those warnings
    decided this test's outcome (it failed in a clean-clone CI run, passed here); each test starts it afresh."""
    monkeypatch.setattr(polymorphic_function, "_frequent_tracing_detector_manager",
                        polymorphic_function._FrequentTracingDetectorManager())


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_cascade_of_attacks_with_the_audit_prints_no_retracing_warning(natural_mlp, digits, fresh_tracing_detector):
    records = _Records()
    tf.get_logger().addHandler(records)
    try:
        x, y = data.take(digits.test, 30)
        # twice, as a script evaluating two models (or two runs of one study) in one process does: each
        # evaluation's graphs are new functions, traced once per shape, which is not retracing
        reports = [evaluation.evaluate_model(natural_mlp, x, y, suite="autoattack", attacks=["fgsm", "pgd20", "cw20"],
                                             budget={"linf": 0.125, "l2": 1.0, "l1": 8.0}, batch_size=25, log=None)
                   for _ in range(2)]
    finally:
        tf.get_logger().removeHandler(records)
    for report in reports:  # every attack ran, in a batch of 25 and a last 5
        assert len(report["attacks"]) == 7 and "audit" in report
    assert [m for m in records.messages if "retracing" in m] == []
