"""Gradient flow through time: how much the loss at the end of a text feels each earlier token.

For a batch of equal-length texts (no padding, so every row reads the same number of steps),
`gradient_norms` measures ||dL / de_t||, the norm of the gradient of the loss at the last
position with respect to the input embedding at position t, averaged over the rows, and returns
it by distance from the end (0 = the last token). A recurrent network whose gradient vanishes
shows a curve falling by orders of magnitude with distance; an LSTM's cell state keeps it up.

The loss is the model's own: for a classifier, the cross-entropy of the true label from the
prediction it makes after reading the text; for a language model, the cross-entropy of the next
token after the last position. A bidirectional model's backward half reads from the end, so for
it every position is also near the end; read its curve with that in mind.

The gradient is taken with respect to a zero "probe" added to the embedding output, in a copy of
the model that shares its layers and weights (`keras.models.clone_model` with a `call_function`),
so the same code serves every model `pipeline.models` builds, masks included.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class EmbeddingProbe(keras.layers.Layer):
    """Adds a zero tensor of a fixed shape to its input; the gradient with respect to that tensor is
    the gradient with respect to the input, position by position. Masks pass through."""

    def __init__(self, shape: tuple[int, ...], **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.delta = self.add_weight(shape=shape, initializer="zeros", trainable=True, name="delta")

    def call(self, inputs):
        return inputs + keras.ops.cast(self.delta, inputs.dtype)


def gradient_norms(model: keras.Model, ids: np.ndarray, targets: np.ndarray, *, from_logits: bool) -> np.ndarray:
    """Mean gradient norm of the last position's loss with respect to each position's embedding.

    Args:
        model: a sentiment model (ids -> probabilities) or a language model (ids -> logits per
            position), as `pipeline.models` builds them.
        ids: int ids `[batch, time]`, every row of the full length (no padding).
        targets: the class of each row (sentiment), or the token after each row (language model).
        from_logits: true for a language model.

    Returns:
        `[time]` finite values, index d being the mean norm at distance d from the last position.
    """
    ids = np.asarray(ids, dtype="int32")
    embeddings = [layer for layer in model.layers if isinstance(layer, keras.layers.Embedding)]
    probes = {id(layer): EmbeddingProbe((*ids.shape, layer.output_dim), name=f"probe_{layer.name}")
              for layer in embeddings}

    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        # A tied language model calls its embedding twice; only the lookup (not `reverse`) is probed.
        probe = probes.get(id(layer))
        return probe(out) if probe is not None and not kwargs.get("reverse") else out

    probed = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    with tf.GradientTape() as tape:
        outputs = probed(ids, training=False)
        last = outputs[:, -1] if len(outputs.shape) == 3 else outputs
        loss = keras.losses.sparse_categorical_crossentropy(targets, last, from_logits=from_logits)
        loss = tf.reduce_sum(loss)  # per-row losses; rows do not interact, so each row's gradient is its own
    grads = tape.gradient(loss, [p.delta for p in probes.values()])
    squared = sum(tf.reduce_sum(tf.square(g), axis=-1) for g in grads)  # [batch, time]
    per_position = np.sqrt(np.asarray(squared, dtype=np.float64)).mean(axis=0)
    return per_position[::-1]  # by distance from the end


def long_rows(ids: np.ndarray, lengths: np.ndarray, *, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The `rows` longest examples of a packed split (`ids`, `lengths` as tokenize writes them), each
    cut to the length of the shortest of them, so the batch has no padding.

    Returns:
        `(index of each row in the split, ids [rows, time])`.
    """
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    longest = np.argsort(-lengths, kind="stable")[:rows]
    time = int(lengths[longest].min())
    return longest, np.stack([ids[starts[i]:starts[i] + time] for i in longest])
