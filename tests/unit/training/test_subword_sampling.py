"""Subword regularisation (`train.subword_sampling`): a segmentation sampled for every epoch,
kept with the checkpoints so that a training killed and resumed ends as an uninterrupted one
(tests/test_resume.py's kill -9 test)."""

from __future__ import annotations

from collections import Counter

import mlflow
import numpy as np
import pytest

from pipeline import config as config_lib
from pipeline import runner, tracking
from pipeline.config import load_config
from pipeline.data import splits, subwords
from pipeline.errors import ConfigError
from pipeline.stages import prepare, tokenization, train
from pipeline.store.workdir import stage_dir
from pipeline.training import batches
from tests.conftest import tiny_overrides
from tests.integration import test_resume

# Long enough that no text is cut, so every sampled segmentation spells its whole text.
SAMPLING = [*test_resume.SAMPLING, "train.max_length=200"]


def _prepared(config, work):
    prepare.run(config, work)
    tokenization.run(config, work)
    return stage_dir(config, work, "tokenize"), stage_dir(config, work, "prepare")


def _rows(arrays) -> list[tuple[int, ...]]:
    ends = np.cumsum(arrays["lengths"])
    return [tuple(arrays["ids"][end - length:end]) for end, length in zip(ends, arrays["lengths"], strict=True)]


def test_a_rate_outside_0_1_is_refused(sentiment_files, tmp_path):
    with pytest.raises(ConfigError, match=r"train.subword_sampling must be in \[0, 1\]; got 1.5"):
        load_config(None, [*tiny_overrides(sentiment_files, tmp_path), "train.subword_sampling=1.5"])


@pytest.mark.parametrize("override, value", [("tokenizer.model_type=word", "word"),
                                             ("train.distribute=multi_worker", "multi_worker")])
def test_sampling_is_refused_after_a_key_that_rules_it_out_and_gives_way_before_one(
        sentiment_files, tmp_path, override, value):
    base = tiny_overrides(sentiment_files, tmp_path)
    by = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"train.subword_sampling has no effect because {by} is {value}"):
        load_config(None, [*base, override, "train.subword_sampling=0.1"])
    # A preset's sampling and a later word model or cluster: the later key wins, and sampling is off.
    config = load_config(None, [*base, "train.subword_sampling=0.1", override])
    assert config_lib.subword_sampling(config, workers=2 if value == "multi_worker" else 1) == 0


def test_sampling_applies_to_bpe_and_unigram_pieces_in_one_process(sentiment_files, tmp_path):
    for pieces in ("bpe", "unigram"):
        config = load_config(None, [*tiny_overrides(sentiment_files, tmp_path), f"tokenizer.model_type={pieces}",
                                    "train.subword_sampling=0.1"])
        assert config_lib.subword_sampling(config) == 0.1
        assert config_lib.subword_sampling(config, workers=2) == 0


def test_a_language_model_refuses_sampling(tmp_path):
    with pytest.raises(ConfigError, match="train.subword_sampling applies to task sentiment only"):
        load_config(None, ["task=lm", "model.bidirectional=false", f"data.train={tmp_path / 'a.txt'}",
                           "data.tfds=null", "train.subword_sampling=0.1"])


def test_each_epoch_reads_a_sampled_segmentation_of_the_same_texts(sentiment_files, tmp_path):
    config = load_config(None, [*tiny_overrides(sentiment_files, tmp_path), *SAMPLING, "train.epochs=3"])
    tokenized, prepared = _prepared(config, tmp_path / "work")
    partial = train.partial_dir(config, tmp_path / "work")
    sampled = batches.sampled_segmentations(config, tokenized, prepared, partial, 0.3)
    best = splits.load_split(tokenized, "train")
    sp = subwords.load(tokenized / "tokenizer.model")
    texts = [sp.decode(row[1:]) for row in _rows(best)]
    epochs = [_rows(arrays) for arrays in sampled]
    assert len(epochs) == 3
    for rows in epochs:
        assert all(row[0] == subwords.BOS_ID and len(row) <= config.train.max_length for row in rows)
        assert [sp.decode(row[1:]) for row in rows] == texts
        assert sum(map(len, rows)) > best["lengths"].sum(), "dropped merges give more, shorter pieces"
    assert epochs[0] != epochs[1] != epochs[2]

    # Drawn once: a resumed training reads the same segmentations back from the partial folder.
    assert (partial / batches.SEGMENTATIONS).is_file()
    again = batches.sampled_segmentations(config, tokenized, prepared, partial, 0.3)
    for a, b in zip(sampled, again, strict=True):
        np.testing.assert_array_equal(a["ids"], b["ids"])
        np.testing.assert_array_equal(a["lengths"], b["lengths"])


def test_the_batches_of_an_epoch_are_that_epochs_segmentation_with_the_labels(sentiment_files, tmp_path):
    config = load_config(None, [*tiny_overrides(sentiment_files, tmp_path), *SAMPLING, "train.epochs=2"])
    tokenized, prepared = _prepared(config, tmp_path / "work")
    partial = train.partial_dir(config, tmp_path / "work")
    sampled = batches.sampled_segmentations(config, tokenized, prepared, partial, 0.3)
    labels = splits.load_split(tokenized, "train")["labels"]
    made = batches.datasets(config, tokenized, prepared, 0, sampled)
    seen_batches = list(made.train.as_numpy_iterator())
    per_epoch = made.steps_per_epoch
    assert len(seen_batches) == 2 * per_epoch
    for epoch in range(2):
        seen = Counter((tuple(int(t) for t in row if t), int(label))
                       for ids, batch_labels in seen_batches[epoch * per_epoch:(epoch + 1) * per_epoch]
                       for row, label in zip(ids, batch_labels, strict=True))
        assert seen == Counter(zip(_rows(sampled[epoch]), labels.tolist(), strict=True))
    assert made.sampled_token_ratio > 1

    # A training resumed at epoch 1 gets epoch 1's segmentation.
    resumed = batches.datasets(config, tokenized, prepared, 1, sampled).train
    for a, b in zip(resumed.as_numpy_iterator(), seen_batches[per_epoch:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])


def test_a_forced_training_draws_its_segmentations_afresh(sentiment_files, tmp_path):
    config = load_config(None, [*tiny_overrides(sentiment_files, tmp_path), *SAMPLING])
    work = tmp_path / "work"
    tokenized, prepared = _prepared(config, work)
    # Left by a training killed in its first epoch: segmentations, no checkpoint. Each row BOS alone.
    partial = train.partial_dir(config, work)
    partial.mkdir(parents=True)
    count = len(splits.load_split(tokenized, "train")["lengths"])
    np.savez(partial / batches.SEGMENTATIONS, **{f"{key}_{e}": np.full(count, value, np.int32)
                                                for e in range(config.train.epochs)
                                                for key, value in (("ids", subwords.BOS_ID), ("lengths", 1))})
    mlflow.set_experiment("sampling")
    with tracking.start_run("forced"):
        runner.run_stage("train", config, work, force=True)
        run_id = next(r.info.run_id for r in mlflow.search_runs(output_format="list")
                      if r.data.tags.get("mlflow.parentRunId") == tracking.run_id())
    assert mlflow.get_run(run_id).data.metrics["sampled_token_ratio"] > 1
    assert not partial.exists(), "nothing is left behind"
