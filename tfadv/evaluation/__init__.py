"""Evaluation: attack suites, robust accuracy with the worst case per example, reports."""

from tfadv.evaluation.runner import AttackSpec, Evaluator, evaluate, format_table, parse_attack

__all__ = ["AttackSpec", "Evaluator", "evaluate", "format_table", "parse_attack"]
