"""One evaluation path (issue 23, item 2): evaluate.py's flags are EvalConfig's fields (names, defaults and help
as before), the config is validated once, and plan -> run -> write does every check once, for the script and for
evaluate_model alike."""

import collections
import json

import pytest
from absl import flags

from tfadv import config as train_config, data, evaluation, export, runs
from tfadv.evaluation import config, pipeline, runner, shards, specs

EPS = {"linf": 0.125, "l2": 1.0, "l1": 8.0}
METADATA = {"dataset": "digits", "eps": 0.125, "budget": {"pixel_max": 16.0, "eps": {"levels": 2.0,
                                                                                       "fraction": 0.125}}}


def _old_flags(values):
    """evaluate.py's flag definitions before the flags were generated from EvalConfig (commit f22eebb)."""
    F = flags
    kw = {"flag_values": values}
    F.DEFINE_string("model_dir", None, "a SavedModel directory or a tfadv run directory", **kw)
    F.DEFINE_list("attacks", ["fgsm", "pgd20", "cw20"], "attacks, e.g. fgsm,pgd20,cw20,dlr50,pgd20_l2,pgd50_r5,"
                  "apgd_t,transfer_pgd20 (with --source_model); with --suite only when given (then added to it)", **kw)
    F.DEFINE_list("suite", [], f"named attack suites, comma-separated: {', '.join(evaluation.SUITES)}", **kw)
    F.DEFINE_string("source_model", None, "transfer attacks: craft on this SavedModel / run dir", **kw)
    F.DEFINE_boolean("audit", None, "run the gradient-masking audit (default: yes, except under --shard)", **kw)
    F.DEFINE_integer("audit_square_queries", 1000, "queries of the audit's Square probe if no black-box attack ran",
                     **kw)
    F.DEFINE_list("diagnostics", [], "diagnostics: eps_l, gradients, lipschitz, linearity, landscape, confidence, "
                  "sweep", **kw)
    F.DEFINE_string("plots_dir", None, "where diagnostic PNGs go (default: next to --output, or ./eval_plots)", **kw)
    F.DEFINE_string("cossat_protocol", None, "for a Co-SSAT SavedModel: white_box, half_white_box, aa_dispatch, "
                    "both, all", **kw)
    F.DEFINE_string("dataset", None, f"the model's dataset ({', '.join(data.DATASETS)}; default: its recorded one)",
                    **kw)
    F.DEFINE_float("eps", None, "l-inf radius in the dataset's pixel levels (default: the model's recorded eps)", **kw)
    F.DEFINE_float("eps_l2", None, "l2 radius in pixel levels (default: 0.5 of the pixel range)", **kw)
    F.DEFINE_float("eps_l1", None, "l1 radius in pixel levels (default: 12 in [0,1] units for 32x32x3, scaled by "
                   "size)", **kw)
    F.DEFINE_float("attack_step_size", None, "PGD step size in pixel levels (default: eps/4 for linf, 2.5 eps/steps)",
                   **kw)
    F.DEFINE_integer("num_examples", 1000, "evaluate on the first N test examples (-1: all)", **kw)
    F.DEFINE_string("examples", None, "an .npz with x (float [0,1], NHWC) and y (int) to evaluate instead", **kw)
    F.DEFINE_string("output", None, "write the report as JSON here", **kw)
    F.DEFINE_string("output_dir", None, "write report.json, report.md and plots/ here", **kw)
    F.DEFINE_string("save_adversarial", None, "write each attack's adversarial images, example indices and verdicts "
                    "(broken, valid) to this .npz (its directory must exist)", **kw)
    F.DEFINE_boolean("progress", True, "show a progress bar with ETA for each attack (stderr)", **kw)
    F.DEFINE_integer("eval_batch_size", 256, "examples per attack batch", **kw)
    F.DEFINE_integer("eot_iter", 1, "APGD attacks average each step's gradient over N passes (EOT)", **kw)
    F.DEFINE_integer("seed", 0, "random seed of the attacks", **kw)
    F.DEFINE_string("shard", None, "i/n: evaluate the i-th (0-based) of n slices of the examples (merge_reports.py)",
                    **kw)
    F.DEFINE_boolean("jit_compile", False, "compile the attacks with XLA", **kw)
    F.DEFINE_string("data_dir", None, "tensorflow-datasets directory", **kw)
    F.DEFINE_boolean("download", False, "let tensorflow-datasets download a missing dataset", **kw)


def _described(values):
    return {name: (type(flag).__name__, flag.default, flag.help, flag.boolean)
            for name, flag in values._flags().items()}


# flags evaluate.py gained after the flags were generated from EvalConfig (each with its default)
ADDED_SINCE = {"attack_precision": "float32"}  # issue 24 item 3


def test_the_flags_are_the_configs_fields_with_their_old_names_defaults_and_help():
    old, new = flags.FlagValues(), flags.FlagValues()
    _old_flags(old)
    assert config.define_flags(new) == [f.name for f in config.flag_fields()]
    described = _described(new)
    assert {name: described.pop(name)[1] for name in ADDED_SINCE} == ADDED_SINCE
    assert described == _described(old)


def _flag_values(*argv):
    values = flags.FlagValues()
    config.define_flags(values)
    values(["evaluate.py", *argv])
    return values


def test_a_bad_value_names_the_flag_from_the_command_line_and_the_argument_from_python(tmp_path):
    with pytest.raises(evaluation.EvaluationError, match=r"^--eps: must be a finite, non-negative"):
        config.from_parsed_flags(_flag_values("--eps=-1")).validate()
    with pytest.raises(evaluation.EvaluationError, match=r"^eps: must be a finite, non-negative"):
        config.EvalConfig(eps=-1.0).validate()
    with pytest.raises(evaluation.EvaluationError, match=r"^eval_batch_size: must be an integer >= 1"):
        config.EvalConfig(eval_batch_size=0).validate()
    with pytest.raises(evaluation.EvaluationError, match=r"^shard: the shard index must be in 0\.\.1"):
        config.EvalConfig(shard="2/2").validate()
    with pytest.raises(evaluation.EvaluationError, match=r"^suite: unknown 'nope'"):
        config.EvalConfig(suite=["nope"]).validate()
    # what the plan reads (the model) is named the same way
    with pytest.raises(evaluation.EvaluationError, match=r"^model_dir is required"):
        pipeline.plan(config.EvalConfig(), log=None)
    # flags not given read back as "not given"; given ones as typed
    parsed = config.from_parsed_flags(_flag_values("--suite=autoattack"))
    assert (parsed.attacks, parsed.num_examples, parsed.eot_iter, parsed.suite) == (None, None, None, ["autoattack"])
    assert config.from_parsed_flags(_flag_values("--attacks=pgd20", "--eot_iter=1")).attacks == ["pgd20"]


def test_autoattack_is_built_from_its_fields_as_its_names_would_give_it():
    for norm in ("linf", "l2"):
        for version, (families, eot_iter, _) in specs.AUTOATTACK_VERSIONS.items():
            built = specs.autoattack_specs(EPS, norm, version)
            named = [specs.parse_attack(specs.canonical_attack_name(f, norm=norm, eot_iter=eot_iter), EPS)
                     for f in families]
            assert [s.name for s in built] == [s.name for s in named]
            assert [s.metadata() for s in built] == [s.metadata() for s in named]
    assert specs.build_spec("pgd", EPS, steps=20) == specs.parse_attack("pgd20", EPS)
    assert specs.build_spec("cwl2", EPS, search_steps=5, steps=200) == specs.parse_attack("cwl2_200_b5", EPS)


def _count(monkeypatch, counts, owner, name):
    original = getattr(owner, name)

    def counted(*args, **kwargs):
        counts[name] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


CHECKS = ((config.EvalConfig, "validate"), (config, "check_values"), (shards, "parse_shard"),
          (pipeline, "budget_of"), (train_config, "budget"), (pipeline, "attack_specs"), (specs, "parse_attack"),
          (specs, "build_spec"), (specs, "check_classes"), (pipeline, "check_examples"), (data, "check_arrays"),
          (runs, "find_saved_model"), (export, "read_metadata"), (export, "load_logits_fn"),
          (runner.Evaluator, "__init__"), (pipeline, "write"))


def test_each_check_runs_once_in_an_autoattack_evaluation(natural_mlp, tmp_path, monkeypatch):
    """evaluate.py --suite=autoattack in-process: before, check_arguments ran three times, check_options and
    check_examples twice, and AutoAttack's specs were parsed from names made from them."""
    path = export.export(natural_mlp, str(tmp_path / "model"), METADATA)
    values = _flag_values(f"--model_dir={path}", "--suite=autoattack", "--num_examples=8", "--noprogress",
                          "--noaudit", f"--output={tmp_path / 'report.json'}")
    counts = collections.Counter()
    for owner, name in CHECKS:
        _count(monkeypatch, counts, owner, name)
    pipeline.main(["evaluate.py"], values)
    report = json.loads((tmp_path / "report.json").read_text())
    assert list(report["attacks"]) == ["apgd_ce", "apgd_t", "fab_t", "square"]
    expected = {name: 1 for _, name in CHECKS}
    expected.update(parse_attack=0, build_spec=4)  # AutoAttack's four stages, built from their fields
    assert dict(counts) == {k: v for k, v in expected.items() if v}, counts


def test_each_check_runs_once_from_python(natural_mlp, digits, monkeypatch):
    counts = collections.Counter()
    for owner, name in CHECKS:
        _count(monkeypatch, counts, owner, name)
    x, y = digits.test[0][:10], digits.test[1][:10]
    report = evaluation.evaluate_model(natural_mlp, x, y, ["fgsm"], budget=EPS, audit=False, progress=False, log=None)
    assert list(report["attacks"]) == ["fgsm"]
    assert dict(counts) == {"validate": 1, "check_values": 1, "parse_shard": 1, "attack_specs": 1, "parse_attack": 1,
                            "build_spec": 1, "check_classes": 1, "check_examples": 1, "check_arrays": 1,
                            "__init__": 1, "write": 1}, counts
