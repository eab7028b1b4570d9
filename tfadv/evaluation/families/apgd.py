"""APGD (Croce & Hein 2020; tfadv.attacks.apgd): `apgd_ce` and `apgd_dlr` (untargeted, on the CE and DLR losses)
and `apgd_t` (targeted DLR over the top-9 wrong classes), 100 steps unless a count follows; `_eotN` averages each
step's gradient over N forward passes (AutoAttack's version 'rand')."""

from tfadv import attacks
from tfadv.evaluation import specs


def _eot(spec):
    return {"eot_iter": spec.eot_iter} if spec.eot_iter != 1 else {}  # passed only when not the default


def _run_apgd(spec, logits_fn, x, y, keys):
    return attacks.apgd(logits_fn, x, y, eps=spec.eps, norm=spec.norm, loss=spec.loss, steps=spec.steps,
                        restarts=spec.restarts, keys=keys, **_eot(spec))


def _run_apgd_t(spec, logits_fn, x, y, keys):
    return attacks.apgd_targeted(logits_fn, x, y, eps=spec.eps, norm=spec.norm, steps=spec.steps,
                                 restarts=spec.restarts, keys=keys, **_eot(spec))


def _apgd_step_size(radius, norm, steps, given):
    return 2 * radius  # APGD sets its own step size (2 eps, halved at checkpoints)


for _family, _loss, _min in (("apgd_ce", "ce", 2), ("apgd_dlr", "dlr", 3)):
    specs.register_attack(_family, _run_apgd, kind="gradient", loss=_loss, default_steps=specs.APGD_DEFAULT_STEPS,
                          norms=("linf", "l2"), min_classes=_min, eot=True, step_size=_apgd_step_size,
                          spec_kind="apgd", example={"steps": 6},
                          description=f"APGD on the {_loss} loss (Croce & Hein 2020)")
specs.register_attack("apgd_t", _run_apgd_t, kind="gradient", loss="dlr", default_steps=specs.APGD_DEFAULT_STEPS,
                      norms=("linf", "l2"), targeted=True, min_classes=4, eot=True, step_size=_apgd_step_size,
                      example={"steps": 5}, description="APGD-T on the targeted DLR loss, top-9 wrong classes")
