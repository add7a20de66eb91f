"""What a config trains: the model in its strategy's scope, loss, optimizer, schedule."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import tensorflow as tf

from pipeline import models, tracking
from pipeline.config import Config, monitor_mode
from pipeline.data import vectors
from pipeline.models import stateful
from pipeline.training import checkpoints, distribute

log = logging.getLogger(__name__)

def compiled_model(config: Config, strategy: tf.distribute.Strategy, vocab_size: int, labels: int,
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
            metrics=[models.EnsembleAccuracy(name="accuracy") if is_ensemble(config) else "accuracy"],
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
    loss = models.MemberCrossentropy if is_ensemble(config) else models.LabelCrossentropy
    return loss(config.train.label_smoothing, reduction=reduction)


def is_ensemble(config: Config) -> bool:
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


def make_early_stopping(config: Config, resumed: checkpoints.Checkpoint | None) -> checkpoints.ResumableEarlyStopping:
    """Stops after `train.patience` epochs without a better `train.monitor`, and restores the best epoch's weights."""
    return checkpoints.ResumableEarlyStopping(
        resumed, monitor=config.train.monitor, mode=monitor_mode(config.train), patience=config.train.patience,
        restore_best_weights=True)


def _pretrained_embeddings(config: Config, model: keras.Model, tokenized: Path,
                           resumed: checkpoints.Checkpoint | None) -> None:
    """Start the embeddings from `model.pretrained_embeddings` and log the coverage; a resumed
    training takes its embeddings from the checkpoint and only needs them frozen again."""
    if resumed:
        vectors.freeze(model, config.model.freeze_embeddings)
        return
    from pipeline.data import subwords

    sp = subwords.load(tokenized / "tokenizer.model")
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    coverage = vectors.apply(model, pieces, Path(config.model.pretrained_embeddings),
                                config.model.freeze_embeddings)
    tracking.log_metrics({"embedding_coverage": coverage.fraction, "embedding_pieces_found": coverage.found})


def setup_runtime(config: Config) -> None:
    """Seed every RNG, and pick determinism and the precision policy before building the model."""
    keras.utils.set_random_seed(config.train.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    mode = config.train.mixed_precision
    use_mixed = mode == "on" or (mode == "auto" and models.gpu_visible())
    keras.mixed_precision.set_global_policy("mixed_float16" if use_mixed else "float32")


def _averaging(config: Config) -> dict:
    """Optimizer arguments for a moving average of the weights, when `train.ema_momentum` asks."""
    momentum = config.train.ema_momentum
    return {"use_ema": True, "ema_momentum": momentum, "ema_overwrite_frequency": None} if momentum else {}


def report_kernels(model: keras.Model) -> str:
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
