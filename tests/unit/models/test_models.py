import keras
import numpy as np
import pytest

from pipeline import models
from pipeline.config import load_config
from pipeline.training import recipe
from tests.conftest import PRESETS_DIR

PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_every_preset_builds_cudnn_eligible_lstms(preset):
    config = load_config(preset)
    model = models.build_model(config, vocab_size=64, num_classes=2)
    report = models.cudnn_report(model)
    expected = config.model.ensemble * config.model.layers * (2 if config.model.bidirectional else 1)
    assert len(report) == expected
    assert all(r.cudnn_eligible for r in report), report


def test_report_names_what_rules_cudnn_out():
    model = models.build_sentiment_lstm(64, 2, units=4, embedding_dim=4, layers=1, recurrent_dropout=0.2)
    assert [r.reason for r in models.cudnn_report(model)] == ["recurrent_dropout=0.2"] * 2
    plain = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4, activation="relu", use_bias=False)])
    (report,) = models.cudnn_report(plain)
    assert not report.cudnn_eligible
    assert report.reason == "activation is not tanh; use_bias=False"


def _one_step_changes_every_weight(model, x, y, loss):
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(x, y)
    unchanged = [w.path for w, b in zip(model.trainable_weights, before, strict=True) if np.allclose(w.numpy(), b)]
    assert not unchanged


def test_one_training_step_changes_every_sentiment_weight():
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(30, 3, units=4, embedding_dim=4, layers=2, dropout=0.0)
    # Right-padded rows of different lengths, BOS (2) first.
    x = np.array([[2, 5, 6, 7, 0], [2, 8, 0, 0, 0], [2, 9, 10, 11, 12]], dtype="int32")
    _one_step_changes_every_weight(model, x, np.array([0, 1, 2]), "sparse_categorical_crossentropy")


def test_ensemble_outputs_the_mean_of_its_members_and_trains_each_of_them(tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(30, 3, units=4, embedding_dim=4, layers=1, pooling="mean", ensemble=3)
    x = np.array([[2, 5, 6, 7, 0], [2, 8, 0, 0, 0]], dtype="int32")
    members = [keras.Model(model.input, model.get_layer(f"member_{k}_classifier").output)(x) for k in range(3)]
    assert not np.allclose(members[0], members[1])  # each member starts from its own weights
    np.testing.assert_allclose(model(x), np.mean(members, axis=0), atol=1e-6)
    assert len(models.cudnn_report(model)) == 6 and all(r.cudnn_eligible for r in models.cudnn_report(model))
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)(x), model(x), atol=1e-6)
    _one_step_changes_every_weight(model, x, np.array([0, 2]), "sparse_categorical_crossentropy")


def test_each_ensemble_member_learns_from_its_own_loss():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(30, 2, units=4, embedding_dim=4, layers=1, pooling="mean", ensemble=2,
                                        dropout=0.0)
    x = np.array([[2, 5, 6, 7, 0], [2, 8, 0, 0, 0], [2, 9, 3, 0, 0]], dtype="int32")
    y = np.array([0, 1, 1])
    trainer = models.training_model(model)
    members = [keras.Model(model.input, model.get_layer(f"member_{k}_classifier").output) for k in range(2)]
    np.testing.assert_allclose(trainer(x), np.stack([m(x) for m in members], axis=1), atol=1e-6)
    alone = keras.losses.SparseCategoricalCrossentropy()
    with tf.GradientTape(persistent=True) as tape:
        together = models.MemberCrossentropy()(y, trainer(x))
        own = [alone(y, m(x)) for m in members]
    np.testing.assert_allclose(together, np.mean(own), rtol=1e-6)
    # Member 0's gradient is that of its own loss (halved by the mean): member 1's output plays no part.
    for got, expected in zip(tape.gradient(together, members[0].trainable_weights),
                             tape.gradient(own[0], members[0].trainable_weights), strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(got), tf.convert_to_tensor(expected) / 2, rtol=1e-5, atol=1e-8)
    accuracy = models.EnsembleAccuracy()
    accuracy.update_state(y, trainer(x))
    assert float(accuracy.result()) == pytest.approx(np.mean(np.argmax(model(x), axis=-1) == y))
    assert models.training_model(models.build_sentiment_lstm(30, 2, units=4, embedding_dim=4)).name == "sentiment_lstm"


@pytest.mark.parametrize("tie", [False, True])
def test_one_training_step_changes_every_language_model_weight(tie):
    keras.utils.set_random_seed(0)
    model = models.build_language_model_lstm(20, units=4, embedding_dim=4, layers=2, dropout=0.0, tie_embeddings=tie)
    x = np.arange(2, 18, dtype="int32").reshape(2, 8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _one_step_changes_every_weight(model, x, (x + 1) % 20, loss)


@pytest.mark.parametrize("ensemble", [1, 2])
@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("pooling", ["final", "mean", "mean_max"])
def test_padding_does_not_change_the_probabilities(pooling, bidirectional, ensemble):
    # Every layer of a real run is in the model, token and plain dropout too (inactive outside
    # training), so the embedding's mask must pass through all of them to the LSTMs and the pooling.
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(30, 3, units=8, embedding_dim=8, layers=2, bidirectional=bidirectional,
                                        dropout=0.3, embedding_dropout=0.3, pooling=pooling, ensemble=ensemble)
    rows = [[2, 5, 6], [2, 7, 8, 9, 10]]
    alone = np.concatenate([model(np.array([row], dtype="int32")) for row in rows])
    for length in (5, 9):  # padded to the longest row, as in a batch, and further
        padded = np.array([row + [0] * (length - len(row)) for row in rows], dtype="int32")
        np.testing.assert_allclose(model(padded), alone, atol=1e-6)


def test_the_mask_reaches_every_lstm_in_training_too():
    # Outside training a dropout layer hands on its input tensor, mask attached; in training it
    # makes a new tensor, and only its own mask support carries the mask over to the next LSTM.
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(30, 2, units=4, embedding_dim=8, layers=2, dropout=0.3,
                                        embedding_dropout=0.3, pooling="mean")
    lstms = keras.Model(model.input, [model.get_layer(f"bidirectional_{i}").output for i in range(2)])
    ids = np.random.default_rng(0).integers(1, 30, size=(16, 8)).astype("int32")
    ids[:, 0], ids[:, 4:] = 2, 0
    for outputs in lstms(ids, training=True):
        # A masked Bidirectional outputs zeros at padded steps; an unmasked one runs on through them.
        assert not keras.ops.convert_to_numpy(outputs)[:, 4:].any()


def test_masked_max_pooling_skips_padded_positions_and_survives_save_and_load(tmp_path):
    values = np.array([[[-3.0, 1.0], [-2.0, 5.0], [0.0, 0.0]]], dtype="float32")
    mask = np.array([[True, True, False]])
    pooled = models.MaskedMaxPooling1D()(values, mask=mask)
    np.testing.assert_array_equal(pooled, [[-2.0, 5.0]])  # the padded zero does not win
    model = models.build_sentiment_lstm(30, 2, units=4, embedding_dim=4, layers=1, pooling="mean_max")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.array([[2, 5, 6, 0]], dtype="int32")
    np.testing.assert_allclose(model(x), loaded(x), atol=1e-6)


def test_tied_language_model_survives_save_and_load(tmp_path):
    model = models.build_language_model_lstm(20, units=4, embedding_dim=4, layers=1, tie_embeddings=True)
    model.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras", safe_mode=True)
    x = np.arange(2, 10, dtype="int32")[None]
    np.testing.assert_allclose(model(x), loaded(x), atol=1e-6)
    assert loaded.count_params() == model.count_params()


def test_token_dropout_drops_whole_tokens():
    model = models.build_sentiment_lstm(30, 2, units=4, embedding_dim=8, layers=1, embedding_dropout=0.5)
    layer = model.get_layer("token_dropout")
    out = keras.ops.convert_to_numpy(layer(np.ones((4, 50, 8), dtype="float32"), training=True))
    kept = out != 0
    # Each token keeps all its channels or none of them; about half the tokens go.
    assert (kept.all(axis=-1) | ~kept.any(axis=-1)).all()
    assert 0.3 < (~kept.any(axis=-1)).mean() < 0.7


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_smoothing_targets_one_minus_s_on_the_label_and_s_over_all_classes(smoothing):

    probs = np.array([[0.7, 0.2, 0.1], [0.25, 0.5, 0.25]], dtype="float32")
    labels = np.array([0, 2])
    target = np.eye(3)[labels] * (1 - smoothing) + smoothing / 3
    expected = -(target * np.log(probs)).sum(axis=1)
    config = load_config(None, [f"train.label_smoothing={smoothing}"])
    np.testing.assert_allclose(recipe.training_loss(config, reduction=None)(labels, probs), expected, rtol=1e-6)
    # An ensemble's members, [batch, members, classes], each get the same smoothed target.
    members = np.stack([probs, probs[::-1]], axis=1)
    other = -(target * np.log(probs[::-1])).sum(axis=1)
    ensemble = load_config(None, [f"train.label_smoothing={smoothing}", "model.ensemble=2"])
    np.testing.assert_allclose(recipe.training_loss(ensemble, reduction=None)(labels, members),
                               (expected + other) / 2, rtol=1e-6)
