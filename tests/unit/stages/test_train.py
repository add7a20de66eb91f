import json
import logging

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf

from pipeline import models, tracking
from pipeline.config import load_config
from pipeline.stages import prepare, tokenization, train
from pipeline.store.workdir import stage_dir
from pipeline.training import batches, checkpoints, recipe
from tests.conftest import tiny_overrides


@pytest.fixture
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_on_trains_in_float16_with_a_float32_output(tiny_config, float32_afterwards):
    config = load_config(None, ["train.mixed_precision=on"])
    recipe.setup_runtime(config)
    model = models.build_sentiment_lstm(40, 3, units=8, embedding_dim=8, layers=2)
    assert model.get_layer("bidirectional_0").compute_dtype == "float16"
    assert model.get_layer("classifier").compute_dtype == "float32"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    x = np.array([[2, 5, 6, 0], [2, 7, 0, 0]], dtype="int32")
    loss = model.train_on_batch(x, np.array([0, 2]))
    assert np.isfinite(loss)
    assert model(x).dtype == "float32"


def test_mixed_precision_auto_is_float32_without_a_gpu(float32_afterwards):
    recipe.setup_runtime(load_config(None, ["train.mixed_precision=auto"]))
    expected = "mixed_float16" if models.gpu_visible() else "float32"
    assert keras.mixed_precision.global_policy().name == expected


def test_training_writes_model_history_and_kernel_report(tiny_config, tmp_path):
    for stage in (prepare, tokenization, train):
        stage.run(tiny_config, tmp_path / "work")
    out = stage_dir(tiny_config, tmp_path / "work", "train")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_run"] == 2
    assert summary["lstm_kernel"] == ("cudnn" if models.gpu_visible() else "generic")
    assert 0 < summary["padding_fraction"] < 1  # the tiny texts differ in length
    assert (out / "history.csv").read_text().splitlines()[0].startswith("epoch,")


def test_an_ensemble_trains_its_members_apart_and_saves_their_mean(sentiment_files, tmp_path):
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path) + ["model.ensemble=2", "train.epochs=1"])
    for stage in (prepare, tokenization):
        stage.run(config, tmp_path / "work")
    result = train.run(config, tmp_path / "work")
    saved = keras.saving.load_model(result.model_path, safe_mode=True)
    assert saved.output_shape == (None, 2)  # the members' mean, not the stack fit trained
    # The saved weights are the trained ones: the figure validation logged is the saved model's own.
    work = tmp_path / "work"
    val_ds = batches.datasets(config, stage_dir(config, work, "tokenize"), stage_dir(config, work, "prepare"),
                              0).validation
    saved.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert saved.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"] == result.best_metrics["val_accuracy"]


def test_recurrent_dropout_is_reported_with_its_cost(sentiment_files, tmp_path, caplog):
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path) + ["model.recurrent_dropout=0.2",
                                                                            "train.epochs=1"])
    prepare.run(config, tmp_path / "work")
    tokenization.run(config, tmp_path / "work")
    mlflow.set_experiment("kernel-report")
    with caplog.at_level(logging.WARNING), tracking.start_run("train"):
        train.run(config, tmp_path / "work")
        run_id = tracking.run_id()
    assert "cannot use the cuDNN kernel (recurrent_dropout=0.2)" in caplog.text
    tags = mlflow.get_run(run_id).data.tags
    assert tags["lstm_kernel"] == "generic"
    assert tags["lstm_kernel.forward_lstm_0"] == "recurrent_dropout=0.2"


def test_weight_averaging_validates_the_average_and_checkpoints_the_trained_weights():
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(40, 2, units=4, embedding_dim=4, layers=1)
    model.compile(optimizer=keras.optimizers.Adam(0.05, use_ema=True, ema_momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    averaged = checkpoints.AveragedWeights()
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 0:
                seen["epoch_end"] = model.get_weights()
                with averaged.trained_weights():
                    seen["trained"] = model.get_weights()
                seen["after"] = model.get_weights()

    x = np.random.default_rng(0).integers(1, 40, size=(64, 6)).astype("int32")
    x[:, 0] = 2
    y = (x[:, 1] > 20).astype("int32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[averaged, Probe()])
    assert any(not np.allclose(a, b) for a, b in zip(seen["epoch_end"], seen["trained"], strict=True))
    for a, b in zip(seen["epoch_end"], seen["after"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_weight_decay_shrinks_every_weight_by_rate_times_decay_a_step(decay):
    # Token 7 is in no batch: its embedding row has no gradient, so Adam leaves it alone and only the
    # decay moves it, by learning_rate * weight_decay of itself.
    config = load_config(None, ["train.learning_rate=0.01", f"train.weight_decay={decay}", "model.units=4",
                                "model.embedding_dim=4", "model.layers=1"])
    keras.utils.set_random_seed(0)
    model = recipe.compiled_model(config, tf.distribute.get_strategy(), 10, 2, None, None, steps_per_epoch=5)
    embedding = next(w for w in model.weights if "embedding" in w.path)
    before = np.array(embedding.numpy()[7])
    model.train_on_batch(np.array([[2, 3, 4, 0], [2, 5, 6, 0]], "int32"), np.array([0, 1]))
    np.testing.assert_allclose(embedding.numpy()[7], before * (1 - 0.01 * decay), rtol=1e-6)
