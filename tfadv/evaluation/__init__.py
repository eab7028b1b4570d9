"""Evaluation: the attack registry and suites (specs), the attack families that fill it (families: one module
each, all imported here), the Evaluator (runner), reports, the evaluation config (EvalConfig: evaluate.py's flags)
and its one path (pipeline: plan -> run -> write), and `evaluate_model`, the Python API over the same path."""

from tfadv.evaluation.specs import (AUTOATTACK, AUTOATTACK_RAND, SUITES, AttackEntry, AttackSpec, NameOption,
                                    at_budget, attack_entry, autoattack_specs, canonical_attack_name, check_classes,
                                    example_spec, parse_attack, register_attack, registered_attacks, suite_specs,
                                    unregister_attack, with_eot)
from tfadv.evaluation import families  # imports every family module: they register the attacks
from tfadv.evaluation.runner import Evaluator, evaluate
from tfadv.evaluation.reports import format_markdown, format_table, plot_report
from tfadv.evaluation.api import (EVALUATION_SEED, EvaluationError, evaluate_model, pgd_accuracy_fn, resolve_attacks,
                                  robust_attack_name)
from tfadv.evaluation.shards import evaluate_shard, merge_reports
from tfadv.evaluation.config import EvalConfig
from tfadv.evaluation.pipeline import plan, run, write

__all__ = ["EvalConfig", "plan", "run", "write", "EVALUATION_SEED", "pgd_accuracy_fn", "robust_attack_name",
           "AUTOATTACK", "AUTOATTACK_RAND", "SUITES", "AttackEntry", "AttackSpec", "EvaluationError", "Evaluator",
           "NameOption", "at_budget", "attack_entry", "autoattack_specs", "canonical_attack_name", "check_classes",
           "evaluate", "evaluate_model", "evaluate_shard", "example_spec", "families", "format_markdown",
           "format_table", "merge_reports", "parse_attack", "plot_report", "register_attack", "registered_attacks",
           "resolve_attacks", "suite_specs", "unregister_attack", "with_eot"]
