"""Evaluation: attack suites, robust accuracy with the worst case per example, reports."""

from tfadv.evaluation.runner import (AUTOATTACK, AUTOATTACK_RAND, AttackSpec, Evaluator, at_budget, autoattack_specs,
                                     canonical_attack_name, check_classes, evaluate, format_markdown, format_table,
                                     parse_attack, plot_report, with_eot)

__all__ = ["AUTOATTACK", "AUTOATTACK_RAND", "AttackSpec", "Evaluator", "at_budget", "autoattack_specs",
           "canonical_attack_name", "check_classes", "evaluate", "format_markdown", "format_table", "parse_attack",
           "plot_report", "with_eot"]
