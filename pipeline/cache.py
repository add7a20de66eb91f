"""Content-addressed stage outputs: which key each stage's output folder is filed under.

A stage's key is a hash of everything its output depends on and nothing else:
  - the config keys the stage reads (typed by `load_config`, so `3` and `"3"` are one key),
    leaving out options that do not change the output (where TFDS caches its files, say);
  - its inputs: the content of local data files (not their paths), the name, version and split
    of a TFDS dataset, and the keys of the stages it reads;
  - the pipeline's version and the hash of its source code, so a code change is never served
    an output that older code produced.

Equal keys mean interchangeable outputs, so `pipeline run` reuses any stage whose key already
has a finished folder, and a change to `train.epochs` re-runs train, evaluate and export only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline import config as config_lib
from pipeline.config import Config

STAGES = ("prepare", "tokenize", "train", "evaluate", "export")
UPSTREAM = {"prepare": (), "tokenize": ("prepare",), "train": ("tokenize",), "evaluate": ("train",),
            "export": ("train",)}
KEY_LENGTH = 12


def stage_keys(config: Config) -> dict[str, str]:
    """The key of every stage's output for `config`, in stage order."""
    keys: dict[str, str] = {}
    for stage in STAGES:
        parts = {
            "stage": stage,
            "config": _stage_config(config, stage),
            "upstream": {name: keys[name] for name in UPSTREAM[stage]},
            "code": code_version(),
        }
        if stage == "prepare":
            parts["inputs"] = _data_inputs(config)
        text = json.dumps(parts, sort_keys=True, default=str)
        keys[stage] = hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]
    return keys


def _stage_config(config: Config, stage: str) -> dict[str, Any]:
    """The config values that `stage` reads, by dotted key; every other key leaves its output alone."""
    flat = config_lib.flatten(config)
    lm = config.task == "lm"
    if stage == "prepare":
        wanted = ["task", "data.tfds", "data.format", "data.text_field", "data.label_field", "data.encoding",
                  "data.document"]
        carved = [s for s in ("validation", "test") if flat[f"data.{s}"] is None]
        wanted += [f"data.{s}_fraction" for s in carved]
        if carved and not lm:
            wanted.append("train.seed")  # stratified carving is seeded; an LM's is the stream's tail
    elif stage == "tokenize":
        wanted = ["task", *(k for k in flat if k.startswith("tokenizer."))]
        if not lm:
            wanted.append("train.max_length")
    elif stage == "train":
        unused = ({"train.max_length", "train.buckets"} if lm else
                  {"train.sequence_length", "train.sample_prompt", "train.sample_tokens", "train.max_length"})
        wanted = ["task", *(k for k in flat if k.startswith(("model.", "train.")) and k not in unused)]
    else:
        # evaluate and export read only what train and tokenize wrote, through their keys.
        wanted = ["task"]
    return {key: flat[key] for key in wanted}


def _data_inputs(config: Config) -> dict[str, Any]:
    """What identifies the data: TFDS name, version and splits, or the bytes of local files."""
    splits = {s: getattr(config.data, s) for s in ("train", "validation", "test")}
    if config.data.tfds:
        return {"tfds": config.data.tfds, "version": _tfds_version(config), "splits": splits}
    return {s: None if path is None else content_hash(Path(path)) for s, path in splits.items()}


def _tfds_version(config: Config) -> str:
    import tensorflow_datasets as tfds

    try:
        return str(tfds.builder(config.data.tfds, data_dir=config.data.tfds_data_dir).version)
    except Exception:  # noqa: BLE001 - an unknown name fails in prepare, with its own message
        return "unknown"


def content_hash(path: Path) -> str:
    """sha256 of a file, or of every file below a folder (relative names and bytes).

    A path that does not exist hashes as missing; prepare then fails with the file named.
    """
    if path.is_file():
        stat = path.stat()
        return _file_hash(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
            digest.update(content_hash(file).encode("ascii"))
        return digest.hexdigest()
    return f"missing:{path}"


@functools.lru_cache(maxsize=4096)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    # Size and mtime are part of the cache key only, so an edited file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The installed version of the pipeline plus a hash of its source files."""
    try:
        version = metadata.version("pipeline")
    except metadata.PackageNotFoundError:
        version = "unknown"
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode("utf-8") + b"\0" + source.read_bytes())
    return f"{version}+{digest.hexdigest()[:KEY_LENGTH]}"
