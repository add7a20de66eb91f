"""Synthetic data with no files: a task whose answer lies a known number of steps back.

`first_token`, after Hochreiter & Schmidhuber's (1997) long-time-lag experiments: each example is
`length` symbols, a key `k0` or `k1` first, then `length - 1` distractors drawn uniformly from an
alphabet of `DISTRACTORS` words (`k1 s5 s2 s7 ...`). The key alone decides the label (`k0`: `low`,
`k1`: `high`), so a left-to-right reader must carry one bit across every distractor: an LSTM's
cell state can, a simple RNN's gradient vanishes long before. Read it with
`model.bidirectional: false`, or the backward direction sees the key last, next to the answer.
"""

from __future__ import annotations

import numpy as np

from pipeline.readers import Examples

TASKS = ("first_token",)
KEYS = ("k0", "k1")
LABELS = ("low", "high")
DISTRACTORS = 8


def examples(task: str, *, length: int, count: int, seed: int) -> Examples:
    """`count` examples of `task`, each `length` symbols long, the same for the same seed.

    Args:
        task: `first_token`.
        length: symbols per example (the key must be carried across `length - 1` of them).
        count: examples to make; the pipeline carves validation and test from them.
        seed: the random seed (the pipeline passes `data.split_seed`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, len(KEYS), size=count)
    distractors = rng.integers(0, DISTRACTORS, size=(count, length - 1))
    texts = [" ".join([KEYS[k], *(f"s{s}" for s in row)]) for k, row in zip(keys, distractors, strict=True)]
    return Examples(texts, [LABELS[k] for k in keys])
