"""Stage 5, export: a SavedModel that takes raw text, tokenizer included.

Reads `<workdir>/train/model.keras`, `<workdir>/tokenize/tokenizer.model` and, for sentiment,
`<workdir>/prepare/labels.json`.
Writes `<export.dir>/<run name>/<version>/`, the numbered layout TF Serving reads, with a new
version number each time. Its `serving_default` signature maps a batch of UTF-8 strings to
`probabilities` and the predicted `label`. Tokenization runs in the graph (tensorflow-text's
SentencePiece op), so a client needs TensorFlow and `import tensorflow_text`, nothing else.
A language model's export has `generate` and `score` signatures instead; `score` reads a text
as the evaluate stage reads the test split: in one pass, the state carried through the text.
`pipeline.json` beside `saved_model.pb` records the task and labels.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_text as tf_text

from pipeline import config as config_lib
from pipeline import tracking
from pipeline.config import Config
from pipeline.errors import MissingStageError
from pipeline.stages.results import Logged
from pipeline.store import cache
from pipeline.store.workdir import INFO_FILE, atomic_output, is_finished, producer, require_stage

log = logging.getLogger(__name__)
# A hidden `.claim-N` folder beside the version folders: version N is being exported.
CLAIM = ".claim-"


@dataclass(frozen=True)
class ExportResult:
    """Where the SavedModel went."""

    path: Path
    version: int

    def logged(self) -> Logged:
        return Logged(tags={"export_path": str(self.path)}, artifacts=[(self.path, "saved_model")],
                      model=self.path)


class SentimentServer(tf.Module):
    """Raw strings in, class probabilities and label strings out."""

    def __init__(self, model: keras.Model, tokenizer_model: bytes, labels: list[str], max_length: int):
        super().__init__()
        self.model = model
        self.tokenizer = tf_text.SentencepieceTokenizer(model=tokenizer_model, add_bos=True)
        self.labels = tf.constant(labels)
        self.max_length = max_length

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        # Same ids as the tokenize stage: BOS first, cut to train.max_length, right-padded with 0.
        ids = self.tokenizer.tokenize(text)[:, : self.max_length]
        probabilities = self.model(ids.to_tensor(default_value=0), training=False)
        label = tf.gather(self.labels, tf.argmax(probabilities, axis=-1))
        return {"probabilities": probabilities, "label": label}


def run(config: Config, workdir: str | Path) -> ExportResult:
    """Export the trained model under the next version number of `<export.dir>/<run name>/`."""
    trained = require_stage(config, workdir, "train", needed_by="export")
    tokenized = require_stage(config, workdir, "tokenize", needed_by="export")
    model = keras.saving.load_model(trained / "model.keras", safe_mode=True)
    tokenizer_model = (tokenized / "tokenizer.model").read_bytes()
    if config.task == "lm":
        from pipeline.models.generation import build_lm_server

        server, signatures = build_lm_server(model, tokenizer_model)
        info = {"task": "lm", "vocab_size": model.get_layer("embedding").input_dim}
    else:
        prepared = require_stage(config, workdir, "prepare", needed_by="export")
        labels = json.loads((prepared / "labels.json").read_text(encoding="utf-8"))
        server = SentimentServer(model, tokenizer_model, labels, config.train.max_length)
        signatures = {"serving_default": server.serve}
        info = {"task": "sentiment", "labels": labels}
    root = Path(config.export.dir) / config_lib.run_name(config)
    version, claim = claim_version(root)
    key = cache.stage_keys(config)["export"]
    try:
        with atomic_output(root / str(version), {"stage": "export", "key": key, **tracking.run_reference()}) as out:
            tf.saved_model.save(server, str(out), signatures=signatures)
            info.update(run_name=config_lib.run_name(config), version=version, max_length=config.train.max_length,
                        key=key)
            (out / INFO_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
            (out / "assets").mkdir(exist_ok=True)
            shutil.copy(tokenized / "tokenizer.model", out / "assets" / "tokenizer.model")
    finally:
        claim.rmdir()
    log.info("exported %s", root / str(version))
    return ExportResult(root / str(version), version)


def load(config: Config, workdir: str | Path) -> ExportResult:
    """The export already made from this config's trained model."""
    path = find(config)
    if path is None:
        raise MissingStageError(f"no export of this config's model under {config.export.dir}; run `pipeline export`")
    return ExportResult(path, int(path.name))


def finished_output(config: Config) -> Path | None:
    """Where the export of this config is, if it was made: under `export.dir`, not the work folder."""
    return find(config)


def find(config: Config) -> Path | None:
    """The newest finished version under `<export.dir>/<run name>/` exported from this config's model."""
    key = cache.stage_keys(config)["export"]
    root = Path(config.export.dir) / config_lib.run_name(config)
    for version in sorted((p for p in root.glob("*") if p.name.isdigit()), key=lambda p: -int(p.name)):
        if is_finished(version) and producer(version).get("key") == key:
            return version
    return None


def next_version(root: Path) -> int:
    """One more than the highest version under `root`, exported or claimed by an export in progress
    (1 for none)."""
    numbers = [p.name.removeprefix(CLAIM) for p in root.glob("*") if p.is_dir()]
    return max((int(n) for n in numbers if n.isdigit()), default=0) + 1


def claim_version(root: Path) -> tuple[int, Path]:
    """The next version number under `root`, and the `.claim-N` folder that claims it.

    Creating a folder succeeds in one process only, so two exports of the same run name at once
    (two sweep processes, say) never write the same version; the exporter removes its claim.
    """
    root.mkdir(parents=True, exist_ok=True)
    while True:
        version = next_version(root)
        try:
            (root / f"{CLAIM}{version}").mkdir()
            return version, root / f"{CLAIM}{version}"
        except FileExistsError:
            continue
