"""Carlini-Wagner L2 (tfadv.attacks.cw): Adam steps x binary-search steps over the constant c (`cwl2_200_b5`: 200
steps x 5 searches), a minimum-norm attack scored at the budget (`specs.at_budget`)."""

from tfadv.attacks import cw
from tfadv.evaluation import specs


def _run_cwl2(spec, logits_fn, x, y, keys):
    result = cw.carlini_wagner_l2(logits_fn, x, y, steps=spec.steps, binary_search_steps=spec.search_steps)
    return specs.at_budget(x, result.x_adv, result.norms, spec.eps)


specs.register_attack("cwl2", _run_cwl2, kind="minimum_norm", loss="cw", default_steps=specs.CWL2_DEFAULT_STEPS,
                      norms=("l2",), restarts=False,
                      options=(specs.NameOption("b", "search_steps", specs.CWL2_DEFAULT_SEARCH,
                                                "binary_search_steps"),),
                      step_size=lambda radius, norm, steps, given: 0.01, example={"steps": 30, "search_steps": 3},
                      description="Carlini-Wagner L2 (Adam steps x binary-search steps), scored at the budget")
