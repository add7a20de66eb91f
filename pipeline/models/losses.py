"""Losses and metrics of the classifiers and their ensembles."""

from __future__ import annotations

import keras


def label_crossentropy(labels, probabilities, label_smoothing: float = 0.0):
    """Cross-entropy of integer labels against probabilities `[..., classes]`, one value per row.

    With label smoothing `s` the target is 1 - s on the label plus s spread evenly over the classes
    (Keras's `categorical_crossentropy` does the smoothing); `labels` broadcast against the rows."""
    target = keras.ops.one_hot(labels, keras.ops.shape(probabilities)[-1], dtype=probabilities.dtype)
    target = keras.ops.broadcast_to(target, keras.ops.shape(probabilities))
    return keras.losses.categorical_crossentropy(target, probabilities, label_smoothing=label_smoothing)


@keras.saving.register_keras_serializable(package="pipeline")
class LabelCrossentropy(keras.losses.Loss):
    """A classifier's cross-entropy (`label_crossentropy`), labels `[batch]`, probabilities
    `[batch, classes]`, optionally with label smoothing."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "label_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        return label_crossentropy(keras.ops.cast(y_true, "int32"), y_pred, self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="pipeline")
class MemberCrossentropy(LabelCrossentropy):
    """The mean over ensemble members of each member's cross-entropy: labels `[batch]`, predictions
    `[batch, members, classes]` (probabilities) as `training_model` outputs them. One value per row."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "member_crossentropy", **kwargs):
        super().__init__(label_smoothing, name=name, **kwargs)

    def call(self, y_true, y_pred):
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1, 1))
        return keras.ops.mean(label_crossentropy(labels, y_pred, self.label_smoothing), axis=1)


@keras.saving.register_keras_serializable(package="pipeline")
class EnsembleAccuracy(keras.metrics.SparseCategoricalAccuracy):
    """The accuracy of the members' mean probability, from `training_model`'s stacked output: the
    figure the saved ensemble scores, so `val_accuracy` selects epochs on what is exported."""

    def update_state(self, y_true, y_pred, sample_weight=None):
        return super().update_state(y_true, keras.ops.mean(y_pred, axis=1), sample_weight)
