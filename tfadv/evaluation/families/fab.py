"""FAB-T (tfadv.attacks.fab), the targeted Fast Adaptive Boundary attack of AutoAttack: a minimum-norm attack over
the top-9 wrong classes, scored at the budget (`specs.at_budget`)."""

from tfadv.attacks import fab
from tfadv.evaluation import specs


def _run_fab_t(spec, logits_fn, x, y, keys):
    # stop_within: a point within the radius it is scored at is broken and attacked no further, as in the
    # reference FAB-T (its first point within eps, not the smallest over all targets); the same points break
    x_adv, norms = fab.fab_targeted(
        logits_fn, x, y, norm=spec.norm, steps=spec.steps, restarts=spec.restarts, keys=keys,
        stop_within=spec.eps * (1.0 + specs.AT_BUDGET_TOLERANCE))
    return specs.at_budget(x, x_adv, norms, spec.eps)


specs.register_attack("fab_t", _run_fab_t, kind="minimum_norm", loss="margin",
                      default_steps=specs.FAB_DEFAULT_STEPS, norms=("linf", "l2"), targeted=True,
                      example={"steps": 5}, description="FAB-T, 9 targets, scored at the budget")
