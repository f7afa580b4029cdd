"""Keras layers the seeds define themselves."""
from __future__ import annotations

import keras
import tensorflow as tf


class ActivityRegularization(keras.layers.Layer):
    """The Keras guide's layer: adds rate * sum(inputs) to model.losses (not batch-averaged,
    unlike keras.layers.ActivityRegularization)."""

    def __init__(self, rate: float = 1e-2, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * tf.reduce_sum(inputs))
        return inputs

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}
