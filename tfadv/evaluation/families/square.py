"""Square Attack (tfadv.attacks.square), score-based: the number in its name is a query count (an initial query
and up to N proposals; 5000 by default, as AutoAttack-standard)."""

from tfadv.attacks import square
from tfadv.evaluation import specs


def _run_square(spec, logits_fn, x, y, keys):
    return square.square(logits_fn, x, y, eps=spec.eps, norm=spec.norm, queries=spec.steps, keys=keys)


specs.register_attack("square", _run_square, kind="score_based", loss="margin",
                      default_steps=specs.SQUARE_DEFAULT_QUERIES, norms=("linf", "l2"), restarts=False,
                      example={"steps": 50}, description="Square Attack; the number is a query count")
