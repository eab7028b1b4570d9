"""`function`: tf.function for a graph made afresh per call (per evaluation, attack, audit check or batch shape).

TF's frequent-tracing detector keys a tf.function on its Python code object (or, for a bound method, its
class's function), so many graphs made from one closure or method (one per Evaluator, per audit check, per
attack) count as one function "retracing" and print "5 out of the last 5 calls ... triggered tf.function
retracing" although each graph is traced once per shape (tests/test_no_retracing.py). Wrapping the Python function
in a `functools.partial` keys the detector on that graph alone; tracing itself is unchanged."""

import functools

import tensorflow as tf


def function(fn, **kwargs):
    """`tf.function(fn, **kwargs)`, counted apart from every other graph made from the same Python code."""
    return tf.function(functools.partial(fn), **kwargs)
