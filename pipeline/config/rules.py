"""Checks of values and of keys that other keys make meaningless."""

from __future__ import annotations

from collections.abc import Callable

from pipeline import metrics
from pipeline.config.schema import SYNTHETIC_TASKS, Config, TrainConfig, flatten
from pipeline.errors import ConfigError

# Ranges the types alone cannot express: (keys, test, what the value must be).
RANGES: list[tuple[tuple[str, ...], Callable[[float], bool], str]] = [
    (("tokenizer.vocab_size", "model.embedding_dim", "model.layers", "model.units", "model.ensemble", "train.epochs",
      "train.batch_size", "train.max_length", "train.sequence_length", "train.buckets", "data.synthetic_length",
      "data.synthetic_examples"), lambda v: v >= 1, "at least 1"),
    (("data.validation_fraction", "data.test_fraction", "model.dropout", "model.embedding_dropout",
      "model.recurrent_dropout", "train.ema_momentum", "train.label_smoothing"), lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    (("train.warmup_steps", "train.weight_decay"), lambda v: v >= 0, "0 or more"),
    (("train.learning_rate",), lambda v: v > 0, "positive"),
    (("train.worker_timeout",), lambda v: v > 0, "above 0 seconds"),
    (("train.subword_sampling",), lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
]

# Combinations of keys that cannot work: (is the config wrong?, the message that says why and the fix).
COMBINATIONS: list[tuple[Callable[[Config], bool], Callable[[Config], str]]] = [
    (lambda c: bool(c.train.warmup_steps) and c.train.lr_schedule == "constant",
     lambda c: "config key train.warmup_steps needs a schedule to warm up into; set train.lr_schedule=cosine"),
    (lambda c: c.data.synthetic not in (None, *SYNTHETIC_TASKS),
     lambda c: f"config key data.synthetic must be {', '.join(SYNTHETIC_TASKS)} or null; got {c.data.synthetic!r}"),
    (lambda c: bool(c.data.synthetic) and c.task != "sentiment",
     lambda c: "config key data.synthetic makes labelled examples for task sentiment; set task=sentiment"),
    (lambda c: c.data.train is None and c.data.synthetic is None,
     lambda c: "config key data.train is required: a TFDS split or a local file"),
    (lambda c: c.task == "lm" and c.model.bidirectional,
     lambda c: "config key model.bidirectional must be false for task lm: a language model predicts the next "
               "token, and a backward LSTM would see it; set model.bidirectional=false"),
    (lambda c: c.model.freeze_embeddings and not c.model.pretrained_embeddings,
     lambda c: "config key model.freeze_embeddings=true would freeze random vectors; set "
               "model.pretrained_embeddings=PATH or model.freeze_embeddings=false"),
    (lambda c: c.train.monitor not in metrics.validation_metrics(c.task),
     lambda c: f"config key train.monitor={c.train.monitor} is not logged for task {c.task}; set it to one of "
               f"{', '.join(metrics.validation_metrics(c.task))}"),
    (lambda c: c.train.stateful and c.task != "lm",
     lambda c: "config key train.stateful applies to task lm only: a classifier reads each example from a zero "
               "state; set train.stateful=false"),
    (lambda c: c.train.stateful and c.train.distribute in ("mirrored", "multi_worker"),
     lambda c: f"config key train.stateful cannot be used with train.distribute={c.train.distribute}: the carried"
               f" states belong to one device's batch; set train.distribute=none"),
    (lambda c: c.task == "lm" and c.model.ensemble != 1,
     lambda c: f"config key model.ensemble applies to task sentiment only; got {c.model.ensemble} for task lm; "
               f"set model.ensemble=1"),
    (lambda c: bool(c.train.subword_sampling) and c.task == "lm",
     lambda c: "config key train.subword_sampling applies to task sentiment only: a language model reads one "
               "token stream; set train.subword_sampling=0"),
    (lambda c: c.task == "lm" and bool(c.train.label_smoothing),
     lambda c: "config key train.label_smoothing applies to task sentiment only: a language model's bits per "
               "character and perplexity are read from its loss; set train.label_smoothing=0"),
]


def check_values(config: Config) -> None:
    """Raise `ConfigError` for the first value out of its range (`RANGES`) or combination of keys that
    cannot work (`COMBINATIONS`)."""
    flat = flatten(config)
    for keys, test, requirement in RANGES:
        for key in keys:
            if not test(flat[key]):
                raise ConfigError(f"config key {key} must be {requirement}; got {flat[key]}")
    for wrong, message in COMBINATIONS:
        if wrong(config):
            raise ConfigError(message(config))


def check_ignored_keys(config: Config, layers: dict[str, int]) -> None:
    """Refuse a key set on purpose that another key makes meaningless, naming both.

    A key counts as set on purpose when it is set later than the key that overrides it:
    `--set data.validation_fraction=0.1` on a preset that names a validation file would be
    silently ignored, while `--set data.validation=dev.txt` on a preset with a validation
    fraction replaces the fraction knowingly. Keys set together, in one YAML file, are a
    resolved config (as each run logs it) and load as they are.
    """
    data = config.data
    # (ignored key, the key that overrides it, that key's value when it does, the fix)
    rules = [(f"data.{split}_fraction", f"data.{split}", getattr(data, split),
              f"a given split is never carved; set data.{split}=null to carve it from train")
             for split in ("validation", "test")]
    rules += [(key, "data.tfds", data.tfds, "TFDS data is read by TFDS; set data.tfds=null to read local files")
              for key in ("data.format", "data.encoding", "data.document")]
    rules += [(key, "data.tfds", "null" if data.tfds is None else None,
               "it applies to TFDS data only; set data.tfds to a dataset name or drop it")
              for key in ("data.manual_dir", "data.tfds_data_dir")]
    rules += [(key, "data.synthetic", data.synthetic,
               "synthetic data is made, not read; set data.synthetic=null to read data")
              for key in ("data.tfds", "data.train", "data.validation", "data.test")]
    rules += [(key, "data.synthetic", "null" if data.synthetic is None else None,
               "it applies to synthetic data only; set data.synthetic=first_token or drop it")
              for key in ("data.synthetic_length", "data.synthetic_examples")]
    pieces = config.tokenizer.model_type
    rules.append(("train.subword_sampling", "tokenizer.model_type", pieces if pieces in ("word", "char") else None,
                  "a word or char model has one segmentation of each text; set tokenizer.model_type=bpe"))
    mode = config.train.distribute
    rules.append(("train.subword_sampling", "train.distribute", mode if mode == "multi_worker" else None,
                  SEVERAL_WORKERS))
    rules.append(("train.devices", "train.distribute", None if mode == "mirrored" else mode,
                  "devices are for mirrored; set train.distribute=mirrored or drop train.devices"))
    for key, by, value, fix in rules:
        if key in layers and value is not None and layers[key] > layers.get(by, -1):
            raise ConfigError(f"config key {key} has no effect because {by} is {value}: {fix}")


SEVERAL_WORKERS = ("SentencePiece's sampling cannot be seeded alike in every process, so several workers train "
                   "on the best segmentation; set train.distribute=none or mirrored (one process)")


def subword_sampling(config: Config, workers: int = 1) -> float:
    """`train.subword_sampling` where it applies, else 0: a classifier on BPE or unigram pieces, in one
    process (`workers`). A preset's sampling gives way to a later `tokenizer.model_type=word` or
    a cluster, as `check_ignored_keys` lets it."""
    if config.tokenizer.model_type not in ("bpe", "unigram") or workers > 1:
        return 0.0
    return config.train.subword_sampling


def monitor_mode(train: TrainConfig) -> str:
    """`max` or `min`: which way `train.monitor` improves."""
    if train.monitor_mode != "auto":
        return train.monitor_mode
    return "max" if metrics.higher_is_better(train.monitor) else "min"
