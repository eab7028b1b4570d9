"""scripts/fading_gaussian.py's option checks and output files around `tfadv.fading_gaussian.experiment` (paper
003 §3.1, Fig. 1-2): fading_gaussian.json and fading_gaussian.png in an output directory, and the printed table."""

import json
import os

from tfadv.errors import UsageError

MINIMUMS = (("d", 1), ("num_train", 1), ("num_test", 1), ("num_eps", 2), ("steps", 1))


def parse_alphas(values):
    """--alphas' strings -> ALS masses, each in [0, 0.5)."""
    try:
        alphas = [float(value) for value in values]
    except ValueError:
        raise UsageError(f"--alphas: expected comma-separated numbers, got {','.join(values)}") from None
    if not alphas or any(not 0.0 <= alpha < 0.5 for alpha in alphas):
        raise UsageError(f"--alphas: each ALS mass must be in [0, 0.5), got {','.join(values) or 'nothing'}")
    return alphas


def check_options(options):
    """Refuses (UsageError naming the flag) a count below its minimum, a non-positive eps_max or learning_rate,
    an unknown optimizer; `options` holds the experiment's keywords as the script's flags name them."""
    from tfadv import fading_gaussian

    for name, minimum in MINIMUMS:
        if options[name] < minimum:
            raise UsageError(f"--{name}: must be at least {minimum}, got {options[name]}")
    for name in ("eps_max", "learning_rate"):
        if not options[name] > 0:
            raise UsageError(f"--{name}: must be positive, got {options[name]}")
    if options["optimizer"] not in fading_gaussian.OPTIMIZERS:
        raise UsageError(f"--optimizer: must be one of {', '.join(fading_gaussian.OPTIMIZERS)}, "
                         f"got {options['optimizer']}")


def write(output_dir, overwrite, alphas, **options):
    """Checks the options, runs the experiment, writes fading_gaussian.json and .png into `output_dir` (refusing
    to replace an existing JSON without `overwrite`) and prints the table. `alphas`: --alphas' strings."""
    from tfadv import fading_gaussian

    alphas = parse_alphas(alphas)
    check_options(options)
    json_path = os.path.join(output_dir, "fading_gaussian.json")
    if os.path.exists(json_path) and not overwrite:
        raise UsageError(f"--output_dir={output_dir} already holds fading_gaussian.json; pass --overwrite or "
                         "choose another directory")
    result = fading_gaussian.experiment(
        dimension=options["d"], alphas=alphas, num_train=options["num_train"], num_test=options["num_test"],
        eps_max=options["eps_max"], num_eps=options["num_eps"], steps=options["steps"],
        learning_rate=options["learning_rate"], optimizer=options["optimizer"], seed=options["seed"])
    os.makedirs(output_dir, exist_ok=True)
    with open(json_path, "w") as handle:
        json.dump(result, handle, indent=1)
    fading_gaussian.plot(result, os.path.join(output_dir, "fading_gaussian.png"))
    print(fading_gaussian.format_table(result))
    print(f"wrote {json_path} and fading_gaussian.png")
