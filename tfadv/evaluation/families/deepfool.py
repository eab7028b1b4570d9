"""DeepFool (tfadv.attacks.deepfool), a minimum-norm attack scored at the budget: an example counts as broken when
the perturbation it finds is within eps (`specs.at_budget`)."""

from tfadv.attacks import deepfool
from tfadv.evaluation import specs


def _run_deepfool(spec, logits_fn, x, y, keys):
    x_adv, norms = deepfool.deepfool(logits_fn, x, y, norm=spec.norm, max_iterations=spec.steps)
    return specs.at_budget(x, x_adv, norms, spec.eps)


specs.register_attack("deepfool", _run_deepfool, kind="minimum_norm", loss="margin",
                      default_steps=specs.DEEPFOOL_DEFAULT_STEPS, norms=("linf", "l2"), example={"steps": 8},
                      description="DeepFool, scored at the budget")
