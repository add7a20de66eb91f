"""Stage 1, prepare: read the raw source and normalise it, one file per split.

Reads: a tensorflow-datasets split (`data.tfds`) or the user's local files (`data.train`, ...),
or makes synthetic examples instead (`data.synthetic`, see `pipeline.data.synthetic`).
Writes to `<workdir>/prepare/`:
  - `train.jsonl`, `validation.jsonl`, `test.jsonl`: one `{"text": ..., "label": id}` per line
    (`label` is absent for `task: lm`);
  - `labels.json`: the label vocabulary, id order (sentiment only);
  - `stats.json`: per split, the example count, the class balance and length quantiles; the
    encoding each local file was read in (`encodings`, split -> encoding -> files).
A split that is not given is carved from train: stratified and seeded for sentiment, a
contiguous tail of the text for language modelling.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data import synthetic
from pipeline.data.readers import Examples, read_local
from pipeline.data.splits import SPLITS
from pipeline.data.tfds_reader import read_tfds
from pipeline.errors import DataError
from pipeline.stages.results import Logged
from pipeline.store.workdir import require_stage, stage_dir, stage_output

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PrepareResult:
    """What the prepare stage wrote."""

    output_dir: Path
    counts: dict[str, int]
    labels: list[str]
    skipped_blank: int

    def logged(self) -> Logged:
        return Logged(metrics={**{f"{k}_examples": v for k, v in self.counts.items()},
                               "skipped_blank": self.skipped_blank},
                      artifacts=[(self.output_dir / name, "prepare") for name in ("stats.json", "labels.json")])


def run(config: Config, workdir: str | Path) -> PrepareResult:
    """Read every split, carve the missing ones, and write them under `<workdir>/prepare/`."""
    if config.data.synthetic:  # made, not read: train only, validation and test carved from it
        splits = {"train": synthetic.examples(config.data.synthetic, length=config.data.synthetic_length,
                                              count=config.data.synthetic_examples, seed=config.data.split_seed)}
    else:
        splits = {name: _read_split(config, name) for name in SPLITS if _source(config, name)}
    skipped = sum(s.skipped_blank for s in splits.values())
    # Files per encoding, as read: with data.encoding=auto this records what was detected.
    encodings = {name: s.encodings for name, s in splits.items() if s.encodings}
    if skipped:
        log.info("skipped %d blank texts", skipped)
    splits = _carve_missing(config, splits)
    labels = _label_vocabulary(config, splits)
    with stage_output(config, workdir, "prepare") as out:
        for name, examples in splits.items():
            _write_split(out / f"{name}.jsonl", examples, labels)
        (out / "labels.json").write_text(json.dumps(labels, ensure_ascii=False), encoding="utf-8")
        stats = {name: split_stats(examples) for name, examples in splits.items()}
        stats["skipped_blank"] = skipped
        stats["encodings"] = encodings
        (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
    counts = {name: len(examples.texts) for name, examples in splits.items()}
    log.info("prepared %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
    return PrepareResult(stage_dir(config, workdir, "prepare"), counts, labels, skipped)


def load(config: Config, workdir: str | Path) -> PrepareResult:
    """The result of a finished prepare stage, read back from its files."""
    out = require_stage(config, workdir, "prepare", needed_by="pipeline run")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    labels = json.loads((out / "labels.json").read_text(encoding="utf-8"))
    counts = {name: stats[name]["examples"] for name in SPLITS if name in stats}
    return PrepareResult(out, counts, labels, stats["skipped_blank"])


def split_stats(examples: Examples) -> dict:
    """Count, class balance and character-length quantiles of one split."""
    lengths = np.array([len(t) for t in examples.texts])
    stats = {
        "examples": len(examples.texts),
        "characters": int(lengths.sum()),
        "length_quantiles": {
            f"p{q}": int(np.percentile(lengths, q)) for q in (0, 25, 50, 75, 90, 99, 100)
        },
    }
    if examples.labels and examples.labels[0] is not None:
        values, counts = np.unique(np.array(examples.labels, dtype=object).astype(str), return_counts=True)
        stats["class_balance"] = {str(v): int(c) for v, c in zip(values, counts, strict=True)}
    return stats


def _source(config: Config, split: str) -> str | None:
    return getattr(config.data, split)


def _read_split(config: Config, split: str) -> Examples:
    data = config.data
    source = _source(config, split)
    if data.tfds:
        examples = read_tfds(
            data.tfds, source, task=config.task, text_field=data.text_field,
            label_field=data.label_field, data_dir=data.tfds_data_dir, manual_dir=data.manual_dir,
        )
    else:
        examples = read_local(
            source, data.format, task=config.task, encoding=data.encoding,
            text_field=data.text_field, label_field=data.label_field, document=data.document,
        )
    if not examples.texts:
        raise DataError(f"{source}: split {split} has no non-blank texts; check data.{split}")
    return examples


def _carve_missing(config: Config, splits: dict[str, Examples]) -> dict[str, Examples]:
    train = splits["train"]
    wanted = {
        name: getattr(config.data, f"{name}_fraction")
        for name in ("validation", "test")
        if name not in splits and getattr(config.data, f"{name}_fraction") > 0
    }
    if not wanted:
        return splits
    total = sum(wanted.values())
    if config.task == "lm":
        carved = _carve_tail(train, wanted)
    else:
        carved = _carve_stratified(train, wanted, seed=config.data.split_seed)
    for name, examples in carved.items():
        if not examples.texts:
            raise DataError(
                f"split {name} carved from data.train ({total:.0%} of it) is empty; "
                f"give more training data or set data.{name} to a file"
            )
    log.info("carved %s from train", ", ".join(f"{k} ({v:.0%})" for k, v in wanted.items()))
    return {**splits, **carved}


def _carve_stratified(train: Examples, fractions: dict[str, float], seed: int) -> dict[str, Examples]:
    """Split off each fraction per class, so every split keeps train's class balance."""
    from sklearn.model_selection import train_test_split

    remaining = np.arange(len(train.texts))
    labels = np.array(train.labels, dtype=object).astype(str)
    carved = {}
    left = 1.0
    for name, fraction in fractions.items():
        try:
            remaining, taken = train_test_split(
                remaining, test_size=fraction / left, random_state=seed, stratify=labels[remaining]
            )
        except ValueError as err:
            raise DataError(
                f"cannot carve data.{name}_fraction={fraction} from data.train ({err}); "
                f"give data.{name} as a file or use a larger training set"
            ) from None
        left -= fraction
        carved[name] = _subset(train, np.sort(taken))
    carved["train"] = _subset(train, np.sort(remaining))
    return carved


def _carve_tail(train: Examples, fractions: dict[str, float]) -> dict[str, Examples]:
    """Cut contiguous tail chunks of the concatenated text: the LM must not see its test text."""
    text = "\n".join(train.texts)
    cuts = {}
    end = len(text)
    for name in reversed(list(fractions)):
        start = end - int(len(text) * fractions[name])
        cuts[name] = text[start:end]
        end = start
    carved = {name: Examples([chunk], [None]) if chunk.strip() else Examples() for name, chunk in cuts.items()}
    carved["train"] = Examples([text[:end]], [None])
    return carved


def _subset(examples: Examples, indices: np.ndarray) -> Examples:
    return Examples([examples.texts[i] for i in indices], [examples.labels[i] for i in indices])


def _label_vocabulary(config: Config, splits: dict[str, Examples]) -> list[str]:
    if config.task == "lm":
        return []
    seen = set(splits["train"].labels)
    if len(seen) < 2:
        raise DataError(f"{config.data.train}: training split has only label(s) {sorted(seen)}; need 2 or more classes")
    labels = sorted(seen, key=_label_order)
    for name, examples in splits.items():
        where = f"{_source(config, name) or name}: split {name}"
        unknown = set(examples.labels) - seen
        if unknown:
            shown = ", ".join(sorted(map(str, unknown), key=_label_order)[:5])
            raise DataError(f"{where} has labels the training split never saw: {shown}; "
                            "fix the labels or add them to training data")
        missing = seen - set(examples.labels)
        if missing:
            # A small split may lack a rare class; a split from another dataset lacks most of them.
            log.warning("warning: %s has %d of the %d training classes (missing: %s); its metrics cover only "
                        "those. Is it the right file for data.train?", where, len(seen) - len(missing), len(seen),
                        ", ".join(sorted(missing, key=_label_order)[:5]))
    return labels


def _label_order(label: str) -> tuple[int, int, str]:
    """Integer labels first and by value, so "10" does not come before "2", then the others.

    The label itself breaks ties ("1" and "01"), so the order never depends on set iteration.
    """
    try:
        return (0, int(label), label)
    except ValueError:  # not an integer ("pos", "²"), or one past Python's 4300-digit limit
        return (1, 0, label)


def _write_split(path: Path, examples: Examples, labels: list[str]) -> None:
    index = {label: i for i, label in enumerate(labels)}
    with path.open("w", encoding="utf-8") as f:
        for text, label in zip(examples.texts, examples.labels, strict=True):
            record = {"text": text} if label is None else {"text": text, "label": index[label]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
