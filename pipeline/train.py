"""Stage 3, train: fit the task's LSTM on the encoded splits with `model.fit`.

Reads `<workdir>/tokenize/` (token arrays, `tokenizer.model`) and `<workdir>/prepare/labels.json`.
Writes to `<workdir>/train/`:
  - `model.keras`: the model with the best validation weights (early stopping restores them);
  - `history.csv`: per-epoch metrics, from Keras's `CSVLogger`;
  - `summary.json`: epochs run, best epoch, padding fraction, the cuDNN report.
Per-epoch train and validation metrics go to MLflow with `step=epoch`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import data, models, tracking
from pipeline.config import Config
from pipeline.tokenize import load_split
from pipeline.workdir import atomic_output, require_stage, stage_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """What the train stage wrote and how training went."""

    model_path: Path
    epochs_run: int
    best_epoch: int
    best_metrics: dict[str, float]
    lstm_kernel: str


def run(config: Config, workdir: str | Path) -> TrainResult:
    """Train the configured model and write the best one to `<workdir>/train/model.keras`."""
    tokenized = require_stage(workdir, "tokenize", needed_by="train")
    setup_runtime(config)
    vocab_size = json.loads((tokenized / "stats.json").read_text())["vocab_size"]
    train_ds, val_ds, extra = _datasets(config, workdir, tokenized)
    num_classes = len(extra.get("labels", []))
    model = models.build_model(config, vocab_size, num_classes)
    model.compile(
        optimizer=keras.optimizers.Adam(config.train.learning_rate, clipnorm=1.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=config.task == "lm"),
        metrics=["accuracy"],
    )
    kernel = _report_kernels(model)
    tracking.log_metrics({k: v for k, v in extra.items() if k == "padding_fraction"})
    with atomic_output(stage_dir(workdir, "train")) as out:
        history = model.fit(
            train_ds, validation_data=val_ds, epochs=config.train.epochs,
            callbacks=_callbacks(config, out, extra), verbose=2 if _quiet() else 1, shuffle=False,
        )
        model.save(out / "model.keras")
        result = _summarise(history.history, stage_dir(workdir, "train") / "model.keras", kernel)
        summary = {**asdict(result), "model_path": "model.keras", "padding_fraction": extra.get("padding_fraction")}
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    log.info("trained %d epochs; best epoch %d: %s", result.epochs_run, result.best_epoch, result.best_metrics)
    return result


def setup_runtime(config: Config) -> None:
    """Seed every RNG, and pick determinism and the precision policy before building the model."""
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    mode = config.train.mixed_precision
    use_mixed = mode == "on" or (mode == "auto" and models.gpu_visible())
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")


def _datasets(config: Config, workdir: Path, tokenized: Path):
    t = config.train
    train, val = load_split(tokenized, "train"), load_split(tokenized, "validation")
    if config.task == "lm":
        extra = {"validation_characters": int(val["characters"].sum()), "validation_tokens": len(val["ids"]) - 1,
                 "tokenizer": tokenized / "tokenizer.model"}
        return (data.lm_dataset(train["ids"], t.sequence_length, t.batch_size, shuffle=True, seed=t.seed),
                data.lm_dataset(val["ids"], t.sequence_length, t.batch_size, shuffle=False), extra)
    boundaries = data.bucket_boundaries(train["lengths"], t.buckets)
    labels = json.loads((Path(workdir) / "prepare" / "labels.json").read_text(encoding="utf-8"))
    train_ds = data.classification_dataset(train, t.batch_size, boundaries=boundaries, shuffle=True, seed=t.seed)
    val_ds = data.classification_dataset(val, t.batch_size, boundaries=boundaries, shuffle=False)
    extra = {"labels": labels, "boundaries": boundaries, "padding_fraction": data.padding_fraction(train_ds)}
    log.info("length buckets %s; %.1f%% of train positions are padding", boundaries, 100 * extra["padding_fraction"])
    return train_ds, val_ds, extra


def _callbacks(config: Config, out: Path, extra: dict) -> list[keras.callbacks.Callback]:
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.train.patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(out / "history.csv")),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.task == "lm":
        callbacks.insert(0, BitsPerCharacter(extra["validation_tokens"], extra["validation_characters"]))
        callbacks.append(SampleText(extra["tokenizer"], out / "samples", config.train.sample_prompt,
                                    config.train.sample_tokens, seed=config.train.seed))
    if tracking.active():
        callbacks.append(tracking.EpochMetricsCallback())
    return callbacks


class BitsPerCharacter(keras.callbacks.Callback):
    """Adds `val_perplexity` and `val_bits_per_char` to the epoch logs of a language model.

    The validation loss is the mean cross-entropy in nats per predicted token; times the tokens
    per character it becomes nats per character, which compares across tokenizers.
    """

    def __init__(self, tokens: int, characters: int):
        super().__init__()
        self.tokens_per_char = tokens / max(characters, 1)

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            logs["val_perplexity"] = math.exp(min(logs["val_loss"], 50.0))
            logs["val_bits_per_char"] = logs["val_loss"] * self.tokens_per_char / math.log(2)


class SampleText(keras.callbacks.Callback):
    """After each epoch, continue fixed prompts with fixed seeds and keep the text.

    Written to `samples/epoch_NNN.txt` in the train folder and logged to MLflow, so the text
    getting better is visible from the UI, epoch by epoch.
    """

    def __init__(self, tokenizer_path: Path, out: Path, prompt: str, max_tokens: int, seed: int):
        super().__init__()
        from pipeline import tokenizer

        self.sp = tokenizer.load(tokenizer_path)
        self.out, self.prompts, self.max_tokens, self.seed = out, ["", prompt] if prompt else [""], max_tokens, seed

    def on_epoch_end(self, epoch, logs=None):
        from pipeline import generation

        generator = generation.Generator(generation.build_decoder(self.model))
        blocks = []
        for i, temperature in enumerate((0.8, 1.0)):
            texts = generation.generate_text(generator, self.sp, self.prompts, max_tokens=self.max_tokens,
                                             temperature=temperature, top_k=0, seed=self.seed + i)
            blocks += [f"--- prompt {p!r}, temperature {temperature}, seed {self.seed + i}\n{t}"
                       for p, t in zip(self.prompts, texts, strict=True)]
        text = f"epoch {epoch}\n\n" + "\n\n".join(blocks) + "\n"
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"epoch_{epoch:03d}.txt").write_text(text, encoding="utf-8")
        tracking.log_text(text, f"samples/epoch_{epoch:03d}.txt")


def _report_kernels(model: keras.Model) -> str:
    report = models.cudnn_report(model)
    gpu = models.gpu_visible()
    eligible = all(r.cudnn_eligible for r in report)
    kernel = "cudnn" if (gpu and eligible) else "generic"
    reasons = {f"lstm_kernel.{r.layer}": r.reason for r in report}
    tracking.set_tags({"lstm_kernel": kernel, "gpu": gpu, **reasons})
    for r in report:
        if not r.cudnn_eligible:
            log.warning("%s cannot use the cuDNN kernel (%s): on a GPU it runs several times slower", r.layer, r.reason)
    log.info("LSTM kernel: %s (%s)", kernel, "GPU visible" if gpu else "no GPU visible")
    return kernel


def _summarise(history: dict[str, list[float]], model_path: Path, kernel: str) -> TrainResult:
    val_loss = history.get("val_loss") or history["loss"]
    best = int(np.nanargmin(val_loss))
    metrics = {k: float(v[best]) for k, v in history.items()}
    return TrainResult(model_path, len(history["loss"]), best, metrics, kernel)


def _quiet() -> bool:
    # One line per epoch in logs and CI; Keras's live progress bar on a terminal.
    return not sys.stdout.isatty()
