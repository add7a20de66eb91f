import numpy as np
import pytest

from pipeline.data import inputs, subwords

rng = np.random.default_rng(0)


@pytest.fixture
def arrays():
    # 203 sequences of 1..40 tokens, BOS first, ids >= 4: like the tokenize stage writes.
    sequences = [[subwords.BOS_ID] + list(rng.integers(4, 50, size=n - 1)) for n in rng.integers(1, 41, size=203)]
    ids, lengths = subwords.pack(sequences)
    return {"ids": ids, "lengths": lengths, "labels": np.arange(203, dtype=np.int32)}


def test_boundaries_from_quantiles(arrays):
    boundaries = inputs.bucket_boundaries(arrays["lengths"], 5)
    assert boundaries == sorted(boundaries) and len(boundaries) == 4
    counts = np.bincount(np.searchsorted(boundaries, arrays["lengths"], side="right"))
    assert counts.min() > 0.1 * len(arrays["lengths"]), "buckets hold comparable counts"


@pytest.mark.parametrize("buckets", [1, 5])
def test_batches_are_right_padded_complete_and_never_empty(arrays, buckets):
    boundaries = inputs.bucket_boundaries(arrays["lengths"], buckets)
    dataset = inputs.classification_dataset(arrays, 16, boundaries=boundaries, shuffle=True, seed=3)
    seen = []
    for ids, labels in dataset:
        mask = ids.numpy() != 0
        # Right-padded: once a row's mask turns off it stays off.
        assert (np.diff(mask.astype(int), axis=1) <= 0).all()
        assert mask[:, 0].all(), "BOS starts every row, so no row is fully masked"
        lengths = mask.sum(axis=1)
        assert (lengths == arrays["lengths"][labels.numpy()]).all(), "rows keep their own tokens"
        seen += labels.numpy().tolist()
    assert sorted(seen) == list(range(203)), "nothing dropped, nothing repeated"
    batches = list(dataset)
    assert len(batches) == inputs.batch_count(203, 16) == 13
    assert [len(labels) for _, labels in batches].count(16) == 12, "only one batch is partial"


def test_bucketing_cuts_padding(arrays):
    padded_to_longest = inputs.padding_fraction(inputs.classification_dataset(arrays, 16, boundaries=[], shuffle=True))
    bucketed = inputs.padding_fraction(inputs.classification_dataset(
        arrays, 16, boundaries=inputs.bucket_boundaries(arrays["lengths"], 5), shuffle=True))
    assert bucketed < padded_to_longest / 2


def test_each_epoch_has_its_own_order_fixed_by_seed_and_epoch(arrays):
    def order(dataset):
        return [label for _, labels in dataset for label in labels.numpy().tolist()]

    dataset = inputs.classification_dataset(arrays, 16, boundaries=[10, 20], shuffle=True, seed=1, epochs=range(2))
    assert dataset.cardinality() == 2 * inputs.batch_count(203, 16)
    two_epochs = order(dataset)
    first, second = two_epochs[:203], two_epochs[203:]
    assert sorted(first) == sorted(second) == list(range(203)) and first != second
    # A training resumed at epoch 1 builds its dataset anew and sees the same epoch-1 order.
    resumed = order(inputs.classification_dataset(arrays, 16, boundaries=[10, 20], shuffle=True, seed=1,
                                                epochs=range(1, 2)))
    assert resumed == second
    other_seed = order(inputs.classification_dataset(arrays, 16, boundaries=[10, 20], shuffle=True, seed=2))
    assert other_seed != first


def test_lm_epochs_have_their_own_order_fixed_by_seed_and_epoch():
    stream = np.arange(200)

    def starts(epochs):
        ds = inputs.lm_dataset(stream, 4, batch_size=5, shuffle=True, seed=3, epochs=epochs)
        return [int(row[0]) for inputs, _ in ds for row in inputs.numpy()]

    both = starts(range(2))
    assert len(both) == 2 * 49 and both[:49] != both[49:]
    batches = inputs.lm_dataset(stream, 4, batch_size=5, shuffle=True, seed=3, epochs=range(2))
    assert [len(inputs) for inputs, _ in batches] == 2 * ([5] * 9 + [4]), "no batch straddles two epochs"
    assert starts(range(1, 2)) == both[49:]
    assert inputs.lm_dataset(stream, 4, batch_size=5, shuffle=True, seed=3, epochs=range(2)).cardinality() == 20
    assert inputs.lm_batch_count(200, 4, 5) == 10


def test_ordered_batches_keep_file_order(arrays):
    rows = [row for batch in inputs.ordered_batches(arrays, 32) for row in batch.numpy()]
    assert len(rows) == 203
    assert [int((row != 0).sum()) for row in rows] == arrays["lengths"].tolist()


def test_lm_windows_align_inputs_and_targets():
    stream = np.arange(11)
    windows = inputs.lm_windows(stream, 3)
    assert windows.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    x, targets = next(iter(inputs.lm_dataset(stream, 3, batch_size=8, shuffle=False)))
    assert x.numpy().tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert targets.numpy().tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_a_batch_holds_one_bucket_or_two_neighbouring_ones(arrays):
    boundaries = [10, 20, 30]
    for shuffle in (True, False):
        for _, labels in inputs.classification_dataset(arrays, 16, boundaries=boundaries, shuffle=shuffle, seed=5):
            buckets = np.searchsorted(boundaries, arrays["lengths"][labels.numpy()], side="right")
            assert buckets.max() - buckets.min() <= 1
