"""TFDS code paths, offline: `tfds.testing.mock_data` for the examples, and the real
download pre-check for the failure a machine without network meets."""

import socket
import time

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from pipeline.config import load_config
from pipeline.data.tfds_reader import read_tfds
from pipeline.errors import DataError
from pipeline.stages import prepare
from tests.conftest import PRESETS_DIR


def _placed(tmp_path, *names):
    """A manual folder holding stand-ins for the downloads (mock_data never opens them)."""
    manual = tmp_path / "manual"
    manual.mkdir(exist_ok=True)
    for name in names:
        (manual / name).write_bytes(b"")
    return manual


def _offline(tmp_path, manual):
    return [f"data.manual_dir={manual}", f"data.tfds_data_dir={tmp_path / 'tfds'}"]


def test_imdb_preset_prepares_from_tfds(tmp_path):
    manual = _placed(tmp_path, "aclImdb_v1.tar.gz")
    config = load_config(PRESETS_DIR / "imdb.yaml", _offline(tmp_path, manual))
    with tfds.testing.mock_data(num_examples=40):
        result = prepare.run(config, tmp_path / "work")
    assert result.labels == ["neg", "pos"]
    assert result.counts["test"] == 40 and result.counts["train"] + result.counts["validation"] == 40


def test_glue_sst2_reads_the_sentence_feature(tmp_path):
    manual = _placed(tmp_path, "SST-2.zip")
    config = load_config(PRESETS_DIR / "sst2.yaml", _offline(tmp_path, manual))
    with tfds.testing.mock_data(num_examples=30):
        result = prepare.run(config, tmp_path / "work")
    assert result.labels == ["negative", "positive"]
    assert set(result.counts) == {"train", "validation", "test"}


def test_hidden_labels_are_refused(tmp_path):
    manual = _placed(tmp_path, "SST-2.zip")

    def hidden(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(
            {"sentence": ["a", "b"], "label": tf.constant([-1, -1], tf.int64), "idx": [0, 1]})

    with tfds.testing.mock_data(as_dataset_fn=hidden), pytest.raises(DataError, match="hidden labels"):
        read_tfds("glue/sst2", "test", text_field="sentence", data_dir=tmp_path / "tfds", manual_dir=manual)


def test_missing_text_feature_names_the_choices(tmp_path):
    manual = _placed(tmp_path, "aclImdb_v1.tar.gz")
    with tfds.testing.mock_data(num_examples=2), pytest.raises(DataError, match="set data.label_field"):
        read_tfds("imdb_reviews", "train", label_field="stars", data_dir=tmp_path / "tfds", manual_dir=manual)


def test_unreachable_download_fails_at_once_with_the_offline_recipe(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(DataError) as error:
        read_tfds("imdb_reviews", "train", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "manual")
    message = str(error.value)
    assert "could not download TFDS dataset imdb_reviews" in message
    assert f"place aclImdb_v1.tar.gz in {tmp_path / 'manual'}" in message
    assert "configs/sst2_local.yaml" in message and "\n" not in message


def _network_reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_network_reachable("ai.stanford.edu"), reason="this machine can download; nothing to check")
def test_real_offline_machine_fails_within_seconds(tmp_path):
    started = time.monotonic()
    with pytest.raises(DataError, match="could not download TFDS dataset imdb_reviews"):
        read_tfds("imdb_reviews", "train", data_dir=tmp_path / "tfds")
    assert time.monotonic() - started < 10
