"""`data.synthetic`: the long-range task, made without files, through the normal stages."""

import json

import pytest

from pipeline.config import load_config
from pipeline.data import synthetic
from pipeline.errors import ConfigError
from pipeline.stages import prepare, tokenization, train
from pipeline.store import cache
from pipeline.store.workdir import stage_dir
from tests.conftest import PRESETS_DIR

LONG_RANGE = PRESETS_DIR / "long_range.yaml"


def test_only_the_first_symbol_decides_the_label():
    made = synthetic.examples("first_token", length=12, count=400, seed=5)
    assert made == synthetic.examples("first_token", length=12, count=400, seed=5)
    assert all(len(text.split()) == 12 for text in made.texts)
    assert {label for label in made.labels} == {"low", "high"}
    assert all(label == {"k0": "low", "k1": "high"}[text.split()[0]]
               for text, label in zip(made.texts, made.labels, strict=True))
    assert all(word.startswith("s") for text in made.texts for word in text.split()[1:])
    # The rest is noise: the last symbol says nothing about the label.
    last_low = [text.split()[-1] in {"s0", "s1", "s2", "s3"} for text in made.texts]
    agreement = sum(low == (label == "low") for low, label in zip(last_low, made.labels, strict=True)) / 400
    assert 0.4 < agreement < 0.6


def test_first_symbol_hides_the_key_among_its_own_alphabet():
    made = synthetic.examples("first_symbol", length=12, count=400, seed=5)
    assert made == synthetic.examples("first_symbol", length=12, count=400, seed=5)
    assert {word for text in made.texts for word in text.split()} == {f"s{i}" for i in range(8)}
    assert all(label == ("low" if text.split()[0] in {"s0", "s1", "s2", "s3"} else "high")
               for text, label in zip(made.texts, made.labels, strict=True))
    assert {text.split()[0] for text in made.texts} == {f"s{i}" for i in range(8)}  # every symbol starts some


def test_synthetic_keys_are_checked_and_keyed(tmp_path):
    config = load_config(LONG_RANGE)
    longer = load_config(LONG_RANGE, ["data.synthetic_length=50"])
    assert cache.stage_keys(config)["prepare"] != cache.stage_keys(longer)["prepare"]
    with pytest.raises(ConfigError, match="data.synthetic must be first_token, first_symbol or null"):
        load_config(LONG_RANGE, ["data.synthetic=adding"])
    with pytest.raises(ConfigError, match="data.train has no effect because data.synthetic is first_token"):
        load_config(LONG_RANGE, ["data.train=train.txt"])
    with pytest.raises(ConfigError, match="data.synthetic_length has no effect because data.synthetic is null"):
        load_config(None, ["data.synthetic_length=10"])


def test_an_lstm_learns_the_task_at_small_length(tmp_path):
    config = load_config(LONG_RANGE, ["data.synthetic_length=10", "data.synthetic_examples=1000", "train.epochs=6",
                                      "model.units=16", "train.learning_rate=0.01", f"export.dir={tmp_path}"])
    work = tmp_path / "work"
    counts = prepare.run(config, work).counts
    assert counts == {"train": 800, "validation": 100, "test": 100}
    tokenization.run(config, work)
    stats = json.loads((stage_dir(config, work, "tokenize") / "stats.json").read_text())
    assert stats["vocab_size"] == 14 and stats["train"]["unknown_tokens"] == 0  # 4 reserved ids, 2 keys, 8 others
    result = train.run(config, work)
    # Chance is 0.5; the answer is 9 steps back.
    assert result.best_metrics["val_accuracy"] > 0.85, result.best_metrics
