"""Exact replay of a trained LSTM: every gate and state at every token, from the layer's weights.

Keras gives an LSTM's outputs (and, on request, its final states), never the gates. This module
recomputes them in NumPy from the weights, in Keras's gate order (input, forget, candidate,
output), for every layer and both directions of a `Bidirectional` wrapper:

    z = x_t W + h_{t-1} U + b;  i, f, g, o = σ(z_i), σ(z_f), tanh(z_g), σ(z_o)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)

At a masked (padding) position the states carry over unchanged, as Keras does, and the gates
are NaN. tests/test_replay.py proves the hidden states and final cell states equal to Keras's own
(max abs difference below 1e-5) on masked, stacked, bidirectional models.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

GATES = ("input_gate", "forget_gate", "candidate", "output_gate")
STATES = ("cell", "hidden")


@dataclass(frozen=True)
class GateTrace:
    """One LSTM direction over a batch: arrays `[batch, time, units]`, positions in text order.

    The backward direction of a bidirectional layer reads the text from its end, so its state at
    position t summarises tokens t.. (its final state is at position 0).
    """

    layer: str
    direction: str
    input_gate: np.ndarray
    forget_gate: np.ndarray
    candidate: np.ndarray
    output_gate: np.ndarray
    cell: np.ndarray
    hidden: np.ndarray
    mask: np.ndarray

    @property
    def name(self) -> str:
        """`bidirectional_0/backward`, `lstm_1/forward`: what plots and metrics are keyed by."""
        return f"{self.layer}/{self.direction}"

    def final(self, state: str) -> np.ndarray:
        """The state (`cell` or `hidden`) after the direction has read every real token: `[batch, units]`."""
        values = getattr(self, state)
        return values[:, 0] if self.direction == "backward" else values[:, -1]


def replay_lstm(layer: keras.layers.LSTM, inputs: np.ndarray, mask: np.ndarray, *, name: str = "",
                direction: str | None = None) -> GateTrace:
    """Recompute one LSTM layer's gates and states.

    Args:
        layer: a built `keras.layers.LSTM` with tanh activation and sigmoid recurrent activation
            (every LSTM `pipeline.models` builds). `go_backwards` is honoured.
        inputs: `[batch, time, features]`, what the layer reads.
        mask: `[batch, time]` booleans, False at padding.
        name: the layer name to record (a `Bidirectional` wrapper's, say); default the LSTM's.
        direction: recorded as is; default `backward` for a `go_backwards` layer, else `forward`.

    Returns:
        The trace, positions in the order of `inputs` whatever the direction.
    """
    if not isinstance(layer, keras.layers.LSTM):
        raise ValueError(f"{layer.name} is a {type(layer).__name__}, not an LSTM: the replay covers model.cell=lstm")
    if layer.activation is not keras.activations.tanh or layer.recurrent_activation is not keras.activations.sigmoid:
        raise ValueError(f"{layer.name}: replay covers LSTMs with tanh and sigmoid activations only")
    kernel, recurrent, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    batch, time, _ = inputs.shape
    units = layer.units
    projected = np.asarray(inputs, dtype=np.float64) @ kernel + bias
    h, c = np.zeros((batch, units)), np.zeros((batch, units))
    out = {key: np.full((batch, time, units), np.nan) for key in (*GATES, *STATES)}
    for t in range(time - 1, -1, -1) if layer.go_backwards else range(time):
        z = projected[:, t] + h @ recurrent
        i, f, g, o = np.split(z, 4, axis=-1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        keep = mask[:, t, None]
        c = np.where(keep, f * c + i * g, c)
        h = np.where(keep, o * np.tanh(c), h)
        for key, value in zip(GATES, (i, f, g, o), strict=True):
            out[key][:, t] = np.where(keep, value, np.nan)
        out["cell"][:, t], out["hidden"][:, t] = c, h
    return GateTrace(name or layer.name, direction or ("backward" if layer.go_backwards else "forward"),
                     **out, mask=np.asarray(mask, dtype=bool))


def replay_model(model: keras.Model, ids: np.ndarray, prefix: str = "") -> list[GateTrace]:
    """Replay every LSTM of a model built by `pipeline.models`, bottom layer first.

    Args:
        model: a sentiment or language model whose recurrent layers are LSTMs.
        ids: int token ids `[batch, time]`, right-padded with 0.
        prefix: the layer-name prefix of one ensemble member (`member_0_`); empty otherwise.

    Returns:
        The traces, layer by layer, forward before backward; a layer's outputs (the forward and
        backward hidden states, concatenated) are what the next one reads, as in the model.
    """
    names = {layer.name for layer in model.layers}
    embedding = model.get_layer(f"{prefix}embedding")
    x = np.asarray(embedding(np.asarray(ids, dtype="int32")), dtype=np.float64)
    mask = np.asarray(ids) != 0 if embedding.mask_zero else np.ones(np.shape(ids), dtype=bool)
    traces: list[GateTrace] = []
    for i in range(len(model.layers)):
        wrapper, plain = f"{prefix}bidirectional_{i}", f"{prefix}lstm_{i}"
        if wrapper in names:
            layer = model.get_layer(wrapper)
            if layer.merge_mode != "concat":
                raise ValueError(f"{wrapper}: replay covers merge_mode='concat' only")
            pair = [replay_lstm(sub, x, mask, name=wrapper) for sub in (layer.forward_layer, layer.backward_layer)]
            traces += pair
            x = np.concatenate([t.hidden for t in pair], axis=-1)
        elif plain in names:
            traces.append(replay_lstm(model.get_layer(plain), x, mask))
            x = traces[-1].hidden
        else:
            break
    if not traces:
        raise ValueError(f"{model.name} has no LSTM named {prefix}lstm_0 or {prefix}bidirectional_0 to replay; "
                         "the replay covers model.cell=lstm")
    return traces


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
