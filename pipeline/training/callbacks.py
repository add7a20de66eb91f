"""The callbacks every training runs with, in the order they must run."""

from __future__ import annotations

import contextvars
from pathlib import Path

import keras

from pipeline import config as config_lib
from pipeline import tracking
from pipeline.config import Config
from pipeline.models import stateful
from pipeline.store import cache
from pipeline.tracking import callback
from pipeline.training import checkpoints, signals
from pipeline.training.batches import Batches

# Callbacks added to every training started in this context, after the checkpoint and the MLflow
# metrics of each epoch (a sweep's pruning reporter). Each entry is called to make a fresh callback.
extra_callbacks: contextvars.ContextVar[tuple] = contextvars.ContextVar("extra_callbacks", default=())


def _origin(config: Config) -> dict:
    """What a training's checkpoints are made from, kept in their state (`Checkpoint.origin`): the
    config's fingerprint and every stage key (read by `abandoned_runs`)."""
    return {"fingerprint": config_lib.fingerprint(config), "keys": cache.stage_keys(config)}


def training_callbacks(config: Config, store: checkpoints.Store | None, early_stopping: keras.callbacks.EarlyStopping,
                       batches: Batches) -> list[keras.callbacks.Callback]:
    """The training's callbacks; without a `store` (workers 1.. of a cluster) nothing is written."""
    # Order matters: the checkpoint sees early stopping's state for the epoch, and metrics reach
    # MLflow only after the checkpoint is on disk, so a resumed run never logs an epoch twice.
    averaged = checkpoints.AveragedWeights() if config.train.ema_momentum else None
    callbacks = [early_stopping, keras.callbacks.TerminateOnNaN()]
    if store is not None:
        callbacks.insert(1, checkpoints.EpochCheckpoint(store, early_stopping, averaged, origin=_origin(config)))
    if averaged:
        callbacks.insert(0, averaged)  # first: the callbacks after it see the averaged weights
    if config.task == "lm":
        if config.train.stateful:  # after the weight average, which validation must see
            callbacks.insert(1 if averaged else 0, stateful.StreamingValidation(batches.validation_split,
                                                                                config.train.sequence_length))
            callbacks.insert(0, stateful.ResetStates())
        else:
            callbacks.insert(0, BitsPerCharacter(batches.validation_tokens, batches.validation_characters))
        if store is not None:
            callbacks.append(SampleText(batches.tokenizer, store.root / "samples", config.train.sample_prompt,
                                        config.train.sample_tokens, seed=config.train.seed))
    if tracking.active():
        callbacks.append(callback.EpochMetricsCallback())
    return [*callbacks, *(make() for make in extra_callbacks.get()), signals.StopOnSignal()]


class BitsPerCharacter(keras.callbacks.Callback):
    """Adds `val_perplexity` and `val_bits_per_char` to the epoch logs of a language model.

    The validation loss is the mean cross-entropy in nats per predicted token; over the split's
    tokens and characters it becomes bits per character (`stateful.lm_metrics`, the formula the
    evaluate stage uses too), which compares across tokenizers.
    """

    def __init__(self, tokens: int, characters: int):
        super().__init__()
        self.tokens, self.characters = tokens, characters

    def on_epoch_end(self, epoch, logs=None):
        if logs and "val_loss" in logs:
            figures = stateful.lm_metrics("val", logs["val_loss"] * self.tokens, self.tokens, self.characters)
            logs["val_perplexity"] = figures["val_perplexity"]
            logs["val_bits_per_char"] = figures["val_bits_per_char"]


class SampleText(keras.callbacks.Callback):
    """After each epoch, continue fixed prompts with fixed seeds and keep the text.

    Written to `samples/epoch_NNN.txt` in the train folder and logged to MLflow, so the text
    getting better is visible from the UI, epoch by epoch.
    """

    def __init__(self, tokenizer_path: Path, out: Path, prompt: str, max_tokens: int, seed: int):
        super().__init__()
        from pipeline.data import subwords

        self.sp = subwords.load(tokenizer_path)
        self.out, self.prompts, self.max_tokens, self.seed = out, ["", prompt] if prompt else [""], max_tokens, seed

    def on_epoch_end(self, epoch, logs=None):
        from pipeline.models import generation

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
