"""Model builders: the sentiment classifier, its ensemble, the language model."""

from __future__ import annotations

import keras

from pipeline.config import Config
from pipeline.models.cudnn import recurrent_layers
from pipeline.models.layers import MaskedMaxPooling1D, MemberStack, ReversibleEmbedding


def build_sentiment_lstm(
    vocab_size: int,
    num_classes: int,
    *,
    embedding_dim: int = 128,
    units: int = 128,
    layers: int = 2,
    bidirectional: bool = True,
    dropout: float = 0.3,
    embedding_dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    pooling: str = "final",
    ensemble: int = 1,
    cell: str = "lstm",
) -> keras.Model:
    """A text classifier: Embedding -> stacked (Bi)LSTMs -> pooled state -> softmax.

    Args:
        vocab_size: number of token ids, 0 being padding.
        num_classes: size of the softmax.
        cell: the recurrent layer, `lstm`, `gru` or `simple_rnn` (see `recurrent_layer`).
        embedding_dropout: the rate at which whole token embeddings are zeroed in training.
        pooling: `final` uses the last LSTM's final state (both directions' when
            bidirectional); `mean` averages its outputs over the unmasked positions;
            `mean_max` concatenates that average with their maximum.
        ensemble: how many such classifiers, each with its own embedding and weights, read the
            same ids; the model's output is the mean of their probabilities. Layer names get a
            `member_<k>_` prefix when there is more than one. Train it through `training_model`.

    Returns:
        A model from int32 token ids `[batch, time]` to class probabilities `[batch, classes]`.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    members = [
        _sentiment_member(ids, f"member_{k}_" if ensemble > 1 else "", vocab_size, num_classes,
                          embedding_dim=embedding_dim, units=units, layers=layers, bidirectional=bidirectional,
                          dropout=dropout, embedding_dropout=embedding_dropout,
                          recurrent_dropout=recurrent_dropout, pooling=pooling, cell=cell)
        for k in range(ensemble)
    ]
    probs = members[0] if ensemble == 1 else keras.layers.Average(dtype="float32", name="ensemble_mean")(members)
    return keras.Model(ids, probs, name="sentiment_lstm")


def _sentiment_member(ids, prefix: str, vocab_size: int, num_classes: int, *, embedding_dim: int, units: int,
                      layers: int, bidirectional: bool, dropout: float, embedding_dropout: float,
                      recurrent_dropout: float, pooling: str, cell: str):
    x = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=True, name=f"{prefix}embedding")(ids)
    # One draw per token, shared by its channels: a dropped token vanishes whole.
    x = keras.layers.Dropout(embedding_dropout, noise_shape=(None, None, 1), name=f"{prefix}token_dropout")(x)
    x = keras.layers.Dropout(dropout, name=f"{prefix}embedding_dropout")(x)
    for i in range(layers):
        last = i == layers - 1
        lstm = recurrent_layer(cell, units, return_sequences=not (last and pooling == "final"),
                               recurrent_dropout=recurrent_dropout, name=f"{prefix}{cell}_{i}")
        if bidirectional:
            lstm = keras.layers.Bidirectional(lstm, name=f"{prefix}bidirectional_{i}")
        x = lstm(x)
        x = keras.layers.Dropout(dropout, name=f"{prefix}dropout_{i}")(x)
    if pooling == "mean":
        x = keras.layers.GlobalAveragePooling1D(name=f"{prefix}mean_pool")(x)
    elif pooling == "mean_max":
        x = keras.layers.Concatenate(name=f"{prefix}mean_max_pool")(
            [keras.layers.GlobalAveragePooling1D(name=f"{prefix}mean_pool")(x),
             MaskedMaxPooling1D(name=f"{prefix}max_pool")(x)])
    # The softmax stays float32 under mixed precision, for a numerically stable loss.
    return keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=f"{prefix}classifier")(x)


def training_model(model: keras.Model) -> keras.Model:
    """The model `fit` trains: `model` itself, or for an ensemble the same layers (same weights) with
    the members' probabilities side by side, `[batch, members, classes]`.

    Trained on `MemberCrossentropy`, each member then learns from its own loss, as if trained alone.
    The loss of the averaged probability instead lets members lean on each other's errors: three
    members trained that way scored below one model alone on SST-2 (docs/results.md, "Ensembles").
    """
    try:
        mean = model.get_layer("ensemble_mean")
    except ValueError:
        return model
    return keras.Model(model.input, MemberStack(name="members")(mean.input), name=f"{model.name}_members")


def build_language_model_lstm(
    vocab_size: int,
    *,
    embedding_dim: int = 256,
    units: int = 512,
    layers: int = 2,
    dropout: float = 0.2,
    recurrent_dropout: float = 0.0,
    tie_embeddings: bool = False,
    cell: str = "lstm",
) -> keras.Model:
    """A next-token model: Embedding -> stacked LSTMs (or `cell` layers) -> logits over the vocabulary.

    With `tie_embeddings`, the output projection reuses the embedding matrix, and a Dense layer
    maps the last LSTM's output to `embedding_dim` first.

    Returns:
        A model from int32 ids `[batch, time]` to float32 logits `[batch, time, vocab_size]`.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedding = ReversibleEmbedding(vocab_size, embedding_dim, name="embedding")
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(embedding(ids))
    for i in range(layers):
        x = recurrent_layer(cell, units, return_sequences=True, recurrent_dropout=recurrent_dropout,
                            name=f"{cell}_{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    if tie_embeddings:
        x = keras.layers.Dense(embedding_dim, name="projection")(x)
        logits = embedding(x, reverse=True)
    else:
        logits = keras.layers.Dense(vocab_size, dtype="float32", name="logits")(x)
    return keras.Model(ids, logits, name="language_model_lstm")


def build_model(config: Config, vocab_size: int, num_classes: int = 0) -> keras.Model:
    """The model `config` describes, for a tokenizer of `vocab_size` ids."""
    m = config.model
    if config.task == "lm":
        model = build_language_model_lstm(
            vocab_size, embedding_dim=m.embedding_dim, units=m.units, layers=m.layers,
            dropout=m.dropout, recurrent_dropout=m.recurrent_dropout, tie_embeddings=m.tie_embeddings,
            cell=m.cell,
        )
    else:
        model = build_sentiment_lstm(
            vocab_size, num_classes, embedding_dim=m.embedding_dim, units=m.units, layers=m.layers,
            bidirectional=m.bidirectional, dropout=m.dropout, embedding_dropout=m.embedding_dropout,
            recurrent_dropout=m.recurrent_dropout, pooling=m.pooling, ensemble=m.ensemble, cell=m.cell,
        )
    if m.forget_bias is not None:
        set_forget_bias(model, m.forget_bias)
    return model


CELLS = ("lstm", "gru", "simple_rnn")


def set_forget_bias(model: keras.Model, value: float) -> None:
    """Start the gate that keeps the old state at bias `value`: every LSTM's forget gate (Keras starts
    it at 1) and every GRU's update gate z in `h = z * h_prev + (1 - z) * candidate` (Keras: 0).

    At bias b the gate starts near sigmoid(b), so a memory fades as sigmoid(b)^t: about 1e-14 after
    100 steps at b = 1, 0.16 at b = 4. Only then does a loss at the end send a gradient that far
    back at the start of training (Gers et al. 2000; Jozefowicz et al. 2015). SimpleRNNs have no gate.
    """
    for layer in recurrent_layers(model):
        units, bias = layer.units, layer.cell.bias
        if isinstance(layer, keras.layers.LSTM):  # gate order: input, forget, candidate, output
            values = keras.ops.convert_to_numpy(bias).copy()
            values[units:2 * units] = value
        elif isinstance(layer, keras.layers.GRU):  # order z, r, h; with reset_after, rows: input and recurrent bias
            values = keras.ops.convert_to_numpy(bias).copy()
            values[..., :units] = 0.0
            values.reshape(-1, 3 * units)[0, :units] = value
        else:
            continue
        bias.assign(values)


def recurrent_layer(cell: str, units: int, *, return_sequences: bool, recurrent_dropout: float,
                    name: str) -> keras.layers.RNN:
    """One recurrent layer of kind `cell`: `lstm`, `gru` or `simple_rnn`.

    LSTM and GRU get every setting Keras 3 on TensorFlow needs to run them on cuDNN (for the GRU
    also `reset_after=True`); SimpleRNN has no cuDNN kernel at all. It is the baseline against
    which the gates earn their keep.
    """
    # Each argument below is spelled out because changing it would silently lose cuDNN.
    common = {"activation": "tanh", "use_bias": True, "unroll": False, "recurrent_dropout": recurrent_dropout,
              "return_sequences": return_sequences, "name": name}
    if cell == "lstm":
        return keras.layers.LSTM(units, recurrent_activation="sigmoid", **common)
    if cell == "gru":
        return keras.layers.GRU(units, recurrent_activation="sigmoid", reset_after=True, **common)
    if cell == "simple_rnn":
        return keras.layers.SimpleRNN(units, **common)
    raise ValueError(f"unknown recurrent cell {cell!r}; expected one of {', '.join(CELLS)}")
