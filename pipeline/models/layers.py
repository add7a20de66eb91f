"""Custom Keras layers, registered under the `pipeline` package name."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="pipeline")
class MemberStack(keras.layers.Layer):
    """Stacks the ensemble members' probabilities on a new axis 1."""

    def call(self, inputs):
        return keras.ops.stack(inputs, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], len(input_shape), *input_shape[0][1:])


@keras.saving.register_keras_serializable(package="pipeline")
class MaskedMaxPooling1D(keras.layers.Layer):
    """The maximum over time of the unmasked positions (Keras's `GlobalMaxPooling1D` ignores the
    mask, and an LSTM outputs zeros at padded positions, which would win over negative values)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        if mask is not None:
            keep = keras.ops.expand_dims(keras.ops.cast(mask, "bool"), -1)
            inputs = keras.ops.where(keep, inputs, keras.ops.full_like(inputs, float("-inf")))
        return keras.ops.max(inputs, axis=1)

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package="pipeline")
class ReversibleEmbedding(keras.layers.Embedding):
    """An embedding whose matrix also serves as the output projection (Press & Wolf, 2017).

    Called on ids it embeds them; called with `reverse=True` on vectors it returns float32
    logits over the vocabulary. Being one layer, the tie survives saving and loading.
    """

    def call(self, inputs, reverse=False):
        if not reverse:
            return super().call(inputs)
        x = keras.ops.cast(inputs, "float32")
        return keras.ops.matmul(x, keras.ops.transpose(keras.ops.cast(self.embeddings, "float32")))

    def compute_output_spec(self, inputs, reverse=False):
        if not reverse:
            return super().compute_output_spec(inputs)
        return keras.KerasTensor((*inputs.shape[:-1], self.input_dim), dtype="float32")
