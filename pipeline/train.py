"""Stage 3, train: fit the task's LSTM on the encoded splits with `model.fit`.

Reads the tokenize stage's token arrays and `tokenizer.model`, and prepare's `labels.json`.
Writes to its own folder, `<workdir>/train/<key>/`:
  - `model.keras`: the model with the best validation weights (early stopping restores them);
  - `history.csv`: per-epoch metrics of every epoch, resumed ones included;
  - `summary.json`: epochs run, best epoch, padding fraction, the cuDNN report;
  - `samples/` (language models): text generated after each epoch.
Per-epoch train and validation metrics go to MLflow with `step=epoch`.

With `train.stateful` (language models, see `pipeline.stateful`), a copy of the model carries its
LSTM states from one window to the next, and validation reads the split in order.

With `train.distribute` (see `pipeline.distribute`), the model and its optimizer are built in
the strategy's scope and `fit` splits every global batch among the replicas; under
`multi_worker`, `distribute.fit` drives the same callbacks, and only worker 0 writes.

Training survives being killed: after every epoch a checkpoint (see `pipeline.checkpoints`)
lands in `<workdir>/train/<key>.partial/`, and the same command later continues from the last
finished epoch, in the same MLflow run.
"""

from __future__ import annotations

import contextvars
import csv
import functools
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

from pipeline import cache, checkpoints, data, distribute, embeddings, models, signals, stateful, tracking
from pipeline import config as config_lib
from pipeline.config import Config, monitor_mode
from pipeline.errors import TrainingError
from pipeline.prepare import read_examples
from pipeline.tokenize import load_split
from pipeline.workdir import is_finished, require_stage, stage_dir, stage_output

log = logging.getLogger(__name__)

# Callbacks added to every training started in this context, after the checkpoint and the MLflow
# metrics of each epoch (a sweep's pruning reporter). Each entry is called to make a fresh callback.
extra_callbacks: contextvars.ContextVar[tuple] = contextvars.ContextVar("extra_callbacks", default=())


@dataclass(frozen=True)
class TrainResult:
    """What the train stage wrote and how training went."""

    model_path: Path
    epochs_run: int
    best_epoch: int
    best_metrics: dict[str, float]
    lstm_kernel: str


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
    train_ds, val_ds, extra = datasets(config, tokenized, prepared, first_epoch, sampled)
    model = _compiled_model(config, strategy, vocab_size, len(extra.get("labels", [])), resumed, tokenized,
                            extra["steps_per_epoch"])
    kernel = _report_kernels(model)
    # The strategy the model was built under, which is the one fit runs it with.
    tracking.set_tags(distribute.describe(config, model.distribute_strategy))
    if not resumed and "padding_fraction" in extra:
        tracking.log_metrics({"padding_fraction": extra["padding_fraction"]})
    if not resumed and sampled:
        tracking.log_metrics({"sampled_token_ratio": extra["sampled_token_ratio"]})

    early_stopping = _early_stopping(config, resumed)
    if resumed:
        tracking.log_epoch_history(resumed.history)  # epochs the killed process had no time to log
        log.info("resuming training after epoch %d of %d from %s", resumed.epoch, config.train.epochs,
                 resumed.path or "worker 0's checkpoint")
    callbacks = _callbacks(config, store if chief else None, early_stopping, extra)
    fit_args = {"epochs": last_epoch, "initial_epoch": first_epoch, "steps_per_epoch": extra["steps_per_epoch"],
                "callbacks": callbacks, "verbose": 2 if _quiet() else 1}
    with signals.deferred():  # Ctrl-C stops between batches, never inside a checkpoint or an MLflow write
        if distribute.needs_own_loop(strategy):
            history = distribute.fit(model, strategy, train_ds, val_ds, loss=training_loss(config, reduction=None),
                                     **fit_args)
        else:
            history = model.fit(train_ds, validation_data=val_ds, shuffle=False, **fit_args).history
    distribute.training_over(strategy)
    history = checkpoints.join_history(resumed.history if resumed else {}, history)
    _check_finite(history, config)

    final = stage_dir(config, workdir, "train")
    result = _summarise(history, final / "model.keras", kernel, config)
    if not chief:
        log.info("worker %d: training done; worker 0 writes the model", strategy.cluster_resolver.task_id)
        return result
    with stage_output(config, workdir, "train") as out:
        _saved_model(config, model, vocab_size, len(extra.get("labels", []))).save(out / "model.keras")
        write_history(history, out / "history.csv")
        if (store.root / "samples").is_dir():
            shutil.copytree(store.root / "samples", out / "samples")
        summary = {**asdict(result), "model_path": "model.keras", "padding_fraction": extra.get("padding_fraction")}
        (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    store.remove()
    # Counted from 1, as Keras's "Epoch 1/3" lines are; MLflow's steps and history.csv count from 0.
    log.info("trained %d epochs; kept epoch %d (MLflow step %d): %s", result.epochs_run, result.best_epoch + 1,
             result.best_epoch, result.best_metrics)
    return result


def _compiled_model(config: Config, strategy: tf.distribute.Strategy, vocab_size: int, labels: int,
                    resumed: checkpoints.Checkpoint | None, tokenized: Path, steps_per_epoch: int) -> keras.Model:
    """The model and its optimizer, made in the strategy's scope (variables mirrored on every replica),
    started from pretrained vectors when the config names them, with a checkpoint's state restored:
    from disk, and on other workers from the chief."""
    with strategy.scope():
        model = models.build_model(config, vocab_size, labels)
        if config.model.pretrained_embeddings:
            _pretrained_embeddings(config, model, tokenized, resumed)
        if config.train.stateful:
            model = stateful.with_carried_state(model, config.train.batch_size)
        model = models.training_model(model)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate(config, steps_per_epoch), clipnorm=1.0,
                                            weight_decay=config.train.weight_decay or None, **_averaging(config)),
            loss=training_loss(config),
            metrics=[models.EnsembleAccuracy(name="accuracy") if _members(config) else "accuracy"],
        )
        model.optimizer.build(model.trainable_variables)  # its variables too are made on every replica
    if resumed:
        # Outside the scope: reading a checkpoint makes scratch variables of its own, which must not
        # become distributed ones (made on the chief alone, they would wait for the other workers).
        resumed.restore(model)
        distribute.sync_from_chief(strategy, model)
    return model


def training_loss(config: Config, reduction: str | None = "sum_over_batch_size") -> keras.losses.Loss:
    """The loss the model trains on: cross-entropy of the next token (logits) or of the label
    (probabilities, smoothed by `train.label_smoothing`), an ensemble's being each member's own
    (`models.MemberCrossentropy`)."""
    if config.task == "lm":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=reduction)
    loss = models.MemberCrossentropy if _members(config) else models.LabelCrossentropy
    return loss(config.train.label_smoothing, reduction=reduction)


def _members(config: Config) -> bool:
    return config.model.ensemble > 1  # sentiment only: the config check refuses an ensemble for lm


def learning_rate(config: Config, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """`train.learning_rate`, or with `train.lr_schedule: cosine` a schedule that rises linearly from 0
    over `train.warmup_steps` and then falls along a cosine to 0 at the end of `train.epochs`. The
    schedule reads the optimizer's step count, which checkpoints keep, so a resumed training
    continues on the same curve."""
    t = config.train
    if t.lr_schedule == "constant":
        return t.learning_rate
    total = t.epochs * steps_per_epoch
    warmup = min(t.warmup_steps, total - 1)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=total)
    return keras.optimizers.schedules.CosineDecay(0.0, decay_steps=total - warmup, warmup_target=t.learning_rate,
                                                  warmup_steps=warmup)


def _early_stopping(config: Config, resumed: checkpoints.Checkpoint | None) -> checkpoints.ResumableEarlyStopping:
    """Stops after `train.patience` epochs without a better `train.monitor`, and restores the best epoch's weights."""
    return checkpoints.ResumableEarlyStopping(
        resumed, monitor=config.train.monitor, mode=monitor_mode(config.train), patience=config.train.patience,
        restore_best_weights=True)


def _pretrained_embeddings(config: Config, model: keras.Model, tokenized: Path,
                           resumed: checkpoints.Checkpoint | None) -> None:
    """Start the embeddings from `model.pretrained_embeddings` and log the coverage; a resumed
    training takes its embeddings from the checkpoint and only needs them frozen again."""
    if resumed:
        embeddings.freeze(model, config.model.freeze_embeddings)
        return
    from pipeline import tokenizer

    sp = tokenizer.load(tokenized / "tokenizer.model")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    coverage = embeddings.apply(model, pieces, Path(config.model.pretrained_embeddings),
                                config.model.freeze_embeddings)
    tracking.log_metrics({"embedding_coverage": coverage.fraction, "embedding_pieces_found": coverage.found})


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
    if not (config.train.stateful or _members(config)):
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


def _origin(config: Config) -> dict:
    """What a training's checkpoints are made from, kept in their state (`Checkpoint.origin`): the
    config's fingerprint and every stage key (read by `abandoned_runs`)."""
    return {"fingerprint": config_lib.fingerprint(config), "keys": cache.stage_keys(config)}


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


def setup_runtime(config: Config) -> None:
    """Seed every RNG, and pick determinism and the precision policy before building the model."""
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    mode = config.train.mixed_precision
    use_mixed = mode == "on" or (mode == "auto" and models.gpu_visible())
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")


def datasets(config: Config, tokenized: Path, prepared: Path, first_epoch: int,
             sampled: list[dict[str, np.ndarray]] | None = None):
    """Training batches for epochs `first_epoch` onwards, validation batches, and what else train needs.

    `sampled`, from `sampled_segmentations`, holds each epoch's `ids` and `lengths` of the training
    split; without it every epoch reads the tokenize stage's best segmentation.
    """
    t = config.train
    epochs = range(first_epoch, t.epochs)
    train, val = load_split(tokenized, "train"), load_split(tokenized, "validation")
    if config.task == "lm" and t.stateful:
        # No batches for fit to validate on: `stateful.StreamingValidation` reads the split in order.
        extra = {"validation": val, "tokenizer": tokenized / "tokenizer.model",
                 "steps_per_epoch": data.lm_stream_count(len(train["ids"]), t.sequence_length, t.batch_size)}
        train_ds = data.lm_stream_dataset(train["ids"], t.sequence_length, t.batch_size, seed=t.seed, epochs=epochs)
        return train_ds, None, extra
    if config.task == "lm":
        extra = {"validation_characters": int(val["characters"].sum()), "validation_tokens": len(val["ids"]) - 1,
                 "tokenizer": tokenized / "tokenizer.model",
                 "steps_per_epoch": data.lm_batch_count(len(train["ids"]), t.sequence_length, t.batch_size)}
        train_ds = data.lm_dataset(train["ids"], t.sequence_length, t.batch_size, shuffle=True, seed=t.seed,
                                   epochs=epochs)
        return train_ds, data.lm_dataset(val["ids"], t.sequence_length, t.batch_size, shuffle=False), extra
    boundaries = data.bucket_boundaries(train["lengths"], t.buckets)
    labels = json.loads((prepared / "labels.json").read_text(encoding="utf-8"))
    if sampled:
        # Buckets by each epoch's own lengths, between the bounds of the best segmentation's.
        train_ds = functools.reduce(tf.data.Dataset.concatenate, [
            data.classification_dataset({**train, **sampled[epoch]}, t.batch_size, boundaries=boundaries,
                                        shuffle=True, seed=t.seed, epochs=range(epoch, epoch + 1))
            for epoch in epochs])
    else:
        train_ds = data.classification_dataset(train, t.batch_size, boundaries=boundaries, shuffle=True,
                                               seed=t.seed, epochs=epochs)
    val_ds = data.classification_dataset(val, t.batch_size, boundaries=boundaries, shuffle=False)
    one_epoch = data.classification_dataset(train, t.batch_size, boundaries=boundaries, shuffle=True, seed=t.seed)
    extra = {"labels": labels, "boundaries": boundaries, "padding_fraction": data.padding_fraction(one_epoch),
             "steps_per_epoch": data.batch_count(len(train["lengths"]), t.batch_size)}
    log.info("length buckets %s; %.1f%% of train positions are padding", boundaries, 100 * extra["padding_fraction"])
    if sampled:
        extra["sampled_token_ratio"] = float(np.mean([s["lengths"].sum() for s in sampled]) / train["lengths"].sum())
        log.info("subword sampling: each epoch's segmentation holds %.2fx the tokens of the best one",
                 extra["sampled_token_ratio"])
    return train_ds, val_ds, extra


SEGMENTATIONS = "segmentations.npz"


def sampled_segmentations(config: Config, tokenized: Path, prepared: Path, partial: Path,
                          alpha: float) -> list[dict[str, np.ndarray]]:
    """The training split's `ids` and `lengths` in a segmentation sampled with `alpha` for each epoch
    (`train.subword_sampling`), BOS first and cut to `train.max_length` as the tokenize stage cuts.

    SentencePiece's sampling cannot be seeded alike in two processes, so the segmentations of all
    epochs are drawn once, when the training starts, and kept in its `partial` folder beside the
    checkpoints: a training resumed after a kill reads them back and ends as the uninterrupted one
    would have. Two separate trainings draw different ones, even with `train.deterministic`.
    """
    from pipeline import tokenizer

    t = config.train
    path = partial / SEGMENTATIONS
    if path.is_file():
        with np.load(path) as saved:
            return [{"ids": saved[f"ids_{e}"], "lengths": saved[f"lengths_{e}"]} for e in range(t.epochs)]
    texts, _ = read_examples(prepared / "train.jsonl")
    sp = tokenizer.load(tokenized / "tokenizer.model")
    epochs = []
    for _ in range(t.epochs):
        ids, lengths = tokenizer.pack(tokenizer.encode(sp, texts, t.max_length, sampling=alpha))
        epochs.append({"ids": ids, "lengths": lengths})
    partial.mkdir(parents=True, exist_ok=True)
    tmp = partial / f".{SEGMENTATIONS}.tmp"
    with tmp.open("wb") as out:  # a file object: np.savez would add .npz to a name
        np.savez(out, **{f"{key}_{e}": arrays[key] for e, arrays in enumerate(epochs) for key in arrays})
    tmp.rename(path)
    return epochs


def _averaging(config: Config) -> dict:
    """Optimizer arguments for a moving average of the weights, when `train.ema_momentum` asks."""
    momentum = config.train.ema_momentum
    return {"use_ema": True, "ema_momentum": momentum, "ema_overwrite_frequency": None} if momentum else {}


def _callbacks(config: Config, store: checkpoints.Store | None, early_stopping: keras.callbacks.EarlyStopping,
               extra: dict) -> list[keras.callbacks.Callback]:
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
            callbacks.insert(1 if averaged else 0, stateful.StreamingValidation(extra["validation"],
                                                                                config.train.sequence_length))
            callbacks.insert(0, stateful.ResetStates())
        else:
            callbacks.insert(0, BitsPerCharacter(extra["validation_tokens"], extra["validation_characters"]))
        if store is not None:
            callbacks.append(SampleText(extra["tokenizer"], store.root / "samples", config.train.sample_prompt,
                                        config.train.sample_tokens, seed=config.train.seed))
    if tracking.active():
        callbacks.append(tracking.EpochMetricsCallback())
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
