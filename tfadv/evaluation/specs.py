"""The attack registry: every attack family is one entry (its metadata and how to run it), and the names users
type are parsed by one grammar over the registry. Suites and AutoAttack are lists of such names.

A name is `[transfer_]FAMILY[STEPS][_NORM][_rRESTARTS][_eotDRAWS][_<option>N...]`, e.g. `pgd20`, `pgd20_l2`,
`pgd50_r5`, `apgd_ce_eot20`, `square1000`, `cwl2_200_b5`, `transfer_pgd20`. A family whose name ends in a digit
(`cwl2`) writes its step count after an underscore. Defaults are left out of the canonical name (`pgd20_linf`,
`pgd20_r1` and `pgd20` are one attack, `pgd20`), and the Evaluator salts each attack's random numbers by that
canonical name: equal attacks, equal numbers.

The registry is filled by the family modules of `tfadv.evaluation.families` (one module per family or group of
families: its adapter from an AttackSpec to its algorithm and its `register_attack(...)` call), which importing
`tfadv.evaluation` discovers; this module holds the registry, the grammar, the defaults of the built-in families
(the AutoAttack settings) and the suites, and imports no family. Adding an attack is one new module there; the
parser, the runner, the audit and the reports read the entry's metadata and never the name.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf

KINDS = ("gradient", "score_based", "minimum_norm")
NORM_NAMES = ("linf", "l2", "l1")
# the step counts the built-in families' names may omit (AutoAttack-standard's settings; C&W's are Carlini &
# Wagner's), read by their modules in tfadv.evaluation.families
APGD_DEFAULT_STEPS = 100
FAB_DEFAULT_STEPS = 100
SQUARE_DEFAULT_QUERIES = 5000
DEEPFOOL_DEFAULT_STEPS = 50
CWL2_DEFAULT_STEPS = 1000
CWL2_DEFAULT_SEARCH = 9


@dataclasses.dataclass(frozen=True)
class NameOption:
    """A family's own `_<letter>N` name option (C&W's `_b5`), stored in the AttackSpec field `field` and
    recorded in reports as `metadata_key`."""

    letter: str
    field: str
    default: int
    metadata_key: str


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    """One attack family of the registry.

    `run(spec, logits_fn, x, y, keys)` returns adversarial images for the parsed `spec` (an AttackSpec).
    `kind`: how the attack uses the model (gradient, score_based or minimum_norm; what the audit compares);
    `loss`: the objective it maximises; `default_steps`: the step count a name may omit (None: a name must give
    one); `step_count`: whether a name may give one at all; `norms`: the threat models it supports, the first
    being its default; `targeted`; `min_classes`: the fewest classes its loss works with; `eot`: whether it
    averages gradients over EOT draws (`_eotN`); `restarts`: whether it takes `_rN`; `options`: its own name
    options; `step_size(radius, norm, steps, given)`: the step size it is recorded with (default: the radius);
    `spec_kind`: the AttackSpec.kind tag (defaults to the family; the built-in PGD and APGD families share one);
    `example`: the fields of a short run of the family (`build_spec` keywords: steps, restarts, eot_iter, its
    options' fields; empty: its defaults), which the tests parametrized over the registry run it with, in each of
    its norms (`example_spec`).
    """

    family: str
    run: Callable
    kind: str
    loss: str
    default_steps: Optional[int] = None
    step_count: bool = True
    norms: Tuple[str, ...] = NORM_NAMES
    targeted: bool = False
    min_classes: int = 2
    eot: bool = False
    restarts: bool = True
    options: Tuple[NameOption, ...] = ()
    step_size: Optional[Callable] = None
    spec_kind: Optional[str] = None
    description: str = ""
    example: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def default_norm(self) -> str:
        return self.norms[0]

    @property
    def minimum_norm(self) -> bool:
        """A minimum-norm attack, scored at the budget (broken when the perturbation it finds is within eps)."""
        return self.kind == "minimum_norm"

    @property
    def tag(self) -> str:
        return self.spec_kind or self.family

    def metadata(self) -> dict:
        """The entry's metadata as JSON (for documentation and `registered_attacks`)."""
        return {"family": self.family, "kind": self.kind, "loss": self.loss, "default_steps": self.default_steps,
                "targeted": self.targeted, "minimum_norm": self.minimum_norm, "min_classes": self.min_classes,
                "eot": self.eot, "norms": list(self.norms), "restarts": self.restarts,
                "options": [o.letter for o in self.options]}


@dataclasses.dataclass(frozen=True)
class AttackPrefix:
    """A name prefix that modifies any attack: `transfer_<attack>` crafts on a source model's logits (the
    spec's `source`) and is evaluated on the target; recorded with kind `kind`."""

    name: str
    kind: str
    needs: str


TRANSFER = AttackPrefix("transfer", "transfer", "a source model (--source_model)")
_REGISTRY: Dict[str, AttackEntry] = {}


def register_attack(family: str, run: Callable, *, kind: str, loss: str, default_steps: Optional[int] = None,
                    step_count: bool = True, norms: Sequence[str] = NORM_NAMES, targeted: bool = False,
                    min_classes: int = 2, eot: bool = False, restarts: bool = True,
                    options: Sequence[NameOption] = (), step_size: Optional[Callable] = None,
                    spec_kind: Optional[str] = None, description: str = "",
                    example: Optional[Mapping[str, int]] = None) -> AttackEntry:
    """Registers an attack family (see AttackEntry for the fields) and returns its entry. The family name is
    lower-case letters, digits and underscores, starts with a letter, and is not taken; `example` names only
    fields the family's names can set, with positive integers."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", family) or family.endswith("_") or family.startswith(TRANSFER.name + "_"):
        raise ValueError(f"attack family {family!r}: use lower-case letters, digits and underscores")
    if family in _REGISTRY:
        raise ValueError(f"attack family {family!r} is already registered")
    if kind not in KINDS:
        raise ValueError(f"attack family {family!r}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    bad = [n for n in norms if n not in NORM_NAMES]
    if bad or not norms:
        raise ValueError(f"attack family {family!r}: norms must be among {', '.join(NORM_NAMES)}, got {list(norms)}")
    if not step_count and default_steps is None:
        raise ValueError(f"attack family {family!r}: a family without a step count in its name needs default_steps")
    letters = [o.letter for o in options]
    if any(letter in ("r", "eot") or not re.fullmatch(r"[a-z]+", letter) for letter in letters) or \
            len(set(letters)) != len(letters):
        raise ValueError(f"attack family {family!r}: options must be distinct lower-case letters other than r, eot")
    example = dict(example or {})
    settable = {"steps": step_count, "restarts": restarts, "eot_iter": eot, **{o.field: True for o in options}}
    bad = {k: v for k, v in example.items() if not settable.get(k) or isinstance(v, bool) or not isinstance(v, int)
           or v < 1}
    if bad:
        raise ValueError(f"attack family {family!r}: example must set positive integers of "
                         f"{', '.join(k for k, ok in settable.items() if ok)}, got {bad}")
    if default_steps is None and "steps" not in example:
        raise ValueError(f"attack family {family!r}: its names need a step count, so its example needs steps")
    entry = AttackEntry(family, run, kind, loss, default_steps, step_count, tuple(norms), targeted, min_classes, eot,
                        restarts, tuple(options), step_size, spec_kind, description, example)
    _REGISTRY[family] = entry
    return entry


def unregister_attack(family: str) -> AttackEntry:
    """Removes a family from the registry (e.g. a test's own attack) and returns its entry."""
    try:
        return _REGISTRY.pop(family)
    except KeyError:
        raise ValueError(f"attack family {family!r} is not registered") from None


def attack_entry(family: str) -> AttackEntry:
    try:
        return _REGISTRY[family]
    except KeyError:
        raise ValueError(f"unknown attack family {family!r}; registered: {', '.join(_REGISTRY)}") from None


def registered_attacks() -> Dict[str, AttackEntry]:
    """{family: entry}, in registration order."""
    return dict(_REGISTRY)


def _entry_of(kind: str, loss: str) -> AttackEntry:
    """The entry of an AttackSpec's (kind tag, loss)."""
    tagged = [e for e in _REGISTRY.values() if e.tag == kind]
    for entry in tagged:
        if entry.loss == loss:
            return entry
    if len(tagged) == 1:
        return tagged[0]
    raise ValueError(f"no registered attack family for kind {kind!r} with loss {loss!r}")


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One named attack. eps / step_size are fractions of the pixel range.

    `group`: attacks of one group (e.g. "autoattack") run in order, each only on the examples every earlier
    attack of the group left robust; their robust accuracy is cumulative over the group.
    """

    name: str
    kind: str  # the registry entry's tag: fgsm, pgd, apgd, apgd_t, deepfool, square, fab_t, cwl2, ...
    loss: str
    steps: int
    norm: str
    restarts: int
    eps: float
    step_size: float
    search_steps: int = 0  # C&W binary-search steps
    group: Optional[str] = None
    # Transfer attacks craft on this source model's logits and are evaluated on the target.
    source: Optional[Callable] = dataclasses.field(default=None, compare=False, repr=False)
    # APGD kinds: gradients averaged over this many forward passes per step (EOT, for randomised models)
    eot_iter: int = 1

    @property
    def entry(self) -> AttackEntry:
        """The registry entry this attack belongs to."""
        return _entry_of(self.kind, self.loss)

    @property
    def family(self) -> str:
        """The attack's name stem: fgsm, pgd / cw / dlr (PGD on CE / CW margin / DLR), apgd_ce, apgd_dlr, ..."""
        return self.entry.family

    @property
    def canonical_name(self) -> str:
        """The one name of this attack (`parse_attack` names every spec so): defaults left out."""
        entry = self.entry
        inner = canonical_attack_name(entry.family, self.steps, self.norm, self.restarts, eot_iter=self.eot_iter,
                                      **{o.field: getattr(self, o.field) for o in entry.options})
        return f"{TRANSFER.name}_{inner}" if self.source is not None else inner

    @property
    def category(self) -> str:
        """gradient, score_based, minimum_norm or transfer."""
        return TRANSFER.kind if self.source is not None else self.entry.kind

    @property
    def targeted(self) -> bool:
        return self.entry.targeted

    @property
    def supports_eot(self) -> bool:
        return self.entry.eot

    @property
    def min_classes(self) -> int:
        return self.entry.min_classes

    @property
    def compiled(self) -> bool:
        # every attack is a graph (DeepFool's per-example stopping is a tf.while_loop since 2026-11-27)
        return True

    def metadata(self) -> dict:
        """What the runner records per attack in a report (the audit classifies attacks by this alone)."""
        entry = self.entry
        meta = {"attack": entry.family, "kind": self.category, "norm": self.norm, "loss": self.loss, "eps": self.eps,
                "steps": self.steps, "step_size": self.step_size, "restarts": self.restarts,
                "targeted": entry.targeted, "eot_iter": self.eot_iter}
        for option in entry.options:
            meta[option.metadata_key] = getattr(self, option.field)
        return meta

    def run(self, logits_fn, x, y, keys=None):
        """Adversarial images for (x, y); `keys` ([B] int64, `tfadv.attacks.rng.example_keys`) make the random
        choices per example, so that results do not depend on batching."""
        if self.source is not None:
            logits_fn = self.source
        entry = self.entry
        if self.eot_iter != 1 and not entry.eot:
            raise ValueError(f"attack {self.name!r}: eot_iter applies to {_eot_attacks()} only")
        return entry.run(self, logits_fn, x, y, keys)


AT_BUDGET_TOLERANCE = 1e-6  # relative slack of a minimum-norm attack's own norm at the budget (`at_budget`)


def at_budget(x, x_adv, norms, eps: float, tolerance: float = AT_BUDGET_TOLERANCE):
    """A minimum-norm attack scored at a budget: x_adv where its norm is within eps, else the clean x."""
    within = norms <= eps * (1.0 + tolerance)
    return tf.where(tf.reshape(within, [-1] + [1] * (len(x.shape) - 1)), x_adv, x)


def _eot_families():
    return [e.family for e in _REGISTRY.values() if e.eot]


def _eot_attacks() -> str:
    return f"the attacks that average gradients over EOT draws (APGD: {', '.join(_eot_families())})"


def canonical_attack_name(family: str, steps: Optional[int] = None, norm: Optional[str] = None, restarts: int = 1,
                          search_steps: Optional[int] = None, eot_iter: int = 1, **options) -> str:
    """The one name of an attack, as `parse_attack` gives it: the registered `family` with its step count
    unless it is the family's default, then `_<norm>` unless it is the family's default norm (l-inf, l2 for
    cwl2), `_rN` for N > 1 restarts, `_eotN` for N > 1 EOT draws and the family's own options (`_bN`) unless
    at their defaults. E.g. ("pgd", 20, "linf") -> "pgd20", ("apgd_ce", 100, "l2") -> "apgd_ce_l2",
    ("cwl2", 1000, "l2", 1, 5) -> "cwl2_b5". Equal attacks get equal names, and so equal random numbers (the
    Evaluator salts by this name)."""
    entry = attack_entry(family)
    if search_steps is not None:
        options["search_steps"] = search_steps
    norm = norm or entry.default_norm
    if not entry.step_count or (steps is not None and entry.default_steps == int(steps)):
        steps = None
    if steps is None and entry.default_steps is None:
        raise ValueError(f"{family} needs a step count")
    name = family
    if steps is not None:
        name += f"_{int(steps)}" if family[-1].isdigit() else str(int(steps))
    name += "" if norm == entry.default_norm else f"_{norm}"
    name += f"_r{int(restarts)}" if restarts and int(restarts) != 1 else ""
    name += f"_eot{int(eot_iter)}" if eot_iter and int(eot_iter) != 1 else ""
    for option in entry.options:
        value = options.get(option.field) or option.default
        name += f"_{option.letter}{int(value)}" if int(value) != option.default else ""
    return name


_TOKEN = re.compile(r"([a-z]+?)(\d*)")


def _split(entry: AttackEntry, rest: str) -> Optional[dict]:
    """The parts of a name after `entry.family` by the one grammar, or None when they do not fit it:
    {steps, norm, restarts, eot, options: {letter: value}} (None where absent; values as strings)."""
    parts = {"steps": None, "norm": None, "restarts": None, "eot": None, "options": {}}
    digits = re.match(r"_(\d+)(?=_|$)" if entry.family[-1].isdigit() else r"(\d+)", rest)
    if digits:
        parts["steps"], rest = digits.group(1), rest[digits.end():]
    if rest and not rest.startswith("_"):
        return None
    stages = ["norm", "r", "eot"] + [o.letter for o in entry.options]
    reached = -1
    for token in rest.split("_")[1:]:
        if token in NORM_NAMES:
            stage, value = "norm", token
        else:
            match = _TOKEN.fullmatch(token)
            if not match or not match.group(2) or match.group(1) not in stages[1:]:
                return None
            stage, value = match.group(1), match.group(2)
        if stages.index(stage) <= reached:
            return None
        reached = stages.index(stage)
        key = {"norm": "norm", "r": "restarts", "eot": "eot"}.get(stage)
        if key:
            parts[key] = value
        else:
            parts["options"][stage] = value
    return parts


def _unknown(name: str) -> ValueError:
    families = ", ".join(e.family + ("N" if e.default_steps is None else "") for e in _REGISTRY.values())
    return ValueError(f"unknown attack {name!r}; use {families}, with optional _l2, _l1 and _rN (and _eotN for "
                      f"{', '.join(_eot_families())}), or {TRANSFER.name}_<attack>; e.g. fgsm,pgd20,cw20,pgd20_l2")


def _match(name: str):
    """(entry, parts) of the longest registered family that `name` starts with and whose grammar fits."""
    for family in sorted(_REGISTRY, key=len, reverse=True):
        if name.startswith(family):
            parts = _split(_REGISTRY[family], name[len(family):])
            if parts is not None:
                return _REGISTRY[family], parts
    raise _unknown(name)


def _positive(name, what, value):
    if int(value) < 1:
        raise ValueError(f"attack {name!r}: {what} must be positive")
    return int(value)


def _parse(name: str, eps: Dict[str, float], step_size: Optional[float],
           source: Optional[Callable] = None) -> AttackSpec:
    entry, parts = _match(name)
    family = entry.family
    if parts["eot"] is not None and not entry.eot:
        raise ValueError(f"attack {name!r}: _eotN applies to {_eot_attacks()} only")
    if parts["steps"] is not None and not entry.step_count:
        raise ValueError(f"attack {name!r}: {family} takes no step count")
    if parts["restarts"] is not None and not entry.restarts:
        raise ValueError(f"attack {name!r}: {family} takes no restarts" +
                         (" (its number is a query count)" if entry.kind == "score_based" else ""))
    norm = parts["norm"] or entry.default_norm
    if norm not in entry.norms:
        raise ValueError(f"attack {name!r}: {family} supports {' and '.join(entry.norms)}")
    if parts["steps"] is None and entry.default_steps is None:
        raise ValueError(f"attack {name!r} needs a step count, e.g. {family}20")
    steps = _positive(name, "steps", parts["steps"]) if parts["steps"] is not None else entry.default_steps
    restarts = _positive(name, "restarts", parts["restarts"]) if parts["restarts"] is not None else 1
    eot_iter = _positive(name, "the EOT count", parts["eot"]) if parts["eot"] is not None else 1
    options = {o.field: _positive(name, f"_{o.letter}", parts["options"].get(o.letter, o.default))
               for o in entry.options}
    return build_spec(family, eps, steps=steps, norm=norm, restarts=restarts, eot_iter=eot_iter, step_size=step_size,
                      source=source, **options)


def build_spec(family: str, eps: Dict[str, float], *, steps: Optional[int] = None, norm: Optional[str] = None,
               restarts: int = 1, eot_iter: int = 1, step_size: Optional[float] = None,
               source: Optional[Callable] = None, group: Optional[str] = None, **options) -> AttackSpec:
    """The AttackSpec of a registered `family` built from its fields, no name parsed: what a name leaving out
    the same parts gives (`steps` / `norm` / options: the family's defaults when None or absent; `step_size`: the
    family's rule; `source`: a transfer attack; `group`: a cascade), named canonically. The fields are taken as
    given: a name's checks (`parse_attack`) are for what a user typed."""
    entry = attack_entry(family)
    norm = norm or entry.default_norm
    steps = entry.default_steps if steps is None else int(steps)
    values = {o.field: int(options.get(o.field) or o.default) for o in entry.options}
    radius = eps[norm]
    size = entry.step_size(radius, norm, steps, step_size) if entry.step_size else radius
    spec = AttackSpec("", entry.tag, entry.loss, steps, norm, int(restarts), radius, size, group=group, source=source,
                      eot_iter=int(eot_iter), **values)
    return dataclasses.replace(spec, name=spec.canonical_name)


def example_spec(family: str, eps: Dict[str, float], norm: Optional[str] = None) -> AttackSpec:
    """The AttackSpec of the registered family's `example` (a short run) in `norm` (default: its default norm),
    named canonically (e.g. `square20_l2`, `cwl2_10_b2`)."""
    return build_spec(family, eps, norm=norm, **attack_entry(family).example)


def parse_attack(name: str, eps: Dict[str, float], step_size: Optional[float] = None,
                 source: Optional[Callable] = None) -> AttackSpec:
    """An AttackSpec from a name of the registry's grammar (module docstring): `fgsm`, `pgd20`, `pgd100`, `cw20`
    (PGD on the CW margin), `dlr50`, `apgd_ce`, `apgd_dlr`, `apgd_t` (APGD-T on the targeted DLR loss over the
    top-9 wrong classes; 100 steps unless a count follows, e.g. `apgd_ce50`), `fab_t` (FAB-T, 9 targets x 100
    steps), `square` (Square, an initial query + 5000 proposals unless a count follows, e.g. `square1000`),
    `deepfool`, `cwl2`
    (Carlini-Wagner L2: 9 binary-search steps x 1000 Adam steps; `cwl2_200_b5` = 200 steps x 5 searches), with
    optional `_l2` / `_l1` norm and `_rN` restarts, e.g. `pgd20_l2`, `pgd50_r5`, and for APGD `_eotN`
    (gradients averaged over N forward passes, for randomised models); `transfer_<attack>` crafts on `source`
    (a source model's logits_fn) and is evaluated on the target. `eps` maps norm -> radius; PGD's default step
    size is eps/4 for l-inf (2/255 at 8/255) and 2.5 eps / steps for l2 and l1 (Madry et al.). Minimum-norm
    attacks (deepfool, fab_t, cwl2) count an example as broken when the perturbation they find is within eps.

    The spec's name is canonical (`canonical_attack_name`): `pgd20_linf`, `pgd20_r1` and `pgd20` are one
    attack named `pgd20`, with the same random numbers.
    """
    name = name.strip()
    prefix = TRANSFER.name + "_"
    if name.startswith(prefix):
        if source is None:
            raise ValueError(f"attack {name!r} needs {TRANSFER.needs}")
        if name[len(prefix):].startswith(prefix):
            raise _unknown(name[len(prefix):])
        return _parse(name[len(prefix):], eps, step_size, source)
    return _parse(name, eps, step_size)


def with_eot(spec: AttackSpec, eot_iter: int) -> AttackSpec:
    """An EOT-capable spec (APGD) with `eot_iter` EOT draws per step, renamed canonically (`apgd_ce` ->
    `apgd_ce_eot20`)."""
    if not spec.supports_eot:
        raise ValueError(f"attack {spec.name!r}: eot_iter applies to {_eot_attacks()} only")
    if int(eot_iter) < 1:
        raise ValueError(f"eot_iter must be positive, got {eot_iter}")
    changed = dataclasses.replace(spec, eot_iter=int(eot_iter))
    return dataclasses.replace(changed, name=changed.canonical_name)


def check_classes(specs: Sequence[AttackSpec], num_classes: int):
    """Raises ValueError naming the attacks that need more classes than the model has."""
    bad = [f"{s.name} (needs >= {s.min_classes})" for s in specs if num_classes < s.min_classes]
    if bad:
        raise ValueError(f"the model has {num_classes} classes, too few for: {', '.join(bad)}; the DLR loss needs 3 "
                         f"classes and its targeted form (APGD-T) 4")


# -- suites ----------------------------------------------------------------------------------------------------------

# AutoAttack-standard (Croce & Hein, 2020): each attack on the points still robust, from the clean input.
AUTOATTACK = ("apgd_ce", "apgd_t", "fab_t", "square")
# AutoAttack's version='rand' for randomised defenses: APGD-CE then APGD-DLR, 1 restart each, the gradient
# averaged over 20 EOT draws per step (fra31/auto-attack set_version('rand')).
AUTOATTACK_RAND = ("apgd_ce", "apgd_dlr")
AUTOATTACK_RAND_EOT = 20
AUTOATTACK_VERSIONS = {"standard": (AUTOATTACK, 1, "autoattack"), "rand": (AUTOATTACK_RAND, AUTOATTACK_RAND_EOT,
                                                                          "autoattack_rand")}

# A suite is a list of attack names, or (version, norm) of an AutoAttack cascade (`autoattack_specs`).
SUITES = {
    "standard": ["fgsm", "pgd20", "pgd100", "cw20", "cw100", "pgd20_l2"],
    # full = standard + C&W, DeepFool, restarts, the sweeps (and transfer attacks when --source_model is given)
    "full": ["fgsm", "pgd20", "pgd100", "cw20", "cw100", "dlr100", "pgd50_r5", "apgd_ce", "apgd_t", "pgd20_l2",
             "pgd20_l1", "cwl2", "deepfool_l2", "deepfool_linf"],
    "autoattack": ("standard", "linf"),
    "autoattack_l2": ("standard", "l2"),
    "autoattack_rand": ("rand", "linf"),
    "autoattack_rand_l2": ("rand", "l2"),
}


def autoattack_specs(eps: Dict[str, float], norm: str = "linf", version: str = "standard") -> list:
    """AutoAttack as one cascade, each attack from the clean input on the points still robust.

    version "standard": APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 proposals after an initial
    query), group
    "autoattack"; "rand" (for randomised defenses): APGD-CE and APGD-DLR, 100 steps, 1 restart, 20 EOT draws
    per step, group "autoattack_rand". Other norms than l-inf add `_<norm>` to the group.
    """
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; valid: {', '.join(AUTOATTACK_VERSIONS)}")
    families, eot_iter, group = AUTOATTACK_VERSIONS[version]
    group += "" if norm == "linf" else f"_{norm}"
    return [build_spec(family, eps, norm=norm, eot_iter=eot_iter, group=group) for family in families]


def suite_specs(suite: str, eps: Dict[str, float], step_size: Optional[float] = None,
                source: Optional[Callable] = None) -> list:
    """The AttackSpecs of one named suite (SUITES)."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    if isinstance(SUITES[suite], list):
        return [parse_attack(name, eps, step_size, source) for name in SUITES[suite]]
    version, norm = SUITES[suite]
    return autoattack_specs(eps, norm, version)
