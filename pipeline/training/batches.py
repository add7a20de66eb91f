"""Training and validation batches from the encoded splits, sampled segmentations too."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.config import Config
from pipeline.data import inputs
from pipeline.data.splits import load_split, read_examples

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Batches:
    """What a training reads: its batches, and what its callbacks and logs need to know of them."""

    train: tf.data.Dataset
    # None for a stateful language model: `stateful.StreamingValidation` reads `validation_split` in order.
    validation: tf.data.Dataset | None
    steps_per_epoch: int
    labels: list[str] = field(default_factory=list)  # classifiers: the class names, in label-id order
    padding_fraction: float | None = None  # classifiers: the share of padded positions in an epoch's batches
    sampled_token_ratio: float | None = None  # with subword sampling: tokens sampled / tokens of the best segmentation
    tokenizer: Path | None = None  # language models: SentencePiece, for the text samples of each epoch
    validation_split: dict[str, np.ndarray] | None = None  # stateful language models
    validation_tokens: int = 0  # language models: predicted tokens and characters of the validation split,
    validation_characters: int = 0  # for bits per character


def datasets(config: Config, tokenized: Path, prepared: Path, first_epoch: int,
             sampled: list[dict[str, np.ndarray]] | None = None) -> Batches:
    """Training batches for epochs `first_epoch` onwards, validation batches, and what else train needs.

    `sampled`, from `sampled_segmentations`, holds each epoch's `ids` and `lengths` of the training
    split; without it every epoch reads the tokenize stage's best segmentation.
    """
    t = config.train
    epochs = range(first_epoch, t.epochs)
    train, val = load_split(tokenized, "train"), load_split(tokenized, "validation")
    if config.task == "lm" and t.stateful:
        return Batches(
            inputs.lm_stream_dataset(train["ids"], t.sequence_length, t.batch_size, seed=t.seed, epochs=epochs), None,
            inputs.lm_stream_count(len(train["ids"]), t.sequence_length, t.batch_size),
            tokenizer=tokenized / "tokenizer.model", validation_split=val)
    if config.task == "lm":
        return Batches(
            inputs.lm_dataset(train["ids"], t.sequence_length, t.batch_size, shuffle=True, seed=t.seed, epochs=epochs),
            inputs.lm_dataset(val["ids"], t.sequence_length, t.batch_size, shuffle=False),
            inputs.lm_batch_count(len(train["ids"]), t.sequence_length, t.batch_size),
            tokenizer=tokenized / "tokenizer.model", validation_tokens=len(val["ids"]) - 1,
            validation_characters=int(val["characters"].sum()))
    return _classifier_batches(config, train, val, prepared, epochs, sampled)


def _classifier_batches(config: Config, train: dict[str, np.ndarray], val: dict[str, np.ndarray], prepared: Path,
                        epochs: range, sampled: list[dict[str, np.ndarray]] | None) -> Batches:
    t = config.train
    boundaries = inputs.bucket_boundaries(train["lengths"], t.buckets)
    labels = json.loads((prepared / "labels.json").read_text(encoding="utf-8"))
    if sampled:
        # Buckets by each epoch's own lengths, between the bounds of the best segmentation's.
        train_ds = functools.reduce(tf.data.Dataset.concatenate, [
            inputs.classification_dataset({**train, **sampled[epoch]}, t.batch_size, boundaries=boundaries,
                                          shuffle=True, seed=t.seed, epochs=range(epoch, epoch + 1))
            for epoch in epochs])
    else:
        train_ds = inputs.classification_dataset(train, t.batch_size, boundaries=boundaries, shuffle=True,
                                                 seed=t.seed, epochs=epochs)
    val_ds = inputs.classification_dataset(val, t.batch_size, boundaries=boundaries, shuffle=False)
    one_epoch = inputs.classification_dataset(train, t.batch_size, boundaries=boundaries, shuffle=True, seed=t.seed)
    padding = inputs.padding_fraction(one_epoch)
    log.info("length buckets %s; %.1f%% of train positions are padding", boundaries, 100 * padding)
    ratio = None
    if sampled:
        ratio = float(np.mean([s["lengths"].sum() for s in sampled]) / train["lengths"].sum())
        log.info("subword sampling: each epoch's segmentation holds %.2fx the tokens of the best one", ratio)
    return Batches(train_ds, val_ds, inputs.batch_count(len(train["lengths"]), t.batch_size), labels=labels,
                   padding_fraction=padding, sampled_token_ratio=ratio)


SEGMENTATIONS = "segmentations.npz"


def sampled_segmentations(config: Config, tokenized: Path, prepared: Path, partial: Path,
                          alpha: float) -> list[dict[str, np.ndarray]]:
    """The training split's `ids` and `lengths` in a segmentation sampled with `alpha` for each epoch
    (`train.subword_sampling`), BOS first and cut to `train.max_length` as the tokenize stage cuts.

    SentencePiece's sampling cannot be seeded alike in two processes, so the segmentations of all
    epochs are drawn once, when the training starts, and kept in its `partial` folder beside the
    checkpoints: a training resumed after a kill reads them back and ends as the uninterrupted one
    would have. Two separate trainings draw different ones, even with `train.deterministic`.
    """
    from pipeline.data import subwords

    t = config.train
    path = partial / SEGMENTATIONS
    if path.is_file():
        with np.load(path) as saved:
            return [{"ids": saved[f"ids_{e}"], "lengths": saved[f"lengths_{e}"]} for e in range(t.epochs)]
    texts, _ = read_examples(prepared / "train.jsonl")
    sp = subwords.load(tokenized / "tokenizer.model")
    epochs = []
    for _ in range(t.epochs):
        ids, lengths = subwords.pack(subwords.encode(sp, texts, t.max_length, sampling=alpha))
        epochs.append({"ids": ids, "lengths": lengths})
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / f".{SEGMENTATIONS}.tmp"
    with tmp.open("wb") as out:  # a file object: np.savez would add .npz to a name
        np.savez(out, **{f"{key}_{e}": arrays[key] for e, arrays in enumerate(epochs) for key in arrays})
    tmp.rename(path)
    return epochs
