"""How far XLA (jit_compile=True) moves training from the plain graph, per defense, and a short float16 run
(scripts/precision_table.py): max |weight difference| XLA vs not after 3 float32 steps; the float16 loss of the
last minibatch of one epoch and the final loss scale (Keras' defaults: from 2^15, doubling after 2000 finite
updates) and the updates skipped for an overflow, without and with XLA, beside the float32 loss. A
Dense-BatchNorm net on 8x8 digits."""

BATCH = 64


def cases():
    """A row per registered method: training.make's keywords for these, any other with its defaults."""
    from tfadv.training import base

    return {"free": dict(replays=2), "ssat": dict(replays=2),
            "label_smoothing": dict(smoothing=base.SmoothingConfig("als", 0.3)),
            "logit_squeeze": dict(smoothing=base.SmoothingConfig(squeeze_beta=0.05))}


def network():
    import keras

    inputs = keras.Input((8, 8, 1))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.ReLU()(hidden)))


def run(name, jit, x, y, steps, policy="float32"):
    """Trains `name` for `steps` minibatches of BATCH from seed 0: (last loss, weights, and under mixed_float16
    (final loss scale, updates skipped for an overflow), else None)."""
    import keras

    from tfadv import training

    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        net = network()
        trainer = training.make(name, net, training.AttackConfig(eps=0.125, step_size=0.05, steps=3), seed=1,
                                batch_size=BATCH, **cases().get(name, {}))  # batch_size: read by Free-AT only
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)  # as experiment.build_optimizer
        trainer.compile(optimizer=optimizer, jit_compile=jit)
        loss = None
        for i in range(steps):
            trainer.reset_metrics()
            loss = float(trainer.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH],
                                                return_dict=True)["loss"])
        scale = None
        if policy == "mixed_float16":  # (final scale, updates skipped for an overflow)
            updates = steps * training.registry.get(name).updates_per_batch(trainer.options)
            scale = (float(optimizer.dynamic_scale.numpy()), updates - int(optimizer.iterations.numpy()))
        return loss, [v.numpy() for v in net.weights], scale
    finally:
        keras.mixed_precision.set_global_policy("float32")


def table(names=None):
    """Prints the Markdown table, a line per defense (`names`; default every registered one) as it finishes."""
    import numpy as np

    from tfadv import data, training

    x, y = data.load("digits").train
    x, y = x.astype("float32"), y.astype("int32")
    epoch = len(y) // BATCH
    print(f"| defense | max abs weight diff XLA vs not (3 steps) | float32 last loss ({epoch} steps) | float16 "
          "last loss | final loss scale, skipped updates | float16 + XLA: loss, scale, skipped |")
    print("|---|---|---|---|---|---|")
    for name in training.DEFENSES if names is None else names:
        _, plain, _ = run(name, False, x, y, 3)
        _, compiled, _ = run(name, True, x, y, 3)
        difference = max(float(np.abs(a - b).max()) for a, b in zip(plain, compiled))
        loss32, _, _ = run(name, False, x, y, epoch)
        loss16, _, scale16 = run(name, False, x, y, epoch, "mixed_float16")
        loss16x, _, scale16x = run(name, True, x, y, epoch, "mixed_float16")
        print(f"| {name} | {difference:.1e} | {loss32:.4f} | {loss16:.4f} | 2^{np.log2(scale16[0]):g}, {scale16[1]} | "
              f"{loss16x:.4f}, 2^{np.log2(scale16x[0]):g}, {scale16x[1]} |", flush=True)
