"""Shared fixtures: tiny but real datasets and configs, written into pytest's tmp_path."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import random
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.data import splits

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "configs"

POSITIVE = ["a great and moving film", "wonderful acting and a fine story", "i loved it , truly great",
            "fine , warm and funny", "a moving , wonderful film", "great fun from start to end"]
NEGATIVE = ["a dull and boring mess", "awful acting , a bad story", "i hated it , truly awful",
            "boring , flat and slow", "a bad , dull film", "awful from start to end"]


def write_label_text(path: Path, count: int, seed: int) -> Path:
    """`count` lines of `LABEL TEXT`, half of each class, shuffled with `seed`."""
    rng = random.Random(seed)
    lines = [f"1 {rng.choice(POSITIVE)}" for _ in range(count // 2)]
    lines += [f"0 {rng.choice(NEGATIVE)}" for _ in range(count - count // 2)]
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def isolated_mlflow(tmp_path_factory, monkeypatch):
    """Keep every MLflow write out of the repository.

    MLflow's SQLite store puts artifacts under `./mlruns` of the working directory, so tests run
    from a temporary folder, with one tracking database for the session.
    """
    root = tmp_path_factory.getbasetemp() / "mlflow-home"
    root.mkdir(exist_ok=True)
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; one test's id must not reach the next.
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    yield
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)


@pytest.fixture
def sentiment_files(tmp_path: Path) -> dict[str, Path]:
    return {
        "train": write_label_text(tmp_path / "train.txt", 80, seed=1),
        "validation": write_label_text(tmp_path / "dev.txt", 20, seed=2),
    }


def tiny_overrides(files: dict[str, Path], tmp_path: Path) -> list[str]:
    """Overrides that make any sentiment preset a seconds-long run on `files`."""
    return [
        "name=tiny", "data.tfds=null", "data.format=label_text",
        f"data.train={files['train']}", f"data.validation={files['validation']}", "data.test=null",
        "data.test_fraction=0.2", "tokenizer.vocab_size=60", "model.embedding_dim=8", "model.units=8",
        "model.layers=2", "train.epochs=2", "train.batch_size=8", "train.max_length=16",
        f"export.dir={tmp_path / 'models'}",
    ]


@pytest.fixture
def tiny_config(sentiment_files, tmp_path):
    return load_config(None, tiny_overrides(sentiment_files, tmp_path))


def write_corpus(path: Path, lines: int = 120) -> Path:
    """A small plain-text corpus with line breaks and repeated structure."""
    rng = random.Random(0)
    speakers = ["ROMEO:", "JULIET:", "NURSE:"]
    words = "the and of my thou art love night day sweet fair good come go".split()
    body = [f"{rng.choice(speakers)}\n{' '.join(rng.choice(words) for _ in range(8))}.\n" for _ in range(lines)]
    path.write_text("\n".join(body), encoding="utf-8")
    return path


def lm_overrides(corpus: Path, tmp_path: Path) -> list[str]:
    return [
        "name=tinylm", "task=lm", "data.tfds=null", "data.format=text", f"data.train={corpus}",
        "data.validation=null", "data.test=null", "data.validation_fraction=0.1", "data.test_fraction=0.1",
        "tokenizer.vocab_size=320", "tokenizer.model_type=bpe", "tokenizer.character_coverage=1.0",
        "model.bidirectional=false", "model.embedding_dim=8", "model.units=16", "model.layers=2",
        "train.epochs=2", "train.batch_size=8", "train.sequence_length=16", "train.sample_tokens=10",
        "train.sample_prompt=ROMEO:", f"export.dir={tmp_path / 'models'}",
    ]


def assert_stage_and_export_score_alike(config, work: Path, exported: Path) -> None:
    """The evaluate stage's test bits per character is the test text read in one pass, as the
    export's `score` reads it; the cold-start figure, windows from zero states, is kept apart."""
    import json

    import keras
    import tensorflow as tf

    from pipeline.stages import evaluate
    from pipeline.store.workdir import stage_dir

    metrics = json.loads((stage_dir(config, work, "evaluate") / "metrics.json").read_text())
    text = splits.read_examples(stage_dir(config, work, "prepare") / "test.jsonl")[0][0]
    served = tf.saved_model.load(str(exported)).signatures["score"](text=tf.constant([text]))
    assert served["bits_per_char"].numpy()[0] == pytest.approx(metrics["test_bits_per_char"], rel=1e-4)
    assert metrics["test_cold_bits_per_char"] != pytest.approx(metrics["test_bits_per_char"], rel=1e-4)
    # The saved model is the ordinary one: any batch size, each call from zero states.
    model = keras.saving.load_model(stage_dir(config, work, "train") / "model.keras")
    test = splits.load_split(stage_dir(config, work, "tokenize"), "test")
    cold = evaluate.language_model_metrics(model, test, config.train.sequence_length, 3)
    assert cold["test_bits_per_char"] == pytest.approx(metrics["test_cold_bits_per_char"], rel=1e-5)


from .mlflow_servers import mlflow_server  # noqa: E402, F401  fixture: a real `mlflow server` per test module


def pytest_collection_modifyitems(config, items):
    """Mark every test under tests/integration/ `integration`, so `-m 'not integration'` leaves them out."""
    integration = ROOT / "tests" / "integration"
    for item in items:
        if integration in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)
