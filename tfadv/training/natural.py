"""Natural training: the outer loss on clean (or Gaussian-noised) images, nothing else.

With --ls_method it is paper 003's / 004's label smoothing, with --squeeze_beta paper 004's logit squeezing
(both also registered under their own names, `label_smoothing` and `logit_squeeze`), with teachers plain
distillation.
"""

from __future__ import annotations

from tfadv.training import registry
from tfadv.training.base import Trainer

# What every clean method combines with: the three features of the composed outer loss.
CLEAN_FEATURES = frozenset({"label_smoothing", "logit_squeeze", "distillation"})


class NaturalTrainer(Trainer):
    """Training on clean (or Gaussian-noised) images; with a SmoothingConfig this is paper 003's label
    smoothing (SLS/ALS/BLS/SBLS), paper 004's label smoothing or logit squeezing."""

    def training_loss(self, x, labels):
        logits = self.network(x, training=True)
        return self.outer_loss(labels, logits, x), logits


registry.register(registry.Method(
    "natural", NaturalTrainer, clean=True, supports=CLEAN_FEATURES,
    description="standard training on clean images"))
