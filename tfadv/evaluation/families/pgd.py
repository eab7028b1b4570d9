"""PGD from a random start (tfadv.attacks.pgd.pgd) on three losses, one family each: `pgd` (cross-entropy), `cw`
(the CW margin) and `dlr` (DLR, 3 classes or more). Step size eps/4 for l-inf (2/255 at 8/255), 2.5 eps / steps
for l2 and l1 (Madry et al.), unless --attack_step_size gives one."""

from tfadv import attacks
from tfadv.evaluation import specs


def _run_pgd(spec, logits_fn, x, y, keys):
    return attacks.pgd(logits_fn, x, y, eps=spec.eps, step_size=spec.step_size, steps=spec.steps, norm=spec.norm,
                       loss=spec.loss, restarts=spec.restarts, random_start=True, keys=keys)


def _pgd_step_size(radius, norm, steps, given):
    if given is not None:
        return given
    return radius / 4 if norm == "linf" else 2.5 * radius / steps


for _family, _loss, _min in (("pgd", "ce", 2), ("cw", "cw", 2), ("dlr", "dlr", 3)):
    specs.register_attack(_family, _run_pgd, kind="gradient", loss=_loss, min_classes=_min, step_size=_pgd_step_size,
                          spec_kind="pgd", example={"steps": 4},
                          description=f"PGD on the {_loss} loss from a random start")
