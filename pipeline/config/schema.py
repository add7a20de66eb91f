"""The config's schema: one frozen dataclass per concern, composed in `Config`.

Each key is declared once here, with its type, default and help text; `pipeline config` prints
them and the docs' key reference is generated from them (`pipeline.config.reference`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

# What `data.synthetic` can make (see pipeline.data.synthetic).
SYNTHETIC_TASKS = ("first_token", "first_symbol")


def key(default: Any, help: str) -> Any:
    """A config key: its default and its one-line help, which `pipeline config` and the docs show."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how to read them."""

    tfds: str | None = key("imdb_reviews",
        'A tensorflow-datasets name such as `imdb_reviews`; when set, the split keys below are TFDS split '
        'expressions, otherwise they are local file or folder paths.')
    train: str | None = key("train",
        'The training split: a TFDS split expression with data.tfds, else a local file or folder.')
    validation: str | None = key(None,
        'The validation split (TFDS split or local path); null carves it from train '
        '(data.validation_fraction).')
    test: str | None = key("test",
        'The test split (TFDS split or local path); null carves it from train (data.test_fraction).')
    format: Literal["auto", "label_text", "csv", "tsv", "jsonl", "text", "folder"] = key("auto",
        'How local files are read: auto (by extension), label_text (LABEL TEXT lines), csv, tsv, jsonl, text, '
        'folder (one sub-folder per label).')
    text_field: str = key("text", 'The text column of a CSV/TSV file or the text key of a JSONL record.')
    label_field: str = key("label", 'The label column or key; labels may be strings or ints, any number of classes.')
    encoding: str = key("auto",
        'A codec name, or auto: UTF-8, and for a file that is not valid UTF-8 the encoding a detector names '
        "(logged, and kept in prepare's stats.json).")
    validation_fraction: float = key(0.1,
        'The fraction of train carved off as the validation split when data.validation is null (seeded by '
        'data.split_seed, stratified by label).')
    test_fraction: float = key(0.1, 'The fraction of train carved off as the test split when data.test is null.')
    split_seed: int = key(42,
        'Seeds the carving alone, so a seed study (train.seed) keeps its validation and test sets.')
    document: Literal["file", "line"] = key("file",
        'For `task: lm` with `format: text`: is a document a whole file or one line?')
    tfds_data_dir: str = key("data/tfds", 'Where tensorflow-datasets keeps its prepared data and downloads.')
    manual_dir: str | None = key(None, 'Folder holding pre-placed TFDS downloads, for machines without network access.')
    synthetic: str | None = key(None,
        'Make the data instead of reading it (see pipeline.data.synthetic): `first_token` and `first_symbol` '
        'are sentiment-style examples of synthetic_length symbols whose label only the first symbol decides '
        '(a key unlike the rest, or one from the same alphabet as the rest). data.tfds and the split keys are '
        'unused; validation and test are carved from the synthetic_examples.')
    synthetic_length: int = key(100, 'Symbols in each synthetic example.')
    synthetic_examples: int = key(4000, 'Synthetic examples made; validation and test are carved from them.')


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece model trained on the training split."""

    vocab_size: int = key(8000, 'Pieces in the SentencePiece vocabulary (a word or char model may hold fewer).')
    model_type: Literal["unigram", "bpe", "char", "word"] = key("unigram",
        "SentencePiece's model: unigram, bpe, char or word.")
    character_coverage: float = key(0.9995,
        'The share of characters SentencePiece covers; the rarest others map to the unknown piece.')
    max_sentences: int = key(1_000_000,
        'SentencePiece samples at most this many sentences to train on, which bounds memory.')


@dataclass(frozen=True)
class ModelConfig:
    """LSTM architecture; every choice here keeps the cuDNN kernel eligible on a GPU."""

    embedding_dim: int = key(128, 'Width of the token embeddings.')
    layers: int = key(2, 'Stacked recurrent layers.')
    units: int = key(128, 'Units of each recurrent layer (each direction of a bidirectional one).')
    bidirectional: bool = key(True,
        'Read the text both ways (sentiment only: a language model must not see the next token).')
    dropout: float = key(0.3, "Dropout on each recurrent layer's outputs.")
    embedding_dropout: float = key(0.0,
        'Drops whole token embeddings (every channel of a token at once), so the classifier cannot lean on '
        'one word.')
    recurrent_dropout: float = key(0.0,
        'Anything above 0 rules out the cuDNN kernel; kept for users who accept that cost.')
    pooling: Literal["final", "mean", "mean_max"] = key("final",
        'How a classifier reads its last layer: final (the last real step), mean, or mean_max (mean and max '
        'over real steps).')
    tie_embeddings: bool = key(False, 'Language models: the output layer reuses the embedding matrix.')
    pretrained_embeddings: str | None = key(None,
        "A word2vec/GloVe text file (optionally .gz; fastText's .vec header is skipped): the embedding rows "
        "of whole-word pieces start from its vectors (see pipeline.data.vectors). Part of the train stage's "
        'key by content.')
    freeze_embeddings: bool = key(False, 'Keep the embedding matrix fixed in training (needs pretrained_embeddings).')
    ensemble: int = key(1,
        'Sentiment: this many classifiers, each with its own weights, trained side by side on the same '
        'batches; the model outputs the mean of their probabilities.')
    cell: Literal["lstm", "gru", "simple_rnn"] = key("lstm",
        'The recurrent layer: `gru` and `simple_rnn` train the same data the same way, to compare cells '
        '(`pipeline inspect --compare-cells`); a GRU keeps cuDNN, a SimpleRNN has no such kernel.')
    forget_bias: float | None = key(None,
        "The starting bias of the gate that keeps the old state (an LSTM's forget gate, a GRU's update gate); "
        "null keeps Keras's (1 and 0). Higher remembers longer from the first step: see "
        'pipeline.models.builders.set_forget_bias and configs/long_range.yaml.')


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and batching."""

    epochs: int = key(5, 'Epochs to train at most (early stopping may end sooner).')
    batch_size: int = key(64, 'The global batch: with several replicas, each gets batch_size / replicas.')
    learning_rate: float = key(1e-3, "Adam's learning rate (the peak of a cosine schedule).")
    lr_schedule: Literal["constant", "cosine"] = key("constant",
        '`constant`, or `cosine`: a linear warm-up over warmup_steps optimizer steps from 0 to learning_rate, '
        'then a cosine decay to 0 at the end of the last epoch.')
    warmup_steps: int = key(0, 'With lr_schedule cosine: optimizer steps of linear rise from 0 first.')
    max_length: int = key(256, 'Sentiment: tokens kept of each text, BOS included; longer texts are cut.')
    sequence_length: int = key(128, 'Language models: tokens in each training window.')
    stateful: bool = key(False,
        "Language models: carry every recurrent layer's state from one window to the next (truncated "
        'backpropagation through time over batch_size parallel streams; see pipeline.models.stateful), and '
        'score validation and test as streams read in order.')
    seed: int = key(42, 'Seeds initialisation, shuffling and dropout (not the carving of splits: data.split_seed).')
    patience: int = key(2, 'Epochs without a better train.monitor before early stopping ends training.')
    monitor: Literal["val_loss", "val_accuracy", "val_bits_per_char", "val_perplexity"] = key("val_loss",
        'The validation metric that early stopping watches and that picks the epoch whose weights are kept: '
        'val_loss or val_accuracy; a language model also has val_bits_per_char and val_perplexity.')
    monitor_mode: Literal["auto", "min", "max"] = key("auto",
        'Whether a larger (`max`) or smaller (`min`) value is better; `auto`: larger for accuracy only.')
    buckets: int = key(32, 'Length buckets: batches hold texts of similar length, so less of each batch is padding.')
    ema_momentum: float = key(0.0,
        'Polyak averaging: with 0 < m < 1, validation, early stopping and the saved model use an exponential '
        'moving average of the weights, updated after every step with this momentum.')
    weight_decay: float = key(0.0,
        'Decoupled weight decay (AdamW): every step each weight shrinks by learning_rate * weight_decay of '
        'itself, apart from its gradient step; 0 = off.')
    label_smoothing: float = key(0.0,
        'Sentiment: the training target puts 1 - s on the label and s spread evenly over the classes (so is '
        'val_loss); 0 = off. Accuracy and the test figures are unaffected.')
    subword_sampling: float = key(0.0,
        'Sentiment, BPE or unigram pieces: every epoch reads the training texts in a segmentation '
        'SentencePiece samples afresh (subword regularisation) with this alpha: for BPE the chance that each '
        'merge is skipped (BPE-dropout), for unigram the smoothing of the distribution it samples from. '
        'Validation, test and the exported model keep the one best segmentation. 0 = off.')
    mixed_precision: Literal["auto", "on", "off"] = key("auto",
        'auto: float16 compute on a GPU, float32 on a CPU; on or off to force it.')
    deterministic: bool = key(False, "Make TensorFlow's ops deterministic (slower), for runs that must agree.")
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = key("auto",
        'Data-parallel training (see pipeline.training.distribute); batch_size stays the global batch.')
    devices: tuple[str, ...] = key((),
        'For `mirrored`: the devices to mirror over, a list such as [GPU:0, GPU:1] or [CPU:0, CPU:1] (the CPU '
        'is split into logical devices), or the same names comma-separated; empty: all GPUs.')
    worker_timeout: float = key(120.0,
        'For `multi_worker`: seconds a worker waits for the others, at start and at every step, before it '
        'stops with an error (a worker whose process is gone is noticed sooner).')
    sample_prompt: str = key("", 'Language models: each epoch, samples from "" and this prompt are logged to MLflow.')
    sample_tokens: int = key(200, 'Language models: tokens in each of those samples.')


@dataclass(frozen=True)
class ExportConfig:
    """Where SavedModels go."""

    dir: str = key("models", 'Where exports go: <dir>/<run name>/<version>/.')
    register_as: str | None = key(None,
        'Register each export as a version of this MLflow registered model; null: do not register.')


@dataclass(frozen=True)
class Config:
    """Everything one pipeline run needs."""

    name: str = key("imdb",
        "The config's name: the work folder and the run names start with it (default: the preset's file "
        'name).')
    task: Literal["sentiment", "lm"] = key("sentiment",
        'sentiment (a text classifier, any number of classes) or lm (a language model).')
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def to_dict(config: Config) -> dict[str, Any]:
    """The config as nested plain dicts (a list key as a list), as written to YAML."""
    return dataclasses.asdict(config, dict_factory=lambda items: {k: list(v) if isinstance(v, tuple) else v
                                                                  for k, v in items})


def flatten(config: Config) -> dict[str, Any]:
    """The config as `{"model.units": 128, ...}`, the form logged as MLflow params."""
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(to_dict(config), "")
    return flat
