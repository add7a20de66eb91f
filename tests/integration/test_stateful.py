"""Language models that carry their state: stream batches, carried states, streaming scores, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

from pipeline import models
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data import inputs
from pipeline.errors import ConfigError, DataError
from pipeline.models import stateful
from pipeline.stages import evaluate, prepare, tokenization, train
from pipeline.store.workdir import stage_dir
from tests.conftest import assert_stage_and_export_score_alike, lm_overrides, tiny_overrides, write_corpus

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _tiny_lm(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return models.build_language_model_lstm(30, embedding_dim=6, units=5, layers=2, dropout=0.0)


def _token_nats(model: keras.Model, ids: np.ndarray) -> np.ndarray:
    """Nats of ids[:, 1:] given ids[:, :-1], each row read from zeros in one call."""
    logits = model(ids[:, :-1], training=False)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(ids[:, 1:], logits).numpy()


def test_stream_batches_continue_row_by_row_and_depend_only_on_seed_and_epoch():
    stream = np.arange(500, dtype=np.int32)
    batches = list(inputs.lm_stream_dataset(stream, 5, 4, seed=3, epochs=range(3)).as_numpy_iterator())
    per_epoch = inputs.lm_stream_count(500, 5, 4)
    assert per_epoch == 24 and len(batches) == 3 * per_epoch
    for epoch in range(3):
        first = batches[epoch * per_epoch]
        for k in range(1, per_epoch):
            x, targets = batches[epoch * per_epoch + k]
            np.testing.assert_array_equal(x, first[0] + 5 * k)  # row r goes on where it stopped
            np.testing.assert_array_equal(targets, x + 1)
        assert np.all(np.diff(first[0][:, 0]) == 5 * per_epoch), "rows are contiguous streams, one after another"
    offsets = [int(batches[e * per_epoch][0][0, 0]) for e in range(3)]
    assert len(set(offsets)) > 1 and all(0 <= o < 5 for o in offsets), offsets
    resumed = list(inputs.lm_stream_dataset(stream, 5, 4, seed=3, epochs=range(2, 3)).as_numpy_iterator())
    for a, b in zip(resumed, batches[2 * per_epoch:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])


def test_carried_state_loss_equals_reading_the_windows_as_one_sequence():
    model = _tiny_lm()
    carrier = stateful.with_carried_state(model, 4)
    stream = np.random.default_rng(0).integers(1, 30, size=200).astype(np.int32)
    (x0, y0), (x1, y1) = list(inputs.lm_stream_dataset(stream, 6, 4, seed=1).take(2).as_numpy_iterator())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    carrier(x0, training=False)
    carried = float(loss(y1, carrier(x1, training=False)))
    # Windows k and k+1 of each row as one sequence, read from zeros by the ordinary model.
    joined = np.concatenate([x0, x1, y1[:, -1:]], axis=1)
    whole = _token_nats(model, joined)
    assert carried == pytest.approx(float(whole[:, 6:].mean()), rel=1e-5)
    stateful.reset_states(carrier)
    cold = float(loss(y1, carrier(x1, training=False)))
    assert cold == pytest.approx(float(_token_nats(model, np.concatenate([x1, y1[:, -1:]], axis=1)).mean()), rel=1e-5)
    assert abs(cold - carried) > 1e-4, "the carried state changes the prediction"


def test_training_steps_carry_states_from_batch_to_batch():
    model = stateful.with_carried_state(_tiny_lm(), 2)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=loss)  # a rate of 0 keeps the weights
    ids = np.random.default_rng(1).integers(1, 30, size=(2, 9)).astype(np.int32)
    first = model.train_on_batch(ids[:, :4], ids[:, 1:5])
    second = model.train_on_batch(ids[:, 4:8], ids[:, 5:9])
    whole = _token_nats(_tiny_lm(), ids)  # the same seed builds the same weights
    assert first == pytest.approx(float(whole[:, :4].mean()), rel=1e-5)
    assert second == pytest.approx(float(whole[:, 4:].mean()), rel=1e-5)


def test_streaming_equals_one_pass_over_the_whole_text_and_over_each_part():
    model = _tiny_lm()
    stream = np.random.default_rng(2).integers(1, 30, size=47).astype(np.int32)
    nats, read = stateful.streaming_nats(stateful.with_carried_state(model, 1), stream, window=5)
    np.testing.assert_allclose(nats, _token_nats(model, stream[None])[0], rtol=1e-5)
    np.testing.assert_array_equal(read, np.arange(46))
    # Three parts of 16, 16 and 14 predictions, each read from zeros.
    parts, read = stateful.streaming_nats(stateful.with_carried_state(model, 3), stream, window=5)
    expected = np.concatenate([_token_nats(model, stream[None, s:s + 17])[0] for s in (0, 16, 32)])
    np.testing.assert_allclose(parts, expected, rtol=1e-5)
    assert read[16] == 0 and read[15] == 15
    cold, read = stateful.streaming_nats(stateful.with_carried_state(model, 1), stream, window=5, carry=False)
    windows = evaluate.language_model_metrics(model, {"ids": stream, "characters": np.array([46])}, 5, 4)
    assert cold.sum() / 46 == pytest.approx(windows["test_loss"], rel=1e-5)
    assert list(read[:7]) == [0, 1, 2, 3, 4, 0, 1]


def test_context_curve_scores_the_same_characters_carried_and_cold():
    model = _tiny_lm()
    model.set_weights([w * 4 for w in model.get_weights()])  # a state that matters: reads differ by context
    stream = np.random.default_rng(5).integers(1, 30, size=601).astype(np.int32)
    spelled = np.ones(601, np.int64)  # a character a token: bins of 100 tokens since the reset
    # Parts of 300 predictions; a prediction has read its input too: 99, 100 and 101 a part by bin.
    whole = stateful.context_curve(model, stream, spelled, window=300, streams=2)
    assert whole["characters"][:4] == [198, 200, 202, 0]
    assert whole["cold"] == pytest.approx(whole["carried"])  # one window a part: nothing to reset
    short = stateful.context_curve(model, stream, spelled, window=2, streams=2)
    assert short["carried"] == pytest.approx(whole["carried"])  # carried states: the window changes nothing
    assert short["characters"] == whole["characters"]
    for carried, cold in zip(short["carried"][:3], short["cold"][:3], strict=True):
        assert cold != pytest.approx(carried, rel=1e-3)


@pytest.fixture(scope="module")
def stateful_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("stateful")
    corpus = write_corpus(root / "corpus.txt")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    overrides = [*lm_overrides(corpus, root), "train.stateful=true", "train.batch_size=4"]
    args = ["run", "--workdir", str(root / "work"), "--tracking-uri", uri, "--experiment", "stateful"]
    for item in overrides:
        args += ["--set", item]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return load_config(None, overrides), root, uri


def test_stage_and_export_give_the_same_bits_per_char_for_the_test_text(stateful_run):
    config, root, _ = stateful_run
    assert_stage_and_export_score_alike(config, root / "work", root / "models" / "tinylm-lstm-2x16" / "1")


def test_run_logs_streaming_and_cold_validation_and_the_context_plot(stateful_run):
    config, root, uri = stateful_run
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("stateful").experiment_id])}
    train_id, evaluate_id = runs["train"].info.run_id, runs["evaluate"].info.run_id
    for name in ("val_loss", "val_bits_per_char", "val_cold_bits_per_char"):
        assert [m.step for m in client.get_metric_history(train_id, name)] == [0, 1], name
    assert {a.path for a in client.list_artifacts(evaluate_id, "evaluate")} >= {
        "evaluate/bits_per_char_by_context.png", "evaluate/bits_per_char_by_context.json"}
    curve = json.loads((stage_dir(config, root / "work", "evaluate") / "bits_per_char_by_context.json").read_text())
    assert curve["edges"][:2] == [0, 100] and curve["carried"][0] > 0
    test_chars = json.loads((stage_dir(config, root / "work", "prepare") / "stats.json").read_text())["test"]
    assert sum(curve["characters"]) == test_chars["characters"]


def test_stateful_refuses_what_it_cannot_do(tmp_path, sentiment_files):
    with pytest.raises(ConfigError, match="train.stateful applies to task lm only"):
        load_config(None, [*tiny_overrides(sentiment_files, tmp_path), "train.stateful=true"])
    corpus = write_corpus(tmp_path / "corpus.txt")
    with pytest.raises(ConfigError, match="train.stateful cannot be used with train.distribute=mirrored"):
        load_config(None, [*lm_overrides(corpus, tmp_path), "train.stateful=true", "train.distribute=mirrored"])
    config = load_config(None, [*lm_overrides(corpus, tmp_path), "train.stateful=true", "train.batch_size=512"])
    prepare.run(config, tmp_path / "work")
    tokenization.run(config, tmp_path / "work")
    with pytest.raises(DataError, match=r"fewer than train.batch_size=512 streams of one window"):
        train.run(config, tmp_path / "work")


def test_kill_9_mid_epoch_then_resume_ends_as_an_uninterrupted_stateful_run(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=400)
    overrides = [*lm_overrides(corpus, tmp_path), "train.stateful=true", "train.epochs=3", "train.patience=5",
                 "train.deterministic=true", "train.batch_size=4", "model.dropout=0.2"]
    config = load_config(None, overrides)

    def command(work: str) -> list[str]:
        args = [PIPELINE, "train", "--workdir", str(tmp_path / work), "--tracking-uri",
                f"sqlite:///{tmp_path / (work + '.db')}"]
        for item in overrides:
            args += ["--set", item]
        return args

    for work in ("work", "straight"):
        for stage in (prepare, tokenization):
            stage.run(config, tmp_path / work)
    partial = train.partial_dir(config, tmp_path / "work")
    process = subprocess.Popen(command("work"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (partial / "epoch-001").is_dir():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    time.sleep(0.3)  # into the second epoch's batches
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL and not (partial / "epoch-003").exists()
    resumed = subprocess.run(command("work"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and "resuming training after epoch" in resumed.stderr, resumed.stderr[-3000:]
    train.run(config, tmp_path / "straight")  # never interrupted

    def trained(work: str):
        out = stage_dir(config, tmp_path / work, "train")
        return keras.saving.load_model(out / "model.keras").get_weights(), (out / "history.csv").read_text()

    (weights, history), (expected, expected_history) = trained("work"), trained("straight")
    for a, b in zip(weights, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert history == expected_history
