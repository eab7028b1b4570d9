"""Evaluation: attack suites, robust accuracy with the worst case per example, reports."""

from tfadv.evaluation.runner import (AUTOATTACK, AttackSpec, Evaluator, at_budget, autoattack_specs, check_classes,
                                     evaluate, format_markdown, format_table, parse_attack, plot_report)

__all__ = ["AUTOATTACK", "AttackSpec", "Evaluator", "at_budget", "autoattack_specs", "check_classes", "evaluate",
           "format_markdown", "format_table", "parse_attack", "plot_report"]
