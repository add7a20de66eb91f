"""Pretrained word vectors (`model.pretrained_embeddings`), `train.monitor`, the GLUE TSV layout and
a config without a test split, the learning-rate schedule."""

from __future__ import annotations

import gzip
import json
import logging

import keras
import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.config import load_config, monitor_mode
from pipeline.data import subwords
from pipeline.data import vectors as word_vectors
from pipeline.data.readers import read_local
from pipeline.errors import ConfigError, DataError
from pipeline.stages import evaluate, prepare, tokenization, train
from pipeline.store import cache
from pipeline.store.workdir import stage_dir
from pipeline.training import recipe
from tests.conftest import tiny_overrides

# Words of the tiny corpus (tests/conftest.py), some in another case, and words it never uses.
VECTORS = {"great": [0.5, -1.0, 0.25, 2.0], "Boring": [1.5, 0.0, -0.5, 0.125], "film": [3.0, 2.0, 1.0, 0.0],
           "awful": [-2.0, 0.75, 0.5, -0.25], "zebra": [9.0, 9.0, 9.0, 9.0]}


def write_vectors(path, vectors=VECTORS, header=False):
    lines = [f"{len(vectors)} {len(next(iter(vectors.values())))}"] if header else []
    lines += [f"{word} {' '.join(repr(x) for x in vector)}" for word, vector in vectors.items()]
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def vector_config(sentiment_files, tmp_path, vectors, *extra):
    return load_config(None, tiny_overrides(sentiment_files, tmp_path) + [
        "tokenizer.model_type=word", "model.embedding_dim=4", f"model.pretrained_embeddings={vectors}",
        "train.epochs=1", *extra])


def pieces_of(config, workdir):
    sp = subwords.load(stage_dir(config, workdir, "tokenize") / "tokenizer.model")
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def test_glue_tsv_layout_reads_label_first_with_a_header(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"label\tsentence\r\n0\thide new secretions \r\n1\tthe greatest musicians \r\n")
    examples = read_local(path, "auto", text_field="sentence", label_field="label")
    assert examples.texts == ["hide new secretions ", "the greatest musicians "]
    assert examples.labels == ["0", "1"]


def test_whole_word_pieces_are_the_ones_with_a_word():
    pieces = ["<pad>", "<unk>", "<s>", "</s>", "\u2581the", "ory", "\u2581", "\u2581Good"]
    assert word_vectors.piece_words(pieces) == {4: "the", 7: "Good"}


@pytest.mark.parametrize("name,header", [("vectors.txt", False), ("vectors.vec", True), ("vectors.txt.gz", False)])
def test_vectors_files_in_each_format_are_read(tmp_path, name, header):
    path = write_vectors(tmp_path / name, header=header)
    found, dim = word_vectors.read_vectors(path, {"great", "Film", "missing"})
    assert dim == 4
    # Only the wanted words are kept, and the case-folded forms of them: `film` for `Film`.
    assert set(found) == {"great", "film"}
    np.testing.assert_array_equal(found["great"], np.float32(VECTORS["great"]))


def test_found_rows_get_exactly_the_files_values_and_folded_case_falls_back(tmp_path):
    path = write_vectors(tmp_path / "vectors.txt")
    pieces = ["<pad>", "<unk>", "\u2581great", "\u2581film", "\u2581FILM", "\u2581dull", "ing"]
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(len(pieces), 4)])
    before = keras.ops.convert_to_numpy(model.layers[0].embeddings).copy()
    coverage = word_vectors.apply(model, pieces, path, frozen=False)
    after = keras.ops.convert_to_numpy(model.layers[0].embeddings)
    assert (coverage.found, coverage.vocabulary) == (3, 7)
    np.testing.assert_array_equal(after[2], np.float32(VECTORS["great"]))
    np.testing.assert_array_equal(after[3], np.float32(VECTORS["film"]))
    np.testing.assert_array_equal(after[4], np.float32(VECTORS["film"]))  # FILM -> film
    np.testing.assert_array_equal(after[[0, 1, 5, 6]], before[[0, 1, 5, 6]])  # not found: untouched
    assert model.layers[0].trainable


def test_training_logs_coverage_and_frozen_rows_stay_the_files(sentiment_files, tmp_path):
    vectors = write_vectors(tmp_path / "vectors.txt")
    config = vector_config(sentiment_files, tmp_path, vectors, "model.freeze_embeddings=true")
    work = tmp_path / "work"
    prepare.run(config, work)
    tokenization.run(config, work)
    mlflow.set_experiment("pretrained")
    with tracking.start_run("train"):
        train.run(config, work)
        run_id = tracking.run_id()
    pieces = pieces_of(config, work)
    words = word_vectors.piece_words(pieces)
    expected = {i: VECTORS[w] for i, w in words.items() if w in VECTORS}
    assert len(expected) == 3  # great, film, awful; the corpus's `boring` is not the file's `Boring`
    metrics = mlflow.get_run(run_id).data.metrics
    assert metrics["embedding_coverage"] == pytest.approx(3 / len(pieces))
    assert metrics["embedding_pieces_found"] == 3
    model = keras.saving.load_model(stage_dir(config, work, "train") / "model.keras")
    matrix = keras.ops.convert_to_numpy(model.get_layer("embedding").embeddings)
    for index, vector in expected.items():
        np.testing.assert_array_equal(matrix[index], np.float32(vector))


def test_unfrozen_vectors_are_trained(sentiment_files, tmp_path):
    vectors = write_vectors(tmp_path / "vectors.txt")
    config = vector_config(sentiment_files, tmp_path, vectors)
    work = tmp_path / "work"
    for stage in (prepare, tokenization, train):
        stage.run(config, work)
    index = pieces_of(config, work).index("\u2581great")
    model = keras.saving.load_model(stage_dir(config, work, "train") / "model.keras")
    row = keras.ops.convert_to_numpy(model.get_layer("embedding").embeddings)[index]
    assert np.abs(row - np.float32(VECTORS["great"])).max() > 1e-4


def test_the_vectors_files_content_is_in_the_train_key(sentiment_files, tmp_path):
    first = write_vectors(tmp_path / "a.txt")
    copy = write_vectors(tmp_path / "b.txt")
    changed = write_vectors(tmp_path / "c.txt", {**VECTORS, "great": [0.5, -1.0, 0.25, 2.5]})
    keys = {path.name: cache.stage_keys(vector_config(sentiment_files, tmp_path, path))
            for path in (first, copy, changed)}
    assert keys["a.txt"]["train"] == keys["b.txt"]["train"]  # same bytes, another name
    assert keys["a.txt"]["train"] != keys["c.txt"]["train"]
    assert keys["a.txt"]["tokenize"] == keys["c.txt"]["tokenize"]


def test_vectors_of_another_dimension_are_refused_with_the_fix(tmp_path):
    path = write_vectors(tmp_path / "vectors.txt")
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(5, 8)])
    expected = r"model.embedding_dim is 8 but .* 4-dimensional vectors; set model.embedding_dim=4"
    with pytest.raises(ConfigError, match=expected):
        word_vectors.apply(model, ["<pad>", "<unk>", "\u2581great", "\u2581film", "x"], path, frozen=False)


def test_a_short_line_is_named(tmp_path):
    path = tmp_path / "vectors.txt"
    path.write_text("great 1 2 3\nfilm 1 2\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"vectors.txt, line 2: 'film' has 2 numbers where the file's vectors have 3"):
        word_vectors.read_vectors(path, {"film"})


def test_a_missing_file_and_freezing_random_vectors_are_refused(tmp_path, sentiment_files):
    with pytest.raises(ConfigError, match="is not a file"):
        word_vectors.read_vectors(tmp_path / "nope.txt", {"a"})
    with pytest.raises(ConfigError, match="model.freeze_embeddings=true would freeze random vectors"):
        load_config(None, tiny_overrides(sentiment_files, tmp_path) + ["model.freeze_embeddings=true"])


def test_monitor_picks_the_direction_and_the_kept_epoch():
    history = {"loss": [0.6, 0.4, 0.3], "val_loss": [0.40, 0.42, 0.45], "val_accuracy": [0.80, 0.85, 0.83]}
    by_loss = load_config(None, ["train.monitor=val_loss"])
    by_accuracy = load_config(None, ["train.monitor=val_accuracy"])
    assert (monitor_mode(by_loss.train), monitor_mode(by_accuracy.train)) == ("min", "max")
    assert train._summarise(history, None, "generic", by_loss).best_epoch == 0
    assert train._summarise(history, None, "generic", by_accuracy).best_epoch == 1
    flipped = load_config(None, ["train.monitor=val_loss", "train.monitor_mode=max"])
    assert train._summarise(history, None, "generic", flipped).best_epoch == 2
    with pytest.raises(ConfigError, match="train.monitor=val_bits_per_char is not logged for task sentiment; "
                                          "set it to one of val_loss, val_accuracy"):
        load_config(None, ["train.monitor=val_bits_per_char"])


def test_early_stopping_watches_the_monitor_in_its_direction():
    for overrides, monitor, mode in [([], "val_loss", "min"), (["train.monitor=val_accuracy"], "val_accuracy", "max"),
                                     (["train.monitor=val_loss", "train.monitor_mode=max"], "val_loss", "max")]:
        stopper = recipe.make_early_stopping(load_config(None, overrides), resumed=None)
        assert (stopper.monitor, stopper.mode, stopper.restore_best_weights) == (monitor, mode, True)


def test_the_kept_epoch_is_the_monitors_best(sentiment_files, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="pipeline.stages.train")
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path) + [
        "train.monitor=val_accuracy", "train.epochs=4", "train.patience=4"])
    work = tmp_path / "work"
    for stage in (prepare, tokenization):
        stage.run(config, work)
    result = train.run(config, work)
    history = np.genfromtxt(stage_dir(config, work, "train") / "history.csv", delimiter=",", names=True)
    assert result.best_epoch == int(np.argmax(history["val_accuracy"]))
    assert result.best_metrics["val_accuracy"] == pytest.approx(history["val_accuracy"].max())
    # The log counts epochs from 1, as Keras's progress lines do.
    assert f"kept epoch {result.best_epoch + 1} (MLflow step {result.best_epoch})" in caplog.text


def test_without_a_test_split_evaluate_scores_validation_under_val_names(sentiment_files, tmp_path, caplog):
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path) + ["data.test_fraction=0", "train.epochs=1"])
    work = tmp_path / "work"
    for stage in (prepare, tokenization, train):
        stage.run(config, work)
    assert not (stage_dir(config, work, "tokenize") / "test.npz").exists()
    result = evaluate.run(config, work)
    assert set(result.metrics) == {"val_accuracy", "val_macro_f1", "val_loss", "val_auc"}
    assert "no test split" in caplog.text
    written = json.loads((stage_dir(config, work, "evaluate") / "metrics.json").read_text())
    assert written == result.metrics


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_epoch():
    config = load_config(None, ["train.lr_schedule=cosine", "train.warmup_steps=10", "train.epochs=2",
                                "train.learning_rate=0.002"])
    schedule = recipe.learning_rate(config, steps_per_epoch=55)
    rates = [float(schedule(step)) for step in (0, 5, 10, 60, 110)]
    assert rates == pytest.approx([0.0, 0.001, 0.002, 0.001, 0.0], abs=1e-6)
    assert recipe.learning_rate(load_config(None, ["train.learning_rate=0.002"]), 55) == 0.002
    with pytest.raises(ConfigError, match="train.warmup_steps needs a schedule to warm up into; set train.lr_sch"):
        load_config(None, ["train.warmup_steps=10"])
