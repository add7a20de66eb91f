"""Synthetic data with no files: a task whose answer lies a known number of steps back.

After Hochreiter & Schmidhuber's (1997) long-time-lag experiments, each example is `length`
symbols and only the first one decides the label, so a left-to-right reader must carry one bit
across every later symbol. Two tasks:

- `first_token`: a key `k0` or `k1` first, then `length - 1` distractors drawn uniformly from an
  alphabet of `DISTRACTORS` words (`k1 s5 s2 s7 ...`); `k0` is `low`, `k1` is `high`. A key that no
  distractor resembles can be latched by any recurrent cell, a simple RNN included (Keras starts
  its recurrent weights orthogonal, so its gradient does not vanish at once).
- `first_symbol`: every symbol, the first included, is drawn from the same alphabet (`s6 s5 s2
  ...`); the first symbol's half of the alphabet decides the label (`s0`-`s3` `low`, `s4`-`s7`
  `high`). The distractors now look exactly like the key, so the model cannot simply mute them:
  it must store the first symbol and then keep every later one out of the store, which is what an
  LSTM's input and forget gates do.

Read either with `model.bidirectional: false`, or the backward direction sees the first symbol
last, next to the answer.
"""

from __future__ import annotations

import numpy as np

from pipeline.config.schema import SYNTHETIC_TASKS
from pipeline.data.readers import Examples

TASKS = SYNTHETIC_TASKS
KEYS = ("k0", "k1")
LABELS = ("low", "high")
DISTRACTORS = 8


def examples(task: str, *, length: int, count: int, seed: int) -> Examples:
    """`count` examples of `task`, each `length` symbols long, the same for the same seed.

    Args:
        task: `first_token` or `first_symbol` (see the module's docstring).
        length: symbols per example (the answer must be carried across `length - 1` of them).
        count: examples to make; the pipeline carves validation and test from them.
        seed: the random seed (the pipeline passes `data.split_seed`).
    """
    if task not in TASKS:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {', '.join(TASKS)}")
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, len(KEYS), size=count)
    distractors = rng.integers(0, DISTRACTORS, size=(count, length - 1))
    if task == "first_token":
        firsts = [KEYS[k] for k in keys]
    else:  # a symbol from the key's half of the same alphabet
        half = DISTRACTORS // 2
        firsts = [f"s{k * half + s}" for k, s in zip(keys, rng.integers(0, half, size=count), strict=True)]
    texts = [" ".join([first, *(f"s{s}" for s in row)]) for first, row in zip(firsts, distractors, strict=True)]
    return Examples(texts, [LABELS[k] for k in keys])
