"""Stage 3, train: fit the task's LSTM on the encoded splits with `model.fit`.

Reads the tokenize stage's token arrays and `tokenizer.model`, and prepare's `labels.json`.
Writes to its own folder, `<workdir>/train/<key>/`:
  - `model.keras`: the model with the best validation weights (early stopping restores them);
  - `history.csv`: per-epoch metrics of every epoch, resumed ones included;
  - `summary.json`: epochs run, best epoch, padding fraction, the cuDNN report;
  - `samples/` (language models): text generated after each epoch.
Per-epoch train and validation metrics go to MLflow with `step=epoch`.

With `train.stateful` (language models, see `pipeline.models.stateful`), a copy of the model carries its
LSTM states from one window to the next, and validation reads the split in order.

With `train.distribute` (see `pipeline.training.distribute`), the model and its optimizer are built in
the strategy's scope and `fit` splits every global batch among the replicas; under
`multi_worker`, `distribute.fit` drives the same callbacks, and only worker 0 writes.

Training survives being killed: after every epoch a checkpoint (see `pipeline.training.checkpoints`)
lands in `<workdir>/train/<key>.partial/`, and the same command later continues from the last
finished epoch, in the same MLflow run.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import models, tracking
from pipeline.config import Config, monitor_mode
from pipeline.errors import TrainingError
from pipeline.stages.results import Logged
from pipeline.store import cache
from pipeline.store.workdir import is_finished, require_stage, stage_dir, stage_output
from pipeline.tracking import callback
from pipeline.training import checkpoints, distribute, signals
from pipeline.training.batches import Batches, datasets, sampled_segmentations
from pipeline.training.callbacks import training_callbacks
from pipeline.training.recipe import (
    compiled_model,
    is_ensemble,
    make_early_stopping,
    report_kernels,
    setup_runtime,
    training_loss,
)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainResult:
    """What the train stage wrote and how training went."""

    model_path: Path
    epochs_run: int
    best_epoch: int
    best_metrics: dict[str, float]
    lstm_kernel: str

    def logged(self) -> Logged:
        out = self.model_path.parent
        return Logged(metrics={"epochs_run": self.epochs_run, "best_epoch": self.best_epoch},
                      tags={"lstm_kernel": self.lstm_kernel},
                      artifacts=[(out / name, "train") for name in ("history.csv", "summary.json")])


def run(config: Config, workdir: str | Path) -> TrainResult:
    """Train the configured model (or resume its training) and write the best one to `model.keras`.

    On workers 1.. of a multi-worker cluster the same training runs, but nothing is written:
    the chief (worker 0) keeps the checkpoints and the output.
    """
    tokenized = require_stage(config, workdir, "tokenize", needed_by="train")
    prepared = require_stage(config, workdir, "prepare", needed_by="train")
    strategy = distribute.strategy_for(config)
    chief = distribute.is_chief(strategy)
    _check_stateful(config, strategy)
    sampling = config_lib.subword_sampling(config, distribute.role(config).workers)
    if config_lib.subword_sampling(config) and not sampling:  # it applies, but not across workers
        log.warning("train.subword_sampling is off: %s", config_lib.SEVERAL_WORKERS)
    setup_runtime(config)
    store = checkpoints.Store(partial_dir(config, workdir))
    resumed = distribute.resume_point(strategy, store.latest() if chief else None, tokenized)
    first_epoch = resumed.epoch if resumed else 0
    # A checkpoint taken as early stopping fired has no epochs left; fit then only restores the best weights.
    last_epoch = first_epoch if resumed and resumed.stopped_early else config.train.epochs
    vocab_size = json.loads((tokenized / "stats.json").read_text())["vocab_size"]
    sampled = sampled_segmentations(config, tokenized, prepared, store.root, sampling) if sampling else None
    batches = datasets(config, tokenized, prepared, first_epoch, sampled)
    model = compiled_model(config, strategy, vocab_size, len(batches.labels), resumed, tokenized,
                           batches.steps_per_epoch)
    kernel = report_kernels(model)
    # The strategy the model was built under, which is the one fit runs it with.
    tracking.set_tags(distribute.describe(config, model.distribute_strategy))
    if not resumed:
        tracking.log_metrics({name: value for name in ("padding_fraction", "sampled_token_ratio")
                              if (value := getattr(batches, name)) is not None})

    history = _fit(config, model, strategy, batches, store if chief else None, resumed, last_epoch)
    distribute.training_over(strategy)
    history = checkpoints.join_history(resumed.history if resumed else {}, history)
    _check_finite(history, config)

    final = stage_dir(config, workdir, "train")
    result = _summarise(history, final / "model.keras", kernel, config)
    if not chief:
        log.info("worker %d: training done; worker 0 writes the model", strategy.cluster_resolver.task_id)
        return result
    _write(config, workdir, model, result, history, batches, store, vocab_size)
    store.remove()
    # Counted from 1, as Keras's "Epoch 1/3" lines are; MLflow's steps and history.csv count from 0.
    log.info("trained %d epochs; kept epoch %d (MLflow step %d): %s", result.epochs_run, result.best_epoch + 1,
             result.best_epoch, result.best_metrics)
    return result


def _fit(config: Config, model: keras.Model, strategy: tf.distribute.Strategy, batches: Batches,
         store: checkpoints.Store | None, resumed: checkpoints.Checkpoint | None, last_epoch: int) -> dict:
    """Train from the resumed epoch (or the first) to `last_epoch` with the training's callbacks;
    returns the per-epoch metrics of the epochs run here. Without a `store` nothing is written."""
    first_epoch = resumed.epoch if resumed else 0
    early_stopping = make_early_stopping(config, resumed)
    if resumed:
        callback.log_epoch_history(resumed.history)  # epochs the killed process had no time to log
        log.info("resuming training after epoch %d of %d from %s", resumed.epoch, config.train.epochs,
                 resumed.path or "worker 0's checkpoint")
    callbacks = training_callbacks(config, store, early_stopping, batches)
    fit_args = {"epochs": last_epoch, "initial_epoch": first_epoch, "steps_per_epoch": batches.steps_per_epoch,
                "callbacks": callbacks, "verbose": 2 if _quiet() else 1}
    with signals.deferred():  # Ctrl-C stops between batches, never inside a checkpoint or an MLflow write
        if distribute.needs_own_loop(strategy):
            return distribute.fit(model, strategy, batches.train, batches.validation,
                                  loss=training_loss(config, reduction=None), **fit_args)
        return model.fit(batches.train, validation_data=batches.validation, shuffle=False, **fit_args).history


def _write(config: Config, workdir: str | Path, model: keras.Model, result: TrainResult, history: dict,
           batches: Batches, store: checkpoints.Store, vocab_size: int) -> None:
    """The stage's output folder: the model, its history and summary, and a language model's samples."""
    with stage_output(config, workdir, "train") as out:
        _saved_model(config, model, vocab_size, len(batches.labels)).save(out / "model.keras")
        write_history(history, out / "history.csv")
        if (store.root / "samples").is_dir():
            shutil.copytree(store.root / "samples", out / "samples")
        summary = {**asdict(result), "model_path": "model.keras", "padding_fraction": batches.padding_fraction}
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def _check_stateful(config: Config, strategy: tf.distribute.Strategy) -> None:
    """Refuse carried states under a strategy that splits each batch among replicas (`auto` can
    choose one on a machine with several GPUs): a state belongs to one device's rows."""
    if config.train.stateful and strategy.num_replicas_in_sync > 1:
        raise TrainingError(f"train.stateful needs one device, but train.distribute={config.train.distribute} "
                            f"chose {strategy.num_replicas_in_sync} replicas; set train.distribute=none")


def _saved_model(config: Config, model: keras.Model, vocab_size: int, labels: int) -> keras.Model:
    """The model to save: the trained one, or the same weights in the ordinary model, which evaluate
    and export load: for `train.stateful` one taking any batch size, every call from zero states;
    for an ensemble one giving the members' mean probability."""
    if not (config.train.stateful or is_ensemble(config)):
        return model
    plain = models.build_model(config, vocab_size, labels)
    for layer in plain.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return plain


def load(config: Config, workdir: str | Path) -> TrainResult:
    """The result of a finished train stage, read back from its `summary.json`."""
    out = require_stage(config, workdir, "train", needed_by="pipeline run")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    return TrainResult(out / "model.keras", summary["epochs_run"], summary["best_epoch"],
                       summary["best_metrics"], summary["lstm_kernel"])


def partial_dir(config: Config, workdir: str | Path) -> Path:
    """Where an unfinished training keeps its per-epoch checkpoints."""
    final = stage_dir(config, workdir, "train")
    return final.with_name(f"{final.name}.partial")


def resumable_run(config: Config, workdir: str | Path) -> checkpoints.Checkpoint | None:
    """The last checkpoint of an interrupted training of this config, if there is one.

    Checkpoints beside a finished output are left over from a process stopped while deleting
    them; they are deleted now.
    """
    store = checkpoints.Store(partial_dir(config, workdir))
    if is_finished(stage_dir(config, workdir, "train")):
        store.remove()
        return None
    return store.latest()


def abandoned_runs(config: Config, workdir: str | Path) -> list[str]:
    """One line for each interrupted training of this very config (same fingerprint, so the same
    data paths) that this run cannot resume because its inputs changed since: a data file's
    content (a new prepare key) or the pipeline's code. Its checkpoints stay where they are."""
    keys = cache.stage_keys(config)
    fingerprint = config_lib.fingerprint(config)
    files = [path for path in (config.data.train, config.data.validation, config.data.test) if path]
    lines = []
    for partial in sorted((Path(workdir) / "train").glob("*.partial")):
        latest = checkpoints.Store(partial).latest()
        origin = latest.origin if latest else {}
        if origin.get("fingerprint") != fingerprint or origin["keys"]["train"] == keys["train"]:
            continue
        if origin["keys"]["prepare"] != keys["prepare"]:
            changed = " or ".join(files) if files and not config.data.tfds else "the data"
            why = f"the content of {changed} changed since it was interrupted"
        else:
            why = "the pipeline's code changed since it was interrupted"
        lines.append(f"the interrupted training in {partial} cannot be resumed: {why}; this run "
                     f"trains from scratch (restore the old input to resume that one, or delete the folder)")
    return lines


def discard_checkpoints(config: Config, workdir: str | Path) -> None:
    """Delete an interrupted training's checkpoints, so the next training starts from scratch."""
    checkpoints.Store(partial_dir(config, workdir)).remove()


def _check_finite(history: dict[str, list[float]], config: Config) -> None:
    """A NaN or infinite loss ends the stage with a clear error (Keras only stops training)."""
    bad = [epoch for epoch, loss in enumerate(history["loss"]) if not math.isfinite(loss)]
    if bad:
        raise TrainingError(
            f"the training loss became {history['loss'][bad[0]]} in epoch {bad[0]}; training stopped. "
            f"Lower train.learning_rate (now {config.train.learning_rate}) or check the data"
        )


def write_history(history: dict[str, list[float]], path: Path) -> None:
    """Per-epoch metrics as CSV, `epoch` first, as Keras's CSVLogger writes them."""
    names = sorted(history)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *names])
        for epoch in range(len(history["loss"])):
            writer.writerow([epoch, *(history[name][epoch] for name in names)])


def _summarise(history: dict[str, list[float]], model_path: Path, kernel: str, config: Config) -> TrainResult:
    """Epochs run, and the best epoch by `train.monitor`: the one whose weights early stopping kept."""
    watched = history.get(config.train.monitor) or history["loss"]
    pick = np.nanargmax if watched is not history["loss"] and monitor_mode(config.train) == "max" else np.nanargmin
    best = int(pick(watched))
    metrics = {k: float(v[best]) for k, v in history.items()}
    return TrainResult(model_path, len(history["loss"]), best, metrics, kernel)


def _quiet() -> bool:
    # One line per epoch in logs and CI; Keras's live progress bar on a terminal.
    return not sys.stdout.isatty()
