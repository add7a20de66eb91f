"""Gradient flow through time: one finite value per position, and the decay a simple RNN shows."""

import keras
import numpy as np
import pytest

from pipeline import models
from pipeline.tools.inspection import gradient_flow

IDS = np.random.default_rng(0).integers(4, 30, size=(6, 12)).astype("int32")


@pytest.mark.parametrize("pooling", ["final", "mean_max"])
def test_one_finite_value_per_position_for_a_classifier(pooling):
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(30, 2, units=4, embedding_dim=4, layers=2, pooling=pooling)
    curve = gradient_flow.gradient_norms(model, IDS, np.array([0, 1, 0, 1, 1, 0]), from_logits=False)
    assert curve.shape == (12,) and np.isfinite(curve).all() and (curve > 0).all()


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_one_finite_value_per_position_for_a_language_model(tie):
    keras.utils.set_random_seed(0)
    model = models.build_language_model_lstm(30, units=4, embedding_dim=4, layers=2, tie_embeddings=tie)
    curve = gradient_flow.gradient_norms(model, IDS, IDS[:, 0], from_logits=True)
    assert curve.shape == (12,) and np.isfinite(curve).all() and (curve > 0).all()


def test_the_probe_gives_the_gradient_of_the_last_loss_by_distance():
    # Only the last position's prediction is in the loss, so an LM's gradient at distance 0 is its
    # embedding's own; moving the first token changes that loss only through the recurrence.
    keras.utils.set_random_seed(1)
    model = models.build_language_model_lstm(30, units=4, embedding_dim=4, layers=1, dropout=0.0)
    ids = IDS[:1]
    curve = gradient_flow.gradient_norms(model, ids, np.array([5]), from_logits=True)
    embedding = model.get_layer("embedding")
    vectors = np.asarray(embedding(ids))

    def loss(v):
        rest = keras.Model(model.get_layer("embedding_dropout").input, model.output)
        logits = np.asarray(rest(v))[0, -1].astype(np.float64)
        return -(logits[5] - np.log(np.exp(logits).sum()))

    # Finite differences for the first position (distance 11).
    step, grad = 1e-3, np.zeros(4)
    for k in range(4):
        up, down = vectors.copy(), vectors.copy()
        up[0, 0, k] += step
        down[0, 0, k] -= step
        grad[k] = (loss(up) - loss(down)) / (2 * step)
    assert curve[11] == pytest.approx(np.linalg.norm(grad), rel=2e-2)


def test_a_simple_rnn_with_small_recurrent_weights_forgets_with_distance():
    keras.utils.set_random_seed(2)
    model = models.build_language_model_lstm(30, units=8, embedding_dim=8, layers=1, dropout=0.0, cell="simple_rnn")
    rnn = model.get_layer("simple_rnn_0").cell
    rnn.recurrent_kernel.assign(0.3 * np.asarray(rnn.recurrent_kernel))  # spectral radius well below 1
    ids = np.random.default_rng(3).integers(4, 30, size=(16, 20)).astype("int32")
    curve = gradient_flow.gradient_norms(model, ids, ids[:, 0], from_logits=True)
    assert np.all(np.diff(curve) < 0)  # every step further back, a smaller gradient
    assert curve[-1] < 1e-4 * curve[0]


def test_long_rows_are_the_longest_examples_cut_to_one_length():
    ids = np.arange(1, 16, dtype="int32")
    lengths = np.array([2, 5, 3, 4, 1])  # rows [1 2] [3..7] [8 9 10] [11..14] [15]
    index, rows = gradient_flow.long_rows(ids, lengths, rows=3)
    assert index.tolist() == [1, 3, 2]
    assert rows.tolist() == [[3, 4, 5], [11, 12, 13], [8, 9, 10]]
