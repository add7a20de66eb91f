"""tf.data input pipelines over the token arrays written by the tokenize stage.

Classifier batches are grouped by length (buckets bounded by the training split's length
quantiles), so a batch pads to its own longest row instead of the corpus's, and every row is
right-padded with id 0 behind its BOS. Language-model batches are windows cut from the token
stream: no padding at all.
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
    """Batches of `(ids [batch, time], labels [batch])`, grouped by length and right-padded.

    Examples are ordered by length bucket and cut into consecutive batches, so a batch holds one
    bucket's rows, or two neighbouring buckets' where one runs out. Only the epoch's last batch
    is partial: `tf.data`'s `bucket_by_sequence_length` leaves a partial batch per bucket, and on
    a CPU a half-full batch costs as much per time step as a full one.

    Args:
        arrays: `ids`, `lengths`, `labels` as written by the tokenize stage.
        boundaries: from `bucket_boundaries` on the training lengths; `[]` pads each batch to
            its longest row without grouping.
        shuffle: without it, one pass ordered by bucket (file order within a bucket). With it,
            the batches of every epoch in `epochs`, back to back (`batch_count` each): examples
            are shuffled before grouping (within buckets) and batches after it (across buckets),
            in an order that depends only on `seed` and the epoch number, so a training resumed
            at epoch k sees exactly what an uninterrupted one would. Nothing is dropped.
    """
    count = len(arrays["lengths"])
    batches = batch_count(count, batch_size)
    sequences = _sequences(arrays)
    labels = tf.constant(arrays["labels"], dtype=tf.int32)
    buckets = tf.constant(np.searchsorted(np.array(boundaries, dtype=np.int64), arrays["lengths"], side="right"))

    def grouped(order):
        # A stable sort keeps the order within each bucket.
        return tf.gather(order, tf.argsort(tf.gather(buckets, order), stable=True))

    def batch(rows):
        return tf.gather(sequences, rows).to_tensor(0), tf.gather(labels, rows)

    if not shuffle:
        rows = grouped(tf.range(count, dtype=tf.int64))
        ds = tf.data.Dataset.from_tensor_slices(rows).batch(batch_size)
        return ds.map(batch, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)

    def one_epoch(epoch):
        rows = grouped(tf.random.experimental.stateless_shuffle(tf.range(count, dtype=tf.int64),
                                                                seed=_epoch_seed(seed, epoch)))
        starts = tf.random.experimental.stateless_shuffle(tf.range(0, count, batch_size, dtype=tf.int64),
                                                          seed=_epoch_seed(seed + 1, epoch))
        return tf.data.Dataset.from_tensor_slices(starts).map(lambda start: batch(rows[start:start + batch_size]),
                                                              num_parallel_calls=AUTOTUNE)

    return _epochs(epochs, one_epoch, batches).prefetch(AUTOTUNE)


def _epochs(epochs: range, one_epoch, batches_per_epoch: int) -> tf.data.Dataset:
    """`one_epoch(epoch)` for every epoch in `epochs`, back to back, with the batch count stated
    (flat_map hides it), so Keras knows each pass's length."""
    numbers = tf.data.Dataset.from_tensor_slices(np.array(list(epochs), dtype=np.int64))
    total = batches_per_epoch * len(epochs)
    return numbers.flat_map(one_epoch).apply(tf.data.experimental.assert_cardinality(total))


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])


def batch_count(examples: int, batch_size: int) -> int:
    """Batches per epoch of `examples` examples: the last one kept partial."""
    return -(-examples // batch_size)


def ordered_batches(arrays: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Batches of ids in file order, each right-padded to its own longest row (for predict)."""
    sequences = _sequences(arrays)
    rows = tf.data.Dataset.range(len(arrays["lengths"])).batch(batch_size)
    batches = rows.map(lambda batch: tf.gather(sequences, batch).to_tensor(0), num_parallel_calls=AUTOTUNE)
    return batches.prefetch(AUTOTUNE)


def _sequences(arrays: dict[str, np.ndarray]) -> tf.RaggedTensor:
    """The packed id stream as one ragged row per example; gathering rows and `to_tensor(0)`
    gives a right-padded batch."""
    return tf.RaggedTensor.from_row_lengths(arrays["ids"].astype(np.int32), arrays["lengths"].astype(np.int64))


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
    return batch_count((stream_length - 1) // sequence_length, batch_size)


def lm_stream_dataset(stream: np.ndarray, sequence_length: int, batch_size: int, *, seed: int = 0,
                      epochs: range = range(1)) -> tf.data.Dataset:
    """Batches of `(inputs [batch, L], targets [batch, L])` for training that carries states.

    Each epoch cuts the stream into `batch_size` contiguous streams, one per row, and walks them
    window by window: row r of batch k+1 continues row r of batch k. The streams start at an
    offset in `[0, L)` drawn from `seed` and the epoch number only (so a resumed training sees the
    same batches), which moves every window boundary from one epoch to the next. Every batch is
    full; the at most `batch_size * L + L` tokens the streams leave out move with the offset.
    """
    windows = lm_stream_count(len(stream), sequence_length, batch_size)
    span = windows * sequence_length
    tokens = tf.constant(stream.astype(np.int32))

    def one_epoch(epoch):
        offset = tf.random.stateless_uniform([], _epoch_seed(seed, epoch), maxval=sequence_length, dtype=tf.int64)
        starts = offset + tf.range(batch_size, dtype=tf.int64) * span

        def batch(k):
            window = tf.gather(tokens, starts[:, None] + k * sequence_length + tf.range(sequence_length + 1,
                                                                                         dtype=tf.int64)[None, :])
            return window[:, :-1], window[:, 1:]

        return tf.data.Dataset.range(windows).map(batch)

    return _epochs(epochs, one_epoch, windows).prefetch(AUTOTUNE)


def lm_stream_count(stream_length: int, sequence_length: int, batch_size: int) -> int:
    """Windows per stream, which is batches per epoch, of `lm_stream_dataset`."""
    windows = (stream_length - sequence_length) // (batch_size * sequence_length)
    if windows < 1:
        raise DataError(
            f"the training stream has {stream_length} tokens, fewer than train.batch_size={batch_size} streams "
            f"of one window of train.sequence_length={sequence_length} tokens plus an offset of up to "
            f"{sequence_length} ({(batch_size + 1) * sequence_length} tokens); lower train.batch_size or "
            f"train.sequence_length, or add text"
        )
    return windows
