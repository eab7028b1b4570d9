"""Steady-state seconds per training step of each method, side by side in one process (scripts/benchmark.py).

Each row is a method name with its attack steps appended (`pgd7`) and a precision: float32 or mixed bfloat16
(`*_bf16`). A row's ratio is against the natural step of the same precision, beside its arithmetic limit (an
input-only backward costs about one forward, a weight backward about two, so a natural step is 3 units): FGSM-RS
5/3, PGD-k (2k+3)/3, Free 3/3 per replay, TRADES-k (2k+7)/3 (k KL steps, then clean and adversarial forward +
backward), BAT 6/3 (a clean forward for the target and labels, one input-gradient step, the weight step).
No timing is asserted anywhere: this is a measuring tool."""

import dataclasses
import time

# BAT: clean forward for the target and labels (1) + one input-gradient step (2) + weight step (3) = 6 units.
LIMITS = {"natural": 1.0, "fgsm_rs": 5 / 3, "free": 1.0, "bat": 2.0}


def limit(method):
    """The arithmetic limit of the ratio to natural; None for a method without a cost model here."""
    name = method.rstrip("0123456789")
    if name in ("pgd", "trades"):
        if method == name:  # no step count appended: the run's default
            from tfadv.config import TrainConfig

            k = TrainConfig().flat()["attack_steps"]
        else:
            k = int(method[len(name):])
        return (2 * k + (3 if name == "pgd" else 7)) / 3
    return LIMITS.get(method)


def _onednn() -> str:
    """on / off / unknown: whether TensorFlow's CPU kernels go through oneDNN here (TF_ENABLE_ONEDNN_OPTS, else
    the CPU decides); a ratio between two machines' figures means little without it."""
    from tfadv import precision

    return {True: "on", False: "off"}.get(precision.onednn_enabled(), "unknown")


@dataclasses.dataclass
class Benchmark:
    model: str = "preact_resnet18"
    input_shape: tuple = (32, 32, 3)
    num_classes: int = 10
    batch_size: int = 128
    steps: int = 3  # timed steps per method (after warm-up)
    warmup: int = 1  # untimed steps per method (tracing, allocation)
    free_replays: int = 4
    jit_compile: bool = False
    wrn_depth: int = 28
    wrn_width: int = 10

    def run_config(self, method: str):
        """The run config of a benchmark row: `pgd7` = --defense=pgd --attack_steps=7 at eps 8/255, step 2/255
        (levels of an 8-bit image, converted by the config's budget()); fgsm_rs steps 1.25 eps, free eps."""
        from tfadv import config as config_lib

        name = method.rstrip("0123456789")
        values = {"defense": name, "dataset": "cifar10", "eps": 8.0, "output_dir": "unused",
                  "batch_size": self.batch_size}
        if name in ("pgd", "trades"):  # the methods that read --step_size (a flag a run does not read is refused)
            values["step_size"] = 2.0
        if method != name:
            values["attack_steps"] = int(method[len(name):])
        values.update({"fgsm_rs": {"fgsm_rs_step_size": 10.0},
                       "free": {"free_step_size": 8.0, "free_replays": self.free_replays}}.get(name, {}))
        return config_lib.TrainConfig.from_flags(values)

    def check(self, methods):
        """Refuses (ConfigError naming --methods) a row that is no run users could start, before any is timed."""
        from tfadv.config import ConfigError

        for method in methods:
            try:
                self.run_config(method).validate()
            except ConfigError as error:
                raise ConfigError("methods", f"{method!r}: {str(error).split(': ', 1)[1]}") from None

    def network_name(self):
        return self.model + (f"-{self.wrn_depth}-{self.wrn_width}" if self.model == "wide_resnet" else "")

    def build_trainer(self, method):
        import keras

        from tfadv import assembly, models

        shape = self.input_shape
        options = dict(depth=self.wrn_depth, width=self.wrn_width) if self.model == "wide_resnet" else {}
        network = models.build(self.model, shape, self.num_classes, [0.5] * shape[-1], [0.25] * shape[-1], **options)
        trainer = assembly.trainer(self.run_config(method), network)
        optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
        trainer.compile(optimizer=optimizer, jit_compile=self.jit_compile)
        optimizer.build(network.trainable_variables)
        return trainer

    def time_method(self, method, precision):
        """Seconds per step of `method` in `precision` (per replay for Free-AT and SSAT) on random images."""
        import keras
        import numpy as np
        import tensorflow as tf

        keras.mixed_precision.set_global_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
        try:
            trainer = self.build_trainer(method)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        rng = np.random.default_rng(0)
        x = rng.random((self.batch_size, *self.input_shape), dtype=np.float32)
        y = rng.integers(0, self.num_classes, self.batch_size).astype(np.int32)
        iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        trainer.make_train_function()
        step = trainer.train_function
        for _ in range(self.warmup):
            float(step(iterator)["loss"])
        start = time.perf_counter()
        for _ in range(self.steps):
            float(step(iterator)["loss"])  # reading the loss waits for the step to finish
        seconds = (time.perf_counter() - start) / self.steps
        return seconds / self.run_config(method).updates_per_batch()  # Free-AT and SSAT: per replay

    def run(self, methods, precisions):
        """Times natural and `methods` in each precision, printing a line per row; returns {row: numbers}."""
        self.check(methods)
        import keras
        import tensorflow as tf

        print(f"{self.network_name()} {self.input_shape} batch {self.batch_size}, XLA "
              f"{str(self.jit_compile).lower()}, {self.steps} timed steps after {self.warmup} warm-up; "
              f"tf {tf.__version__}, keras {keras.__version__}, oneDNN {_onednn()}")
        print(f"{'method':<16}{'s/step':>10}{'img/s':>10}{'ratio':>8}{'limit':>8}{'ratio/limit':>13}")
        results = {}
        for precision in precisions:
            suffix = "" if precision == "float32" else "_bf16"
            base = None
            for method in ["natural"] + [m for m in methods if m != "natural"]:
                seconds = self.time_method(method, precision)
                base = base or seconds
                results[method + suffix] = row = self.row(method, seconds, base, precision)
                note = " (per replay)" if self.run_config(method).updates_per_batch() > 1 else ""
                print(format_row(method + suffix, seconds, row) + note, flush=True)
        return results

    def row(self, method, seconds, base, precision):
        bound = limit(method)
        return {"seconds_per_step": round(seconds, 4), "images_per_second": round(self.batch_size / seconds, 2),
                "ratio": round(seconds / base, 3), "limit": bound and round(bound, 3), "precision": precision}


def format_row(name, seconds, row):
    """A row's line under the header: s/step, img/s, ratio, and limit and ratio/limit ("-" without a limit)."""
    cells = f"{row['limit']:>8.2f}{row['ratio'] / row['limit']:>13.2f}" if row["limit"] else f"{'-':>8}{'-':>13}"
    return f"{name:<16}{seconds:>10.3f}{row['images_per_second']:>10.1f}{row['ratio']:>8.2f}{cells}"
