"""FGSM: one signed-gradient step of size eps (tfadv.attacks.pgd.fgsm)."""

from tfadv import attacks
from tfadv.evaluation import specs


def _run_fgsm(spec, logits_fn, x, y, keys):
    return attacks.fgsm(logits_fn, x, y, eps=spec.eps, loss=spec.loss, norm=spec.norm)


specs.register_attack("fgsm", _run_fgsm, kind="gradient", loss="ce", default_steps=1, step_count=False,
                      restarts=False, description="FGSM: one signed-gradient step of size eps")
