"""The files stages hand on: prepared splits (JSONL) and encoded splits (NPZ)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SPLITS = ("train", "validation", "test")


def read_examples(path: Path) -> tuple[list[str], list[int]]:
    """Read a split written by this stage back as texts and label ids (empty for LM)."""
    texts, labels = [], []
    with path.open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts.append(record["text"])
            if "label" in record:
                labels.append(record["label"])
    return texts, labels


def load_split(directory: Path, name: str) -> dict[str, np.ndarray]:
    """The arrays of one encoded split, as written by `run`."""
    with np.load(directory / f"{name}.npz") as data:
        return {key: data[key] for key in data.files}
