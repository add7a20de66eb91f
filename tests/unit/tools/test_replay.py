"""The NumPy replay of an LSTM gives Keras's own hidden states and final cell states."""

import keras
import numpy as np
import pytest

from pipeline import models
from pipeline.tools.inspection import replay

# Right-padded, BOS (2) first, rows of different lengths: the mask matters in both directions.
IDS = np.array([[2, 5, 9, 4, 7, 3, 8, 6],
                [2, 11, 6, 0, 0, 0, 0, 0],
                [2, 4, 4, 12, 9, 0, 0, 0]], dtype="int32")
TOLERANCE = 1e-5


def _random_weights(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial biases and larger weights than Keras's initialisers, so every gate is exercised."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        weight.assign(rng.normal(0.0, 0.6, weight.shape).astype("float32"))


def _keras_layer_inputs(model: keras.Model, name: str) -> np.ndarray:
    """What recurrent layer `name` (`..._<i>`) reads in `model`, computed by Keras: the output of the
    dropout layer before it, an identity at inference."""
    i = int(name.rsplit("_", 1)[1])
    source = model.get_layer("embedding_dropout" if i == 0 else f"dropout_{i - 1}").output
    return np.asarray(keras.Model(model.input, source)(IDS))


def _keras_states(lstm: keras.layers.LSTM, inputs: np.ndarray, mask: np.ndarray):
    """Keras's output sequence and final (h, c) for the same weights: a twin that returns its states."""
    twin = keras.layers.LSTM.from_config({**lstm.get_config(), "return_sequences": True, "return_state": True})
    twin.build(inputs.shape)
    twin.set_weights(lstm.get_weights())
    sequence, h, c = twin(inputs, mask=mask)
    sequence = sequence.numpy()
    if lstm.go_backwards:  # Keras gives a backward layer's outputs in its reading order
        sequence = sequence[:, ::-1]
    return sequence, h.numpy(), c.numpy()


@pytest.mark.parametrize("bidirectional", [True, False], ids=["bidirectional", "unidirectional"])
def test_replay_equals_keras_on_a_masked_stacked_model(bidirectional):
    keras.utils.set_random_seed(1)
    model = models.build_sentiment_lstm(16, 2, units=5, embedding_dim=6, layers=2, bidirectional=bidirectional,
                                        dropout=0.0)
    _random_weights(model)
    mask = IDS != 0
    traces = replay.replay_model(model, IDS)
    assert len(traces) == (4 if bidirectional else 2)
    wrappers = [f"bidirectional_{i}" if bidirectional else f"lstm_{i}" for i in (0, 1)]
    for trace in traces:
        wrapper = model.get_layer(trace.layer)
        lstm = getattr(wrapper, f"{trace.direction}_layer") if bidirectional else wrapper
        sequence, h, c = _keras_states(lstm, _keras_layer_inputs(model, trace.layer), mask)
        assert np.abs(trace.hidden[mask] - sequence[mask]).max() < TOLERANCE
        assert np.abs(trace.final("hidden") - h).max() < TOLERANCE
        assert np.abs(trace.final("cell") - c).max() < TOLERANCE
        assert np.isnan(trace.forget_gate[~mask]).all() and not np.isnan(trace.forget_gate[mask]).any()
    # The model's own last layer (final-state pooling) gives the replay's final hidden states.
    pooled = np.asarray(keras.Model(model.input, model.get_layer(wrappers[-1]).output)(IDS))
    top = [t.final("hidden") for t in traces if t.layer == wrappers[-1]]
    assert np.abs(np.concatenate(top, axis=-1) - pooled).max() < TOLERANCE


def test_replay_equals_keras_on_a_language_model():
    keras.utils.set_random_seed(2)
    model = models.build_language_model_lstm(16, units=6, embedding_dim=4, layers=2, dropout=0.0)
    _random_weights(model, seed=3)
    traces = replay.replay_model(model, IDS[:, :5])  # an LM reads no padding: its embedding has no mask
    assert [t.name for t in traces] == ["lstm_0/forward", "lstm_1/forward"]
    outputs = np.asarray(keras.Model(model.input, model.get_layer("lstm_1").output)(IDS[:, :5]))
    assert np.abs(traces[-1].hidden - outputs).max() < TOLERANCE
    _, _, c = _keras_states(model.get_layer("lstm_1"), _keras_layer_inputs(model, "lstm_1")[:, :5],
                            np.ones((3, 5), bool))
    assert np.abs(traces[-1].final("cell") - c).max() < TOLERANCE


def test_gates_are_in_keras_order_and_ranges():
    keras.utils.set_random_seed(3)
    model = models.build_sentiment_lstm(16, 2, units=5, embedding_dim=6, layers=1, bidirectional=False)
    _random_weights(model)
    (trace,) = replay.replay_model(model, IDS)
    mask = IDS != 0
    for gate in ("input_gate", "forget_gate", "output_gate"):
        assert ((trace.__dict__[gate][mask] > 0) & (trace.__dict__[gate][mask] < 1)).all()
    assert (np.abs(trace.candidate[mask]) < 1).all()
    # c_1 = f_1 * c_0 + i_1 * g_1 with c_0 = 0: the cell after BOS is input gate times candidate.
    np.testing.assert_allclose(trace.cell[:, 0], trace.input_gate[:, 0] * trace.candidate[:, 0], atol=1e-12)


def test_replay_refuses_a_model_without_lstms():
    model = models.build_sentiment_lstm(16, 2, units=4, embedding_dim=4, layers=1, cell="gru")
    with pytest.raises(ValueError, match="the replay covers model.cell=lstm"):
        replay.replay_model(model, IDS)
