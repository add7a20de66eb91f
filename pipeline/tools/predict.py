"""Use an exported SavedModel: find it, check what it is, and run its signatures on raw text."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.errors import ExportError
from pipeline.store.workdir import INFO_FILE


def resolve_export(model_dir: str | Path) -> tuple[Path, dict]:
    """The version folder for `model_dir` (the newest one for a run folder) and its info."""
    path = Path(model_dir)
    if not path.exists():
        raise ExportError(f"{path}: no such folder; pass an export such as models/<run name>/<version>")
    if not (path / "saved_model.pb").is_file():
        versions = sorted((p for p in path.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
        if not versions:
            raise ExportError(f"{path} is not a SavedModel export (no saved_model.pb, no version folders)")
        path = versions[-1]
    info_path = path / INFO_FILE
    if not info_path.is_file():
        raise ExportError(f"{path} is a SavedModel but not one exported by `pipeline export` (no {INFO_FILE})")
    return path, json.loads(info_path.read_text(encoding="utf-8"))


def load(model_dir: str | Path, task: str):
    """Load the export for `task`, or raise `ExportError` saying what the folder holds."""
    path, info = resolve_export(model_dir)
    if info.get("task") != task:
        raise ExportError(f"{path} is a {info.get('task')} export, not a {task} one")
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the SentencePiece ops the graph uses

    return tf.saved_model.load(str(path)), info


def classify(model_dir: str | Path, texts: list[str]) -> list[dict]:
    """Label and per-class probabilities for each text, from a sentiment export."""
    import tensorflow as tf

    loaded, info = load(model_dir, "sentiment")
    outputs = loaded.signatures["serving_default"](text=tf.constant(texts, dtype=tf.string))
    probabilities = outputs["probabilities"].numpy()
    labels = [label.decode("utf-8") for label in outputs["label"].numpy()]
    return [
        {"text": text, "label": label,
         "probabilities": {name: float(p) for name, p in zip(info["labels"], np.asarray(row), strict=True)}}
        for text, label, row in zip(texts, labels, probabilities, strict=True)
    ]


def generate(model_dir: str | Path, prompts: list[str], *, max_tokens: int, temperature: float, top_k: int,
             seed: int, samples: int = 1) -> tuple[list[str], list[str]]:
    """Continue each prompt with the exported language model in `model_dir`.

    Sample i uses seed `seed + i`; the export is loaded once for all of them.

    Returns:
        The texts (prompt plus continuation), sample by sample and prompt by prompt within a
        sample, and notes about adjusted settings.
    """
    import tensorflow as tf

    if temperature < 0:
        raise ExportError(f"--temperature must be 0 (greedy) or positive; got {temperature}")
    if max_tokens < 1:
        raise ExportError(f"--max-tokens must be at least 1; got {max_tokens}")
    loaded, info = load(model_dir, "lm")
    notes = []
    if top_k > info["vocab_size"]:
        notes.append(f"--top-k {top_k} is larger than the vocabulary; using all {info['vocab_size']} tokens")
        top_k = 0
    texts = []
    for i in range(samples):
        outputs = loaded.signatures["generate"](
            prompt=tf.constant(prompts, dtype=tf.string), max_tokens=tf.constant(max_tokens, tf.int32),
            temperature=tf.constant(temperature, tf.float32), top_k=tf.constant(top_k, tf.int32),
            seed=tf.constant(seed + i, tf.int64))
        texts += [t.decode("utf-8") for t in outputs["text"].numpy()]
    return texts, notes
