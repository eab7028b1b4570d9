"""Logit squeezing as a defense (paper 004 Eq. 5): natural training plus beta * ||Z||_F of the minibatch
logits (--squeeze_beta, which this method cannot run without; `tfadv.losses.logit_squeeze`)."""

from __future__ import annotations

from tfadv.training import registry
from tfadv.training.natural import CLEAN_FEATURES, NaturalTrainer

registry.register(registry.Method(
    "logit_squeeze", NaturalTrainer, clean=True, supports=CLEAN_FEATURES, requires={"logit_squeeze"},
    description="natural training with a logit-norm penalty (--squeeze_beta; paper 004)",
    example={"squeeze_beta": 0.5}))
