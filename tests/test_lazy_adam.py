"""`train.lazy_embedding_updates`: Adam that moves only the embedding rows a batch uses."""

from __future__ import annotations

import keras
import numpy as np

from pipeline import models, train
from pipeline.config import load_config


def _model() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None,), dtype="int32")
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(8, 3, name="embedding")(inputs))
    return keras.Model(inputs, keras.layers.Dense(1)(pooled))


def _steps(optimizer: keras.optimizers.Optimizer, batches) -> list[np.ndarray]:
    """The embedding after each of the steps, one batch of ids each."""
    model = _model()
    model.compile(optimizer=optimizer, loss="mse")
    after = []
    for ids in batches:
        model.train_on_batch(np.array(ids), np.ones((len(ids), 1)))
        after.append(model.get_layer("embedding").get_weights()[0])
    return after


def test_a_step_moves_the_rows_the_batch_uses_as_adam_does_and_no_others():
    start = _model().get_layer("embedding").get_weights()[0]
    # Row 2 twice in the first batch (its gradient comes in two slices), row 1 in the first only.
    batches = [[[1, 2], [2, 2]], [[2, 3], [3, 3]]]
    dense = _steps(keras.optimizers.Adam(0.1), batches)
    lazy = _steps(models.LazyAdam(0.1), batches)
    # The first step, from zero moments: the same as Adam's everywhere.
    np.testing.assert_allclose(lazy[0], dense[0], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(lazy[0][[0, 3, 4]], start[[0, 3, 4]])
    # The second: rows 2 and 3 as Adam moves them; row 1, unused, stays where the first step left it,
    # where Adam's leftover momentum moves it on.
    np.testing.assert_allclose(lazy[1][[2, 3]], dense[1][[2, 3]], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(lazy[1][1], lazy[0][1])
    assert np.abs(dense[1][1] - dense[0][1]).min() > 1e-3
    np.testing.assert_array_equal(lazy[1][[0, 4, 5, 6, 7]], start[[0, 4, 5, 6, 7]])


def test_the_config_key_picks_the_optimizer():
    assert train._optimizer(load_config(None, [])) is keras.optimizers.Adam
    assert train._optimizer(load_config(None, ["train.lazy_embedding_updates=true"])) is models.LazyAdam
