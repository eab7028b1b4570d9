"""Training methods by name; each is a Keras Model subclass with its own train_step, defined in its own module
with its `Options` and registered in `tfadv.training.registry` on import (importing this package registers
them all). `TRAINERS`, `DEFENSES` and `CLEAN_DEFENSES` are read from the registry when they are read, so a
method registered later (a test's toy one) is in them too."""

import dataclasses

from tfadv.training import registry
from tfadv.training.base import (BAT_LABELS, BN_MODES, WEIGHT_DECAY_SCOPES, AttackConfig, Distillation,
                                 LabelAdversary, SmoothingConfig, Trainer)

# Every module of this package registers its method on import; a new defense is one new module here (no list
# to edit). The tuple below only fixes the display order of the built-in ones (DEFENSES, --defense's help);
# any other module is imported after them, in name order. docs/flags.md documents these (`built_in`).
_DISPLAY_ORDER = ("natural", "pgd", "fgsm_rs", "free", "trades", "bat", "ssat", "label_smoothing", "logit_squeeze")


def built_in(method) -> bool:
    """Whether a registered method comes from a module shipped with tfadv (not one a user dropped on the path)."""
    module = method.trainer.__module__
    return module.startswith(__name__ + ".") and module.rsplit(".", 1)[1] in _DISPLAY_ORDER


def import_method_modules():
    """THE discovery of training methods: imports every module on this package's path (`__path__`), which
    registers its method; a module already imported is not imported again. Returns the module names."""
    import importlib
    import pkgutil

    names = [m.name for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "registry")]
    names.sort(key=lambda n: (_DISPLAY_ORDER.index(n) if n in _DISPLAY_ORDER else len(_DISPLAY_ORDER), n))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


import_method_modules()

from tfadv.training.natural import NaturalTrainer  # noqa: E402
from tfadv.training.pgd import PGDTrainer  # noqa: E402
from tfadv.training.fgsm_rs import FGSMRSTrainer  # noqa: E402
from tfadv.training.free import FreeTrainer  # noqa: E402
from tfadv.training.trades import TRADESTrainer  # noqa: E402
from tfadv.training.bat import BAT_ATTACKS, BATTrainer  # noqa: E402
from tfadv.training.ssat import SSATTrainer  # noqa: E402


def __getattr__(name):
    """TRAINERS {name: trainer class}, DEFENSES (names, in registration order) and CLEAN_DEFENSES (the defenses
    that train on clean inputs only: their eps is used for validation, and may be 0), read from the registry."""
    if name == "TRAINERS":
        return {method.name: method.trainer for method in registry.methods()}
    if name == "DEFENSES":
        return registry.names()
    if name == "CLEAN_DEFENSES":
        return tuple(method.name for method in registry.methods() if method.clean)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make(name: str, network, attack: AttackConfig, **kwargs) -> Trainer:
    """The registered method `name` wrapped around `network` (any keras.Model mapping [0, 1] images to logits):
    a keras.Model to `compile` and `fit`. `attack` is in fractions of [0, 1]; `kwargs` are the method's own
    option fields (e.g. `replays=4` for free, `labels="bat"` for pgd) and the common keywords (weight_decay,
    weight_decay_scope, smoothing, distillation, label_adversary, seed, eps_warmup_updates, batch_size).

        trainer = tfadv.training.make("trades", network, AttackConfig(eps=8/255, step_size=2/255, steps=10), beta=6.0)
    """
    method = registry.lookup(name) if isinstance(name, str) else None
    if method is None:
        raise ValueError(f"name: unknown training method {name!r}; registered: {', '.join(registry.names())}")
    fields = {field.name for field in dataclasses.fields(method.options)}
    try:
        options = method.options(**{key: kwargs.pop(key) for key in list(kwargs) if key in fields})
    except registry.OptionError as error:  # it names the command-line flag (--free_replays); here: the argument
        argument = method.flags().get(error.flag, error.flag)
        raise ValueError(f"{argument}: {str(error).split(': ', 1)[1]}") from None
    return method.trainer(network, attack, options, **kwargs)

__all__ = ["AttackConfig", "BAT_ATTACKS", "BAT_LABELS", "BATTrainer", "BN_MODES", "CLEAN_DEFENSES", "DEFENSES",
           "Distillation", "FGSMRSTrainer", "FreeTrainer", "LabelAdversary", "NaturalTrainer", "PGDTrainer",
           "SSATTrainer", "SmoothingConfig", "TRADESTrainer", "TRAINERS", "Trainer", "WEIGHT_DECAY_SCOPES",
           "make", "registry"]
