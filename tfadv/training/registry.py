"""The registry of training methods: a method is one module that defines its options, its Keras `Model`
subclass (the trainer, with its own `train_step`) and registers both here under its name, with what it
supports. Nothing else lists methods: the run config, the flags and the scripts read this registry.

    @dataclasses.dataclass(frozen=True)
    class Options:            # the method's own hyperparameters; flag = "<flag_prefix>_<field>"
        replays: int = option(8, "replays m of each minibatch")

    register(Method("free", FreeTrainer, Options, flag_prefix="free",
                    supports={"label_smoothing", "logit_squeeze", "distillation"}))
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, FrozenSet, Mapping, Optional, Tuple

# What a method can combine with (refused with both flags named when a method does not declare it):
#   label_smoothing     --ls_method (targets of the outer loss)
#   logit_squeeze       --squeeze_beta
#   distillation        --kd_adv_teacher / --kd_std_teacher
#   adversarial_labels  the --bat_beta/--bat_gamma/--bat_eps_y/--bat_top_k section (BAT; PGD with --pgd_labels=bat)
FEATURES = ("label_smoothing", "logit_squeeze", "distillation", "adversarial_labels")
NORMS = ("linf", "l2", "l1")
# the run config's training-attack flags a method may read besides --eps and --norm (`Method.attack_flags`)
ATTACK_FLAGS = ("step_size", "attack_steps")


class OptionError(ValueError):
    """A bad method option; `flag` is the command-line name (what the user typed)."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


def option(default, help: str, **metadata):
    """A dataclass field of a method's (or a config section's) options, with its --help text."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """A method without hyperparameters of its own."""

    def validate(self, run) -> None:
        return None


@dataclasses.dataclass(frozen=True)
class Method:
    """A training method: `trainer(network, attack, options=..., **common)` is its Keras Model subclass."""

    name: str
    trainer: type
    options: type = NoOptions
    flag_prefix: str = ""
    supports: FrozenSet[str] = frozenset()
    norms: Tuple[str, ...] = NORMS
    clean: bool = False  # trains on clean inputs only (its eps is the validation radius and may be 0)
    description: str = ""
    # features the method cannot run without (label_smoothing needs --ls_method, logit_squeeze --squeeze_beta)
    requires: FrozenSet[str] = frozenset()
    # optimizer updates per minibatch (Free-AT and SSAT replay each minibatch m times)
    updates_per_batch: Callable[[object], int] = lambda options: 1
    # the training attack's step size in pixel levels from (options, --eps, --step_size), all in levels
    # (BAT: --bat_step_size or eps; SSAT: --ssat_step_size or eps / m); budget() converts it
    step_levels: Callable[[object, float, float], float] = lambda options, eps, step_size: step_size
    # the flag that sets that step: "step_size" (--step_size, the PGD-type rule) or the method's own option
    # (BAT --bat_step_size, SSAT --ssat_step_size, ...); a typed --step_size the rule ignores is refused
    step_flag: str = "step_size"
    # BatchNorm during the training attack in the method's reference code (--attack_bn_mode=auto): train for
    # Madry / Rice PGD-AT and Wong's FGSM-RS; eval for TRADES (model.eval()) and BAT (is_train False). Free-AT and
    # SSAT take their input gradient from the training pass itself (always train mode).
    attack_bn_mode: str = "eval"
    # whether --attack_bn_mode changes anything (False: no separate attack pass, or no attack at all)
    attack_bn_applies: bool = True
    # the run config's training-attack flags besides --eps and --norm that the method reads: "step_size" and
    # "attack_steps" for a k-step attack of --step_size (pgd, trades). None (the default) derives them: both when
    # the method attacks (not `clean`) with `step_flag` "step_size"; none when it has a step flag of its own
    # (one-step and replay methods: bat, fgsm_rs, free, ssat) or trains on clean inputs. A flag typed for a
    # method that does not read it is refused (from a flagfile it is recorded, unused).
    attack_flags: Optional[FrozenSet[str]] = None
    # {flag: why} of the method's own options that its other options leave unread (SSAT's --ssat_lambda0 with
    # --nossat_adaptive); refused when typed, as the run config's unused flags are (`TrainConfig.unused_flags`)
    unused_options: Callable[[object], Mapping[str, str]] = lambda options: {}
    # whether the training attack starts at a random point of the eps-ball (BAT: --bat_random_start)
    random_start: Callable[[object], bool] = lambda options: True
    # run-config flags besides --defense of a short example run of the method (the ones a feature it `requires`
    # needs: label_smoothing --ls_method); the parity harness (tfadv/parity.py) and the tests parametrized over
    # this registry train every method with them
    example: Mapping[str, object] = dataclasses.field(default_factory=dict, compare=False)
    # the method's loss L (before distillation and logit squeezing) in float64 numpy, for the tests parametrized
    # over this registry (tests/test_outer_loss.py checks each weight update against it, and the composition of
    # teachers, squeezing and --ls_method around it):
    #     reference(ops, options, targets, logits, distill_logits) -> L
    # `logits` are those of the images the outer loss is given (`inputs`), `distill_logits` those of its
    # `distill_on` images (TRADES' adversarial pair; else the same logits), `targets` the outer loss's targets
    # (one-hot or --ls_method's) and `ops` the test's float64 per-example functions ce(targets, logits),
    # kl(logits_p, logits_q), log_softmax(logits). None: a hand-written scenario in that test covers it.
    reference: Optional[Callable] = None

    def __post_init__(self):
        unknown = set(self.supports) - set(FEATURES)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown features {sorted(unknown)}; known: {FEATURES}")
        object.__setattr__(self, "supports", frozenset(self.supports))
        object.__setattr__(self, "requires", frozenset(self.requires))
        object.__setattr__(self, "example", dict(self.example))
        if self.attack_flags is None:
            pgd_type = not self.clean and self.step_flag == "step_size"
            object.__setattr__(self, "attack_flags", frozenset({"step_size", "attack_steps"} if pgd_type else ()))
        unknown = set(self.attack_flags) - set(ATTACK_FLAGS)
        if unknown:
            raise ValueError(f"method {self.name!r}: unknown attack flags {sorted(unknown)}; known: {ATTACK_FLAGS}")
        object.__setattr__(self, "attack_flags", frozenset(self.attack_flags))

    def flag(self, field: str) -> str:
        """The command-line name of one of this method's option fields."""
        return f"{self.flag_prefix}_{field}" if self.flag_prefix else field

    def flags(self) -> Dict[str, str]:
        """{flag name: option field name}."""
        return {self.flag(f.name): f.name for f in dataclasses.fields(self.options)}


_METHODS: Dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Adds a method (a test may register a toy one; `replace` re-registers a name)."""
    if method.name in _METHODS and not replace:
        raise ValueError(f"a training method named {method.name!r} is already registered")
    taken = {flag: other.name for other in _METHODS.values() if other.name != method.name for flag in other.flags()}
    clashes = sorted(set(method.flags()) & set(taken))
    if clashes:
        raise ValueError(f"method {method.name!r}: flags {clashes} are already used by {[taken[c] for c in clashes]}")
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def get(name: str) -> Method:
    """The registered method `name`; KeyError naming the registered ones if there is none."""
    if name not in _METHODS:
        raise KeyError(f"unknown training method {name!r}; registered: {', '.join(_METHODS)}")
    return _METHODS[name]


def names() -> Tuple[str, ...]:
    return tuple(_METHODS)


def methods() -> Tuple[Method, ...]:
    return tuple(_METHODS.values())


def lookup(name: str) -> Optional[Method]:
    return _METHODS.get(name)
