"""Training methods by name; each is a Keras Model subclass with its own train_step."""

from tfadv.training.base import BN_MODES, WEIGHT_DECAY_SCOPES, AttackConfig, Distillation, SmoothingConfig, Trainer
from tfadv.training.ssat import SSATConfig, SSATTrainer
from tfadv.training.bat import BAT_ATTACKS, BAT_LABELS, BATTrainer, LabelAdversary
from tfadv.training.baselines import FGSMRSTrainer, FreeTrainer, NaturalTrainer, PGDTrainer, TRADESTrainer

TRAINERS = {
    "natural": NaturalTrainer,
    "pgd": PGDTrainer,
    "fgsm_rs": FGSMRSTrainer,
    "free": FreeTrainer,
    "trades": TRADESTrainer,
    "bat": BATTrainer,
    "ssat": SSATTrainer,
    # papers 003 / 004: natural training with soft targets or a logit penalty (and optional Gaussian noise)
    "label_smoothing": NaturalTrainer,
    "logit_squeeze": NaturalTrainer,
}

# Defenses that train on clean inputs only (their eps is used for validation, and may be 0).
CLEAN_DEFENSES = ("natural", "label_smoothing", "logit_squeeze")

DEFENSES = tuple(TRAINERS)

__all__ = ["Distillation", "SSATConfig", "SSATTrainer", "BAT_ATTACKS", "BAT_LABELS", "BATTrainer", "LabelAdversary", "AttackConfig", "BN_MODES", "CLEAN_DEFENSES", "DEFENSES", "SmoothingConfig", "TRAINERS", "Trainer", "WEIGHT_DECAY_SCOPES"]
