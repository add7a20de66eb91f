"""Stage 2, tokenize: train SentencePiece on the training split and encode every split once.

Reads `<workdir>/prepare/` (the split files and `labels.json`).
Writes to `<workdir>/tokenize/`:
  - `tokenizer.model`, `tokenizer.vocab`: the SentencePiece model (trained on train only);
  - `<split>.npz`: the split's token ids, packed as `ids` (int32, all sequences end to end),
    `lengths` (tokens per example), `labels` (sentiment) and `characters` (text length, used
    for bits per character). For `task: lm` the sequences of a split form one token stream.
  - `stats.json`: vocabulary size, token-length quantiles, truncation and unknown-token counts.
Training reads these arrays directly; only `train.subword_sampling` makes it encode the training
texts again, in sampled segmentations (`train.sampled_segmentations`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import Config
from pipeline.data import subwords
from pipeline.data.splits import SPLITS, read_examples
from pipeline.stages.results import Logged
from pipeline.store.workdir import require_stage, stage_dir, stage_output

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TokenizeResult:
    """What the tokenize stage wrote."""

    output_dir: Path
    vocab_size: int
    stats: dict

    def logged(self) -> Logged:
        splits = [s for s in ("train", "validation", "test") if s in self.stats]
        return Logged(metrics={"vocab_size": self.vocab_size,
                               **{f"{s}_truncated": self.stats[s]["truncated"] for s in splits},
                               **{f"{s}_tokens": self.stats[s]["tokens"] for s in splits}},
                      artifacts=[(self.output_dir / name, "tokenizer")
                                 for name in ("tokenizer.model", "tokenizer.vocab", "stats.json")])


def run(config: Config, workdir: str | Path) -> TokenizeResult:
    """Train the tokenizer on `prepare/train.jsonl` and write the encoded splits."""
    prepared = require_stage(config, workdir, "prepare", needed_by="tokenize")
    splits = {name: read_examples(prepared / f"{name}.jsonl") for name in SPLITS
              if (prepared / f"{name}.jsonl").is_file()}
    model = subwords.train_sentencepiece(
        _training_sentences(splits["train"][0], config.task),
        vocab_size=config.tokenizer.vocab_size,
        model_type=config.tokenizer.model_type,
        character_coverage=config.tokenizer.character_coverage,
        max_sentences=config.tokenizer.max_sentences,
        lossless=config.task == "lm",
    )
    sp = subwords.from_bytes(model)
    # A language model reads a stream and is cut into windows later; only a classifier truncates.
    max_length = config.train.max_length if config.task == "sentiment" else None
    stats: dict = {"vocab_size": sp.get_piece_size()}
    with stage_output(config, workdir, "tokenize") as out:
        subwords.save(model, out)
        for name, (texts, labels) in splits.items():
            stats[name] = _encode_split(sp, texts, labels, max_length, out / f"{name}.npz")
        (out / "stats.json").write_text(json.dumps(stats, indent=2), encoding="utf-8")
    log.info("tokenizer: %d pieces; train %s tokens", stats["vocab_size"], stats["train"]["tokens"])
    return TokenizeResult(stage_dir(config, workdir, "tokenize"), stats["vocab_size"], stats)


def load(config: Config, workdir: str | Path) -> TokenizeResult:
    """The result of a finished tokenize stage, read back from its `stats.json`."""
    out = require_stage(config, workdir, "tokenize", needed_by="pipeline run")
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    return TokenizeResult(out, stats["vocab_size"], stats)


def _training_sentences(texts: list[str], task: str) -> list[str]:
    # SentencePiece learns from sentences of bounded length; a language-model corpus is often
    # one long document, so it trains on its lines instead.
    if task == "lm":
        return [line for text in texts for line in text.splitlines(keepends=True) if line.strip()]
    return texts


def _encode_split(sp, texts: list[str], labels: list[int], max_length: int | None, path: Path) -> dict:
    full = subwords.encode(sp, texts)
    lengths_full = np.array([len(s) for s in full])
    truncated = int((lengths_full > max_length).sum()) if max_length else 0
    sequences = [s[:max_length] for s in full] if max_length else full
    ids, lengths = subwords.pack(sequences)
    characters = np.array([len(t) for t in texts], dtype=np.int64)
    arrays = {"ids": ids, "lengths": lengths, "characters": characters}
    if labels:
        arrays["labels"] = np.array(labels, dtype=np.int32)
    np.savez(path, **arrays)
    if truncated:
        log.info("%s: truncated %d of %d sequences to train.max_length=%d",
                 path.stem, truncated, len(texts), max_length)
    return {
        "examples": len(texts),
        "tokens": int(lengths.sum()),
        "truncated": truncated,
        "unknown_tokens": int((ids == subwords.UNK_ID).sum()),
        "characters_per_token": round(float(characters.sum()) / max(int(lengths.sum()), 1), 3),
        "length_quantiles": {f"p{q}": int(np.percentile(lengths_full, q)) for q in (50, 90, 99, 100)},
    }
