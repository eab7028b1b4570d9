"""Label smoothing as a defense (papers 003 and 004): natural training on the soft targets of --ls_method
(uniform, sls, als, bls, sbls; `tfadv.targets`), which this method cannot run without."""

from __future__ import annotations

from tfadv.training import registry
from tfadv.training.natural import CLEAN_FEATURES, NaturalTrainer

registry.register(registry.Method(
    "label_smoothing", NaturalTrainer, clean=True, supports=CLEAN_FEATURES, requires={"label_smoothing"},
    description="natural training on smoothed labels (--ls_method, --ls_alpha; papers 003, 004)",
    # an example run: ALS, with the Gaussian noise papers 003 / 004 train it with
    example={"ls_method": "als", "ls_alpha": 0.1, "noise_sigma": 4.0}))
