"""Stage 4, evaluate: score the trained model on the test split and draw its plots.

Reads `<workdir>/train/` (`model.keras`, `history.csv`), `<workdir>/tokenize/test.npz` and
`<workdir>/prepare/labels.json`.
Writes to `<workdir>/evaluate/`:
  - `metrics.json`: `test_*` metrics (sentiment: accuracy, macro-F1, ROC-AUC for two classes,
    loss; language model: loss in nats per token, perplexity, bits per character of the split
    read in order with carried states, and as `test_cold_*` the same in windows of
    `train.sequence_length` tokens, each from a zero state), or `val_*` ones of the validation
    split when the config has no test split;
  - `confusion_matrix.png` (sentiment) and `curve_<metric>.png` learning curves;
  - `bits_per_char_by_context.png`/`.json` (language model): bits per character by context read.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pipeline import plots
from pipeline.config import Config
from pipeline.data import inputs
from pipeline.data.splits import load_split
from pipeline.models import stateful
from pipeline.stages.results import Logged
from pipeline.store.workdir import require_stage, stage_dir, stage_output

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateResult:
    """The test metrics and where they were written."""

    output_dir: Path
    metrics: dict[str, float]

    def logged(self) -> Logged:
        return Logged(metrics=self.metrics, artifacts=[(self.output_dir, "evaluate")])


def run(config: Config, workdir: str | Path) -> EvaluateResult:
    """Compute test metrics and plots for the model in `<workdir>/train/`."""
    trained = require_stage(config, workdir, "train", needed_by="evaluate")
    tokenized = require_stage(config, workdir, "tokenize", needed_by="evaluate")
    model = keras.saving.load_model(trained / "model.keras", safe_mode=True)
    split = _scored_split(tokenized)
    test = load_split(tokenized, split)
    with stage_output(config, workdir, "evaluate") as out:
        if config.task == "lm":
            # Read as a text is read, in order with states carried; the cold-start figures kept beside.
            cold = language_model_metrics(model, test, config.train.sequence_length, config.train.batch_size)
            metrics = stateful.score_split(model, test, tokenized / "tokenizer.model", config.train.sequence_length,
                                           cold, out)
        else:
            prepared = require_stage(config, workdir, "prepare", needed_by="evaluate")
            labels = json.loads((prepared / "labels.json").read_text(encoding="utf-8"))
            probs = predict_probabilities(model, test, config.train.batch_size)
            metrics = classification_metrics(test["labels"], probs)
            matrix = _confusion(test["labels"], probs, len(labels))
            plots.confusion_matrix(matrix, labels, out / "confusion_matrix.png")
        if split != "test":
            metrics = {name.replace("test_", "val_", 1): value for name, value in metrics.items()}
        plots.learning_curves(trained / "history.csv", out)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    log.info("%s metrics: %s", split, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    return EvaluateResult(stage_dir(config, workdir, "evaluate"), metrics)


def _scored_split(tokenized: Path) -> str:
    """`test`, or `validation` when the config has no test split (`data.test: null` and
    `data.test_fraction: 0`); its metrics are then named `val_*`, as they are not a test's."""
    if (tokenized / "test.npz").is_file():
        return "test"
    log.warning("no test split (data.test is null and data.test_fraction is 0): scoring the validation split, "
                "which chose the kept epoch, so its figures are optimistic; give data.test=PATH for a test figure")
    return "validation"


def load(config: Config, workdir: str | Path) -> EvaluateResult:
    """The result of a finished evaluate stage, read back from its `metrics.json`."""
    out = require_stage(config, workdir, "evaluate", needed_by="pipeline run")
    return EvaluateResult(out, json.loads((out / "metrics.json").read_text(encoding="utf-8")))


def predict_probabilities(model: keras.Model, arrays: dict[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Class probabilities for every example, in file order."""
    return model.predict(inputs.ordered_batches(arrays, batch_size), verbose=0)


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """`test_accuracy`, `test_macro_f1`, `test_loss` and, for two classes, `test_auc`."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    predicted = probs.argmax(axis=1)
    classes = list(range(probs.shape[1]))
    metrics = {
        "test_accuracy": float(accuracy_score(labels, predicted)),
        "test_macro_f1": float(f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)),
        "test_loss": float(log_loss(labels, probs, labels=classes)),
    }
    if probs.shape[1] == 2 and len(np.unique(labels)) == 2:
        metrics["test_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    return metrics


def language_model_metrics(model: keras.Model, arrays: dict[str, np.ndarray], sequence_length: int,
                           batch_size: int) -> dict[str, float]:
    """Cross-entropy over every predicted token of the test stream, and bits per character.

    Bits per character is the total cross-entropy in bits divided by the characters of the
    evaluated text, so it is comparable across tokenizers.
    """
    stream = arrays["ids"]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    total_nats, tokens = 0.0, 0
    for windows, targets in inputs.lm_dataset(stream, sequence_length, batch_size, shuffle=False):
        total_nats += float(loss(targets, model(windows, training=False)))
        tokens += int(np.prod(targets.shape))
    # The tail shorter than a window is scored too, so every token but the first is a target.
    tail = stream[tokens:]
    if len(tail) > 1:
        total_nats += float(loss(tail[None, 1:], model(tail[None, :-1], training=False)))
        tokens += len(tail) - 1
    # The tokenizer is lossless for language models, so the tokens spell exactly these characters.
    return stateful.lm_metrics("test", total_nats, tokens, int(arrays["characters"].sum()))


def _confusion(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(labels, probs.argmax(axis=1), labels=list(range(num_classes)))
