"""The attack families: one module per family (or group of families sharing one adapter), each holding the
adapter from a parsed AttackSpec to its algorithm and its `specs.register_attack(...)` call. Nothing else lists
attacks: the name grammar, the runner, the suites, the audit, the Co-SSAT protocols and the tests parametrized
over the registry read the entries.

A new attack is one new module here, for example `tfadv/evaluation/families/my_attack.py`:

    from tfadv.evaluation import specs

    def my_attack(logits_fn, x, y, *, eps, norm, steps, keys):   # the algorithm (or import it from tfadv.attacks)
        ...

    def _run(spec, logits_fn, x, y, keys):                      # spec: the parsed AttackSpec (eps, norm, steps, ...)
        return my_attack(logits_fn, x, y, eps=spec.eps, norm=spec.norm, steps=spec.steps, keys=keys)

    specs.register_attack("my_attack", _run, kind="gradient", loss="ce", default_steps=100, norms=("linf", "l2"),
                          example={"steps": 5}, description="...")

`import_family_modules()` (run when `tfadv.evaluation` is imported) imports every module on this package's path,
which registers its families; `scripts/evaluate.py --attacks=my_attack20_l2` then runs it, and the tests
parametrized over the registry (tests/test_attack_families.py, test_attack_xla.py) run it with its `example`
(tests/test_one_file_attack.py does all this with a one-file copy of FAB-T). An attack algorithm that other code
reuses (the training attacks, another family) belongs in `tfadv/attacks/`, which never imports
`tfadv.evaluation`; its family module here imports it.

A family module is imported while `tfadv.evaluation` itself is being imported: import `specs` (and
`tfadv.attacks`) at its top, not `Evaluator` or the API (not loaded yet), and know that a module that fails to
import (a name already registered, a syntax error) makes `import tfadv.evaluation`, and so train.py and
evaluate.py, fail with its error.
"""

# The display order of the built-in modules: the registration order of their families, and so the order of
# every listing of the registry (names in messages, `registered_attacks()`). Any other module on the path is
# imported after them, in name order.
BUILT_IN_MODULES = ("fgsm", "pgd", "apgd", "deepfool", "square", "fab", "cwl2")


def import_family_modules():
    """THE discovery of attack families: imports every module on this package's path (`__path__`), which
    registers its families; a module already imported is not imported again. Returns the module names, in the
    order imported."""
    import importlib
    import pkgutil

    importlib.invalidate_caches()  # a module added while the process runs is found
    names = sorted({m.name for m in pkgutil.iter_modules(__path__)},
                   key=lambda n: (BUILT_IN_MODULES.index(n) if n in BUILT_IN_MODULES else len(BUILT_IN_MODULES), n))
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


import_family_modules()
