"""tf.data input pipelines over the token arrays written by the tokenize stage.

Classifier batches are grouped by length (`bucket_by_sequence_length`, boundaries from the
training split's length quantiles), so a batch pads to its own longest row instead of the
corpus's, and every row is right-padded with id 0 behind its BOS. Language-model batches are
windows cut from the token stream: no padding at all.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE


def bucket_boundaries(lengths: np.ndarray, buckets: int) -> list[int]:
    """Exclusive upper bounds of `buckets` length buckets holding about equal example counts."""
    if buckets <= 1 or len(lengths) == 0:
        return []
    quantiles = np.quantile(lengths, np.linspace(0, 1, buckets + 1)[1:-1])
    # A bound is exclusive, so length q goes below q + 1; repeated quantiles collapse into one.
    return sorted({int(q) + 1 for q in quantiles} - {int(lengths.max()) + 1})


def classification_dataset(
    arrays: dict[str, np.ndarray],
    batch_size: int,
    *,
    boundaries: list[int],
    shuffle: bool,
    seed: int = 0,
) -> tf.data.Dataset:
    """Batches of `(ids [batch, time], labels [batch])`, bucketed by length and right-padded.

    Args:
        arrays: `ids`, `lengths`, `labels` as written by the tokenize stage.
        boundaries: from `bucket_boundaries` on the training lengths; `[]` pads each batch to
            its longest row without grouping.
        shuffle: shuffle examples before bucketing (within buckets) and batches after it
            (across buckets), differently each epoch. Nothing is dropped: a bucket's last
            partial batch is kept.
    """
    ds = tf.data.Dataset.zip(_sequences(arrays), tf.data.Dataset.from_tensor_slices(arrays["labels"]))
    if shuffle:
        ds = ds.shuffle(len(arrays["lengths"]), seed=seed, reshuffle_each_iteration=True)
    ds = ds.bucket_by_sequence_length(
        element_length_func=lambda ids, label: tf.shape(ids)[0],
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padded_shapes=([None], []),
        padding_values=(0, 0),
    )
    batches = bucketed_batch_count(arrays["lengths"], boundaries, batch_size)
    if shuffle:
        ds = ds.shuffle(batches, seed=seed + 1, reshuffle_each_iteration=True)
    # Bucketing hides the batch count from tf.data; stating it gives Keras a finite progress bar.
    return ds.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(AUTOTUNE)


def bucketed_batch_count(lengths: np.ndarray, boundaries: list[int], batch_size: int) -> int:
    """How many batches bucketing yields: each bucket's examples, its last batch kept partial."""
    buckets = np.searchsorted(np.array(boundaries, dtype=np.int64), lengths, side="right")
    counts = np.bincount(buckets, minlength=len(boundaries) + 1)
    return int(sum(-(-c // batch_size) for c in counts))


def ordered_batches(arrays: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Batches of ids in file order, each right-padded to its own longest row (for predict)."""
    return _sequences(arrays).padded_batch(batch_size, padded_shapes=[None], padding_values=0).prefetch(AUTOTUNE)


def _sequences(arrays: dict[str, np.ndarray]) -> tf.data.Dataset:
    """One variable-length int32 tensor per example, sliced out of the packed ids."""
    ids = tf.constant(arrays["ids"], dtype=tf.int32)
    lengths = arrays["lengths"].astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((starts, lengths))
    return ds.map(lambda start, length: ids[start:start + length], num_parallel_calls=AUTOTUNE,
                  deterministic=True)


def skip_epochs(dataset: tf.data.Dataset, epochs: int) -> None:
    """Iterate `dataset` `epochs` times, so a reshuffling dataset moves on to the next epoch's order.

    A resumed training calls this for the epochs it already did: a seeded shuffle's order for
    epoch k is the order of the dataset's (k+1)-th pass, whatever process runs it.
    """
    for _ in range(epochs):
        for _ in dataset:
            pass


def padding_fraction(dataset: tf.data.Dataset) -> float:
    """The share of padded positions over one pass of a `(ids, labels)` dataset."""
    padded = total = 0
    for ids, _ in dataset:
        total += int(tf.size(ids))
        padded += int(tf.reduce_sum(tf.cast(ids == 0, tf.int32)))
    return padded / max(total, 1)


def lm_windows(stream: np.ndarray, sequence_length: int) -> np.ndarray:
    """Non-overlapping windows of `sequence_length + 1` tokens: inputs and shifted targets.

    Window i covers tokens `[i * L, i * L + L + 1)`, so consecutive windows share one token and
    every token but the first is a target exactly once.
    """
    count = (len(stream) - 1) // sequence_length
    if count < 1:
        raise DataError(
            f"the token stream has {len(stream)} tokens, fewer than one window of "
            f"train.sequence_length+1={sequence_length + 1}; lower train.sequence_length or add text"
        )
    starts = np.arange(count) * sequence_length
    return stream[starts[:, None] + np.arange(sequence_length + 1)[None, :]]


def lm_dataset(
    stream: np.ndarray, sequence_length: int, batch_size: int, *, shuffle: bool, seed: int = 0
) -> tf.data.Dataset:
    """Batches of `(inputs [batch, L], targets [batch, L])` cut from one token stream."""
    windows = lm_windows(stream, sequence_length)
    ds = tf.data.Dataset.from_tensor_slices(windows)
    if shuffle:
        ds = ds.shuffle(len(windows), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda w: (w[:, :-1], w[:, 1:]), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
