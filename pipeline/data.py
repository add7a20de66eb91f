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
    epochs: range = range(1),
) -> tf.data.Dataset:
    """Batches of `(ids [batch, time], labels [batch])`, bucketed by length and right-padded.

    Args:
        arrays: `ids`, `lengths`, `labels` as written by the tokenize stage.
        boundaries: from `bucket_boundaries` on the training lengths; `[]` pads each batch to
            its longest row without grouping.
        shuffle: without it, one pass in file order. With it, the batches of every epoch in
            `epochs`, back to back (`bucketed_batch_count` batches each): examples are shuffled
            before bucketing (within buckets) and batches after it (across buckets), in an order
            that depends only on `seed` and the epoch number, so a training resumed at epoch k
            sees exactly what an uninterrupted one would. Nothing is dropped: a bucket's last
            partial batch is kept.
    """
    count = len(arrays["lengths"])
    batches = bucketed_batch_count(arrays["lengths"], boundaries, batch_size)
    examples = _examples(arrays)
    if not shuffle:
        return _bucketed(tf.data.Dataset.range(count).map(examples), boundaries, batch_size, batches).prefetch(AUTOTUNE)

    def one_epoch(epoch):
        order = tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64), seed=_epoch_seed(seed, epoch))
        ds = _bucketed(tf.data.Dataset.from_tensor_slices(order).map(examples), boundaries, batch_size, batches)
        # A fresh, equally seeded shuffle per epoch: batch order changes with the epoch's contents only.
        return ds.shuffle(batches, seed=seed + 1, reshuffle_each_iteration=False)

    return _epochs(epochs, one_epoch, batches).prefetch(AUTOTUNE)


def _epochs(epochs: range, one_epoch, batches_per_epoch: int) -> tf.data.Dataset:
    """`one_epoch(epoch)` for every epoch in `epochs`, back to back, with the batch count stated
    (flat_map hides it), so Keras knows each pass's length."""
    numbers = tf.data.Dataset.from_tensor_slices(np.array(list(epochs), dtype=np.int64))
    total = batches_per_epoch * len(epochs)
    return numbers.flat_map(one_epoch).apply(tf.data.experimental.assert_cardinality(total))


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])


def _bucketed(examples: tf.data.Dataset, boundaries: list[int], batch_size: int, batches: int) -> tf.data.Dataset:
    ds = examples.bucket_by_sequence_length(
        element_length_func=lambda ids, label: tf.shape(ids)[0],
        bucket_boundaries=boundaries,
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
        padded_shapes=([None], []),
        padding_values=(0, 0),
    )
    # Bucketing hides the batch count from tf.data; stating it gives Keras a finite progress bar.
    return ds.apply(tf.data.experimental.assert_cardinality(batches))


def bucketed_batch_count(lengths: np.ndarray, boundaries: list[int], batch_size: int) -> int:
    """How many batches bucketing yields: each bucket's examples, its last batch kept partial."""
    buckets = np.searchsorted(np.array(boundaries, dtype=np.int64), lengths, side="right")
    counts = np.bincount(buckets, minlength=len(boundaries) + 1)
    return int(sum(-(-c // batch_size) for c in counts))


def ordered_batches(arrays: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Batches of ids in file order, each right-padded to its own longest row (for predict)."""
    example = _examples(arrays)
    sequences = tf.data.Dataset.range(len(arrays["lengths"])).map(lambda i: example(i)[0])
    return sequences.padded_batch(batch_size, padded_shapes=[None], padding_values=0).prefetch(AUTOTUNE)


def _examples(arrays: dict[str, np.ndarray]):
    """A function from example index to `(ids, label)`, ids sliced out of the packed stream."""
    ids = tf.constant(arrays["ids"], dtype=tf.int32)
    lengths = tf.constant(arrays["lengths"], dtype=tf.int64)
    starts = tf.constant(np.concatenate([[0], np.cumsum(arrays["lengths"])[:-1]]), dtype=tf.int64)
    labels = tf.constant(arrays["labels"] if "labels" in arrays else np.zeros(len(arrays["lengths"])), dtype=tf.int32)

    def example(index):
        return ids[starts[index]:starts[index] + lengths[index]], labels[index]

    return example


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
    stream: np.ndarray, sequence_length: int, batch_size: int, *, shuffle: bool, seed: int = 0,
    epochs: range = range(1),
) -> tf.data.Dataset:
    """Batches of `(inputs [batch, L], targets [batch, L])` cut from one token stream.

    With `shuffle`, the windows of every epoch in `epochs` back to back, each epoch in an order
    that depends only on `seed` and the epoch number (see `classification_dataset`).
    """
    windows = tf.constant(lm_windows(stream, sequence_length))
    if shuffle:
        def one_epoch(epoch):
            order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(windows)[0]), _epoch_seed(seed, epoch))
            # Batched within the epoch, so no batch straddles two epochs.
            return tf.data.Dataset.from_tensor_slices(tf.gather(windows, order)).batch(batch_size)

        ds = _epochs(epochs, one_epoch, lm_batch_count(len(stream), sequence_length, batch_size))
    else:
        ds = tf.data.Dataset.from_tensor_slices(windows).batch(batch_size)
    ds = ds.map(lambda w: (w[:, :-1], w[:, 1:]), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def lm_batch_count(stream_length: int, sequence_length: int, batch_size: int) -> int:
    """Batches per epoch of `lm_dataset`: the windows, the last batch kept partial."""
    return -(-((stream_length - 1) // sequence_length) // batch_size)
