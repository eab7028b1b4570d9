"""tfadv: training and honestly evaluating adversarially robust image classifiers (TensorFlow 2 / Keras 3).

Modules: data, models, attacks, targets, losses, training, callbacks, evaluation, export, config,
experiment. Importing `tfadv` itself does not import TensorFlow.
"""

__version__ = "0.1.0"
