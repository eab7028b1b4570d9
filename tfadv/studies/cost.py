"""The cost model of the preset table: a network's forward FLOPs from TensorFlow's profiler, forward-pass
equivalents per training image of each method, and the GPU projection from them."""

FULL_TRAIN = {"cifar10": 50000, "cifar100": 50000, "svhn": 73257}
# A GPU projection from the FLOP count: one A100 (312 TFLOP/s bf16 dense peak) at 40 % utilisation.
GPU_FLOPS = 0.4 * 312e12
GPU_NAME = "A100 at 40 % of its bf16 peak (125 TFLOP/s)"


def forward_flops(model, input_shape, num_classes, **options):
    """FLOPs (multiply and add counted apart) of one forward pass of one image, from TensorFlow's profiler."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from tfadv import models
    network = models.build(model, input_shape, num_classes, [0.5] * input_shape[-1], [0.25] * input_shape[-1],
                           **options)
    function = tf.function(lambda x: network(x, training=False), autograph=False)
    frozen = convert_variables_to_constants_v2(function.get_concrete_function(
        tf.TensorSpec([1, *input_shape], tf.float32)))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    return int(tf.compat.v1.profiler.profile(graph=frozen.graph, options=options).total_float_ops)


def passes_per_image(flags):
    """Forward-pass equivalents per training image and epoch (an input-only backward costs about one forward,
    a weight backward about two): natural 3, PGD-k 2k+3, FGSM-RS 5, BAT 6, TRADES-k 2k+7, Free-AT and SSAT
    3 per replay; + 1 per self-teacher (a forward on the adversarial example)."""
    defense, steps = flags["defense"], int(flags.get("attack_steps", 10))
    units = {"pgd": 2 * steps + 3, "fgsm_rs": 5, "bat": 6, "trades": 2 * steps + 7,
             "free": 3 * int(flags.get("free_replays", 8)), "ssat": 3 * int(flags.get("ssat_replays", 8))
             }.get(defense, 3)
    return units + sum(1 for teacher in ("kd_adv_teacher", "kd_std_teacher") if flags.get(teacher))
