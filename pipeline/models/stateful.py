"""Language models that carry their state: truncated backpropagation through time and streaming scores.

With `train.stateful`, training reads the token stream as `train.batch_size` parallel streams
(`data.lm_stream_dataset`): row r of batch k+1 is the text that follows row r of batch k, and
every recurrent layer starts a batch from the final states of the previous one. Gradients stop at
the window boundary (the carried states are values, not part of the graph), so the cost per step
stays that of one window while the model learns to use context from any distance before it.

The carry is Keras's own: a copy of the stage's model (`with_carried_state`) whose recurrent
layers are `stateful=True` for a fixed batch size. The copy has the same layers and weights, and
the states are initial states of the same LSTM kernel, so the cuDNN conditions are unchanged.
The saved `model.keras` is the ordinary model built by `models.build_model`; a state is a
property of how it is read, not of its weights.

The evaluate stage reads every language model's test split the same way, in order with states
carried from window to window (`streaming_nats`), whether or not it was trained with carried
states: that is how a text is read. The cold-start figure, every window from a zero state
(`evaluate.language_model_metrics`), is kept beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

# Validation after every epoch reads its split as this many contiguous streams side by side: a
# CPU runs a batch of 8 rows about as fast as a batch of 1, and 8 resets over a split of tens of
# thousands of tokens change its figure by very little. The test figure is read as one stream.
VALIDATION_STREAMS = 8


def with_carried_state(model: keras.Model, batch_size: int) -> keras.Model:
    """A copy of `model`, same weights, whose recurrent layers keep their final states between calls.

    Each call on `[batch_size, time]` ids starts every recurrent layer from the states the previous
    call ended in (zeros after `reset_states`), which is how a text longer than one window is read.

    Args:
        model: a language model from `models.build_language_model_lstm` (any recurrent cell).
        batch_size: the fixed number of rows, one independent stream each.
    """
    ids = keras.Input(batch_shape=(batch_size, None), dtype="int32", name="token_ids")
    copy = keras.models.clone_model(model, input_tensors=ids, clone_function=_stateful_layer)
    copy.set_weights(model.get_weights())
    return copy


def _stateful_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
    config = layer.get_config()
    if isinstance(layer, keras.layers.RNN):
        config["stateful"] = True
    return layer.__class__.from_config(config)


def reset_states(model: keras.Model) -> None:
    """Zero the carried states of every recurrent layer of `model`."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.RNN) and layer.stateful:
            layer.reset_state()


class ResetStates(keras.callbacks.Callback):
    """Starts every training epoch from zero states: the epoch's streams begin at new offsets."""

    def on_epoch_begin(self, epoch, logs=None):
        reset_states(self.model)


def streaming_nats(scorer: keras.Model, stream: np.ndarray, window: int, *,
                   carry: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The cross-entropy of every token of `stream` after the first, read in order.

    The stream is cut into as many contiguous parts as `scorer` has rows, each read from a zero
    state, window after window. With `carry`, a window starts from the states the previous one
    ended in; without it, from zeros (the cold-start figure).

    Args:
        scorer: from `with_carried_state`.
        stream: token ids, BOS first.
        window: tokens read per call; with `carry` it changes nothing but speed and memory.

    Returns:
        Nats per predicted token, in stream order, and how many tokens each one's prediction read
        since the last reset (0 for the first token after a reset).
    """
    rows = scorer.inputs[0].shape[0]
    inputs, targets = stream[:-1], stream[1:]
    per_row = -(-len(inputs) // rows)
    shape = (rows, per_row)
    x = np.zeros(rows * per_row, np.int32)
    y = np.zeros(rows * per_row, np.int32)
    x[:len(inputs)], y[:len(targets)] = inputs, targets  # the short last row is padded at its end
    x, y = x.reshape(shape), y.reshape(shape)

    @tf.function
    def nats_of(ids, next_ids):
        logits = tf.cast(scorer(ids, training=False), tf.float32)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(next_ids, logits)

    nats = np.zeros(shape, np.float64)
    reset_states(scorer)
    for start in range(0, per_row, window):
        if not carry:
            reset_states(scorer)
        nats[:, start:start + window] = nats_of(x[:, start:start + window], y[:, start:start + window]).numpy()
    reset_states(scorer)
    read = np.arange(per_row) if carry else np.arange(per_row) % window
    return nats.reshape(-1)[:len(targets)], np.tile(read, rows)[:len(targets)]


def lm_metrics(prefix: str, nats: float, tokens: int, characters: int) -> dict[str, float]:
    """`<prefix>_loss` (nats per token), `<prefix>_perplexity` and `<prefix>_bits_per_char`."""
    per_token = nats / max(tokens, 1)
    return {f"{prefix}_loss": per_token, f"{prefix}_perplexity": math.exp(min(per_token, 50.0)),
            f"{prefix}_bits_per_char": nats / math.log(2) / max(characters, 1)}


def streaming_metrics(model: keras.Model, arrays: dict[str, np.ndarray], window: int, streams: int = 1,
                      prefix: str = "test") -> dict[str, float]:
    """Loss, perplexity and bits per character of a split read in order with carried states.

    With `streams=1` the split is read as one text, which is what the export's `score` signature
    computes for that text.
    """
    nats, _ = streaming_nats(with_carried_state(model, streams), arrays["ids"], window)
    return lm_metrics(prefix, float(nats.sum()), len(nats), int(arrays["characters"].sum()))


class StreamingValidation(keras.callbacks.Callback):
    """Validation of a stateful language model, after every epoch, in place of `fit`'s own.

    Adds to the epoch logs `val_loss`, `val_perplexity` and `val_bits_per_char` of the validation
    split read in order with carried states (`VALIDATION_STREAMS` streams), and the cold-start
    `val_cold_loss` and `val_cold_bits_per_char` of the same split, every window from zeros.
    Placed before early stopping and the checkpoint, which read `val_loss`.
    """

    def __init__(self, arrays: dict[str, np.ndarray], window: int, streams: int = VALIDATION_STREAMS):
        super().__init__()
        self.stream, self.characters = arrays["ids"], int(arrays["characters"].sum())
        self.window, self.streams = window, streams
        self.scorer = None

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        if self.scorer is None:
            self.scorer = with_carried_state(self.model, self.streams)
        else:
            self.scorer.set_weights(self.model.get_weights())
        carried, _ = streaming_nats(self.scorer, self.stream, self.window)
        cold, _ = streaming_nats(self.scorer, self.stream, self.window, carry=False)
        logs.update(lm_metrics("val", float(carried.sum()), len(carried), self.characters))
        cold_metrics = lm_metrics("val_cold", float(cold.sum()), len(cold), self.characters)
        logs.update({k: v for k, v in cold_metrics.items() if not k.endswith("perplexity")})


# Characters since the last reset at which the context curve is cut: the first 100 after a reset,
# then doubling spans. A window of 128 BPE tokens of Shakespeare is about 280 characters.
CONTEXT_EDGES = (0, 100, 200, 400, 800, 1600, 3200)
# The curve averages over this many resets, one per contiguous part of the split.
CONTEXT_STREAMS = 16


def score_split(model: keras.Model, arrays: dict[str, np.ndarray], tokenizer_model: Path, window: int,
                cold: dict[str, float], out: Path) -> dict[str, float]:
    """The evaluate stage's figures for a language model.

    `test_*` are the split read as one text with carried states (as the export's `score` reads a
    text); the cold-start `cold` figures (from `evaluate.language_model_metrics`) are kept as
    `test_cold_*`. Writes `bits_per_char_by_context.png` and `.json` to `out`: bits per character
    by how many characters the model had read since its last reset (see `context_curve`).
    """
    from pipeline import plots
    from pipeline.data import subwords

    metrics = {**streaming_metrics(model, arrays, window),
               **{name.replace("test_", "test_cold_", 1): value for name, value in cold.items()}}
    stream = arrays["ids"]
    curve = context_curve(model, stream, spelled_characters(subwords.load(tokenizer_model), stream), window)
    (out / "bits_per_char_by_context.json").write_text(json.dumps(curve, indent=2), encoding="utf-8")
    plots.context_curve(curve, out / "bits_per_char_by_context.png")
    return metrics


def spelled_characters(sp, stream: np.ndarray) -> np.ndarray:
    """Characters each token of `stream` spells: 0 for control pieces (BOS), 1 for a byte piece (one
    byte of a character, so a character of several bytes counts more than once; ASCII is exact).

    SentencePiece prefixes every text with a space that decoding drops: the first piece after a
    BOS spells one character less than its piece has.
    """
    from pipeline.data.subwords import BOS_ID

    lengths = np.zeros(sp.get_piece_size(), np.int64)
    for i in range(sp.get_piece_size()):
        if sp.is_byte(i) or sp.is_unknown(i):
            lengths[i] = 1
        elif not sp.is_control(i):
            lengths[i] = len(sp.id_to_piece(i).replace("\u2581", " "))
    spelled = lengths[stream]
    first = np.flatnonzero(stream[:-1] == BOS_ID) + 1
    spelled[first] -= [sp.id_to_piece(int(i)).startswith("\u2581") for i in stream[first]]
    return spelled


def context_curve(model: keras.Model, stream: np.ndarray, spelled: np.ndarray, window: int,
                  streams: int = CONTEXT_STREAMS) -> dict[str, list]:
    """Bits per character of `stream` by characters read since the last reset, carried and cold.

    `spelled` holds the characters of each token of `stream` (`spelled_characters`).

    The stream is read as `streams` contiguous parts, each from a zero state, twice: `carried`
    carries the states through its whole part, `cold` resets them every `window` tokens. Each
    token falls in the bin of the characters the carried read had seen before it, in both reads,
    so the two curves score the same characters bin by bin and differ only by the context the
    model had: equal in the first window after a reset, and apart where the carried read knows
    more. A gap that stays or widens past one window's span shows the model using context longer
    than it was trained on in one piece.

    Returns:
        `edges` (bin starts in characters since the reset), `carried` and `cold` bits per character
        in each bin (None where a bin is empty), and `characters` scored in each bin.
    """
    scorer = with_carried_state(model, streams)
    prefix = np.concatenate([[0], np.cumsum(spelled)])  # characters of stream[:k]
    carried, read = streaming_nats(scorer, stream, window)
    cold, _ = streaming_nats(scorer, stream, window, carry=False)
    index = np.arange(len(carried))
    since_reset = prefix[index + 1] - prefix[index - read]  # inputs index - read .. index
    bins = np.searchsorted(CONTEXT_EDGES, since_reset, side="right") - 1
    chars = np.bincount(bins, weights=spelled[1:], minlength=len(CONTEXT_EDGES))
    curve: dict[str, list] = {"edges": list(CONTEXT_EDGES), "characters": [int(c) for c in chars]}
    for name, nats in (("carried", carried), ("cold", cold)):
        bits = np.bincount(bins, weights=nats, minlength=len(CONTEXT_EDGES)) / math.log(2)
        curve[name] = [float(b / c) if c else None for b, c in zip(bits, chars, strict=True)]
    return curve
