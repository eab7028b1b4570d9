"""Training methods by name; each is a Keras Model subclass with its own train_step."""

from tfadv.training.base import BN_MODES, AttackConfig, Trainer
from tfadv.training.baselines import FGSMRSTrainer, FreeTrainer, NaturalTrainer, PGDTrainer, TRADESTrainer

TRAINERS = {
    "natural": NaturalTrainer,
    "pgd": PGDTrainer,
    "fgsm_rs": FGSMRSTrainer,
    "free": FreeTrainer,
    "trades": TRADESTrainer,
}

DEFENSES = tuple(TRAINERS)

__all__ = ["AttackConfig", "BN_MODES", "DEFENSES", "TRAINERS", "Trainer"]
