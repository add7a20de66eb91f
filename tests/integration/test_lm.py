"""The language-model task through the same stages, CLI and MLflow as sentiment."""

import json
import math
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
import tensorflow_datasets as tfds
from click.testing import CliRunner

from pipeline import models
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data import splits, subwords
from pipeline.errors import DataError
from pipeline.models import generation
from pipeline.stages import evaluate, prepare, tokenization, train
from pipeline.store.workdir import stage_dir
from pipeline.training import callbacks
from tests.conftest import PRESETS_DIR, assert_stage_and_export_score_alike, lm_overrides, write_corpus

SHAKESPEARE = PRESETS_DIR.parent / "data" / "tinyshakespeare" / "input.txt"  # shipped, see data/README.md


def test_carved_splits_are_contiguous_tail_chunks(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config = load_config(None, lm_overrides(corpus, tmp_path))
    prepare.run(config, tmp_path / "work")
    parts = [splits.read_examples(stage_dir(config, tmp_path / "work", "prepare") / f"{s}.jsonl")[0][0]
             for s in ("train", "validation", "test")]
    assert "\n".join([corpus.read_text()]) == "".join(parts)
    assert abs(len(parts[2]) - 0.1 * len(corpus.read_text())) <= 1


def test_tokenizer_is_lossless_for_language_models(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt")
    config = load_config(None, lm_overrides(corpus, tmp_path))
    prepare.run(config, tmp_path / "work")
    tokenization.run(config, tmp_path / "work")
    sp = subwords.load(stage_dir(config, tmp_path / "work", "tokenize") / "tokenizer.model")
    text = "ROMEO:\nthe  night.\n\n  sweet day.\n"
    assert sp.decode(sp.encode(text)) == text


def test_empty_carved_split_is_an_error(tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("a b c d e")
    config = load_config(None, lm_overrides(corpus, tmp_path) + ["data.test_fraction=0.01"])
    with pytest.raises(DataError, match="split test carved from data.train .* is empty"):
        prepare.run(config, tmp_path / "work")


def test_bits_per_char_matches_a_hand_computation():
    keras.utils.set_random_seed(0)
    model = models.build_language_model_lstm(12, embedding_dim=4, units=4, layers=1)
    stream = np.array([2, 5, 6, 7, 5, 9, 10, 4, 6, 11, 5], dtype=np.int32)
    characters = np.array([23])
    metrics = evaluate.language_model_metrics(model, {"ids": stream, "characters": characters},
                                              sequence_length=4, batch_size=2)
    # By hand: windows of 4 inputs, each read from a fresh state ([0:5], [4:9]), then the
    # 2-token tail ([8:11]); every token after the first is predicted exactly once.
    nats = 0.0
    for start, stop in ((0, 5), (4, 9), (8, 11)):
        chunk = stream[start:stop]
        logits = model(chunk[None, :-1]).numpy()[0].astype(np.float64)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        nats -= log_probs[np.arange(len(chunk) - 1), chunk[1:]].sum()
    assert metrics["test_bits_per_char"] == pytest.approx(nats / math.log(2) / 23, rel=1e-5)
    assert metrics["test_loss"] == pytest.approx(nats / 10, rel=1e-5)
    assert metrics["test_perplexity"] == pytest.approx(math.exp(nats / 10), rel=1e-5)


def test_text_shorter_than_a_window_is_a_clear_error(tmp_path):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=3)
    config = load_config(None, lm_overrides(corpus, tmp_path) + ["train.sequence_length=400"])

    prepare.run(config, tmp_path / "work")
    tokenization.run(config, tmp_path / "work")
    with pytest.raises(DataError, match="fewer than one window of train.sequence_length"):
        train.run(config, tmp_path / "work")
    assert not stage_dir(config, tmp_path / "work", "train").exists()


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    corpus = write_corpus(root / "corpus.txt")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    args = ["run", "--workdir", str(root / "work"), "--tracking-uri", uri, "--experiment", "lm"]
    for item in lm_overrides(corpus, root):
        args += ["--set", item]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("lm").experiment_id])
    return root, client, {r.info.run_name: r for r in runs}


def test_lm_run_logs_bits_per_char_and_samples(lm_run):
    _, client, runs = lm_run
    parent = next(r for name, r in runs.items() if name.startswith("tinylm-lstm-2x16-"))
    evaluate_run, train_run = runs["evaluate"], runs["train"]
    for key in ("test_loss", "test_perplexity", "test_bits_per_char"):
        assert parent.data.metrics[key] == evaluate_run.data.metrics[key]
    assert 0 < parent.data.metrics["test_bits_per_char"] < 10
    history = client.get_metric_history(train_run.info.run_id, "val_bits_per_char")
    assert [m.step for m in history] == [0, 1]
    samples = {a.path for a in client.list_artifacts(train_run.info.run_id, "samples")}
    assert samples == {"samples/epoch_000.txt", "samples/epoch_001.txt"}
    text = Path(client.download_artifacts(train_run.info.run_id, "samples/epoch_001.txt")).read_text()
    assert "--- prompt 'ROMEO:', temperature 0.8" in text


def test_a_model_trained_on_windows_is_scored_reading_the_text_in_one_pass(lm_run):
    root, _, _ = lm_run
    config = load_config(None, lm_overrides(root / "corpus.txt", root))
    assert not config.train.stateful
    assert_stage_and_export_score_alike(config, root / "work", root / "models" / "tinylm-lstm-2x16" / "1")


def test_export_generates_the_same_text_in_a_fresh_process(lm_run):
    root, _, _ = lm_run
    work, export_dir = root / "work", root / "models" / "tinylm-lstm-2x16" / "1"
    config = load_config(None, lm_overrides(root / "corpus.txt", root))
    sp = subwords.load(stage_dir(config, work, "tokenize") / "tokenizer.model")
    model = keras.saving.load_model(stage_dir(config, work, "train") / "model.keras")
    generator = generation.Generator(generation.build_decoder(model))
    expected = generation.generate_text(generator, sp, ["ROMEO:", ""], max_tokens=15, temperature=0.9, top_k=5, seed=4)
    script = (
        "import json, sys\n"
        "from pipeline.tools import predict\n"
        "texts, _ = predict.generate(sys.argv[1], ['ROMEO:', ''], max_tokens=15, temperature=0.9, top_k=5, seed=4)\n"
        "import tensorflow as tf\n"
        "model, _ = predict.load(sys.argv[1], 'lm')\n"
        "bits = model.signatures['score'](text=tf.constant(['ROMEO:\\nthe night', '']))['bits_per_char']\n"
        "print(json.dumps({'texts': texts, 'bits': bits.numpy().tolist()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(export_dir)], capture_output=True, text=True, check=True)
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["texts"] == expected
    assert served["texts"][0].startswith("ROMEO:")
    assert served["bits"][0] > 0 and served["bits"][1] == 0.0


def test_generate_command(lm_run):
    root, _, _ = lm_run
    export_dir = str(root / "models" / "tinylm-lstm-2x16")
    args = ["generate", export_dir, "--prompt", "JULIET:", "--max-tokens", "8", "--seed", "1"]
    run, again = CliRunner().invoke(main, args), CliRunner().invoke(main, args)
    assert run.exit_code == 0 and run.output == again.output and run.output.startswith("JULIET:")
    two = CliRunner().invoke(main, ["generate", export_dir, "--prompt", "JULIET:", "--max-tokens", "8", "--seed", "0",
                                    "--num-samples", "2"])
    assert two.exit_code == 0 and two.output.count("--- sample ") == 2
    assert two.output.split("--- sample 2 (seed 1)\n")[1] == run.output, "sample i uses seed + i"
    clamped = CliRunner().invoke(main, ["generate", export_dir, "--top-k", "100000", "--max-tokens", "3",
                                        "--temperature", "0"])
    assert clamped.exit_code == 0 and "larger than the vocabulary" in clamped.output
    bad = CliRunner().invoke(main, ["generate", export_dir, "--temperature", "-0.5"])
    assert bad.exit_code == 1 and "Error: --temperature must be 0 (greedy) or positive" in bad.output


def test_tiny_shakespeare_from_tfds_mock(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "input.txt").write_text("")
    config = load_config(PRESETS_DIR / "shakespeare.yaml",
                         [f"data.manual_dir={manual}", f"data.tfds_data_dir={tmp_path / 'tfds'}"])
    with tfds.testing.mock_data(num_examples=1):
        result = prepare.run(config, tmp_path / "work")
    assert result.counts == {"train": 1, "validation": 1, "test": 1} and result.labels == []


def test_real_tfds_builder_prepares_offline_from_the_placed_file(tmp_path):
    config = load_config(PRESETS_DIR / "shakespeare.yaml",
                         [f"data.manual_dir={SHAKESPEARE.parent}", f"data.tfds_data_dir={tmp_path / 'tfds'}"])
    prepare.run(config, tmp_path / "work")
    stats = json.loads((stage_dir(config, tmp_path / "work", "prepare") / "stats.json").read_text())
    assert [stats[s]["characters"] for s in ("train", "validation", "test")] == [1003854, 55770, 55770]


def test_validation_bits_per_char_counts_the_split_characters_not_its_tokens():
    logs = {"val_loss": 2 * math.log(2)}  # 2 bits a token
    callbacks.BitsPerCharacter(tokens=30, characters=60).on_epoch_end(0, logs)
    assert logs["val_bits_per_char"] == pytest.approx(1.0)  # 60 bits over 60 characters
    assert logs["val_perplexity"] == pytest.approx(4.0)
    assert logs["val_loss"] == 2 * math.log(2)
