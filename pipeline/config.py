"""Run configuration: frozen dataclasses, YAML presets and `--set key=value` overrides.

A `Config` is built once per command from defaults, then a YAML preset, then overrides, and is
never mutated afterwards. Every key is checked: an unknown key or a value of the wrong type is a
`ConfigError` that names the key and, for a typo, the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline import synthetic
from pipeline.errors import ConfigError


class _YAML12Loader(yaml.SafeLoader):
    """YAML's safe loader with YAML 1.2 booleans: only true/false, so `on`, `off`, `yes` and
    `no` stay strings (`train.mixed_precision: on` means the string "on")."""


_YAML12Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
# YAML 1.2 floats include `1e-3` (no dot), which YAML 1.1 reads as a string.
_YAML12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_YAML12Loader)  # a SafeLoader: no Python objects


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how to read them."""

    # A tensorflow-datasets name such as `imdb_reviews`; when set, the split keys below are TFDS
    # split expressions, otherwise they are local file or folder paths.
    tfds: str | None = "imdb_reviews"
    train: str | None = "train"
    validation: str | None = None
    test: str | None = "test"
    format: Literal["auto", "label_text", "csv", "tsv", "jsonl", "text", "folder"] = "auto"
    text_field: str = "text"
    label_field: str = "label"
    # `auto` reads UTF-8, and a file that is not valid UTF-8 in the encoding a detector names.
    encoding: str = "auto"
    # Used only for a split that is not given: carved from train, seeded and stratified.
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    # Seeds the carving alone, so a seed study (train.seed) keeps its validation and test sets.
    split_seed: int = 42
    # For `task: lm` with `format: text`: is a document a whole file or one line?
    document: Literal["file", "line"] = "file"
    tfds_data_dir: str = "data/tfds"
    # Folder holding pre-placed TFDS downloads, for machines without network access.
    manual_dir: str | None = None
    # Make the data instead of reading it (see pipeline.synthetic): `first_token` and `first_symbol`
    # are sentiment-style examples of synthetic_length symbols whose label only the first symbol
    # decides (a key unlike the rest, or one from the same alphabet as the rest). data.tfds and
    # the split keys are unused; validation and test are carved from the synthetic_examples.
    synthetic: str | None = None
    synthetic_length: int = 100
    synthetic_examples: int = 4000


@dataclass(frozen=True)
class TokenizerConfig:
    """SentencePiece model trained on the training split."""

    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    character_coverage: float = 0.9995
    # SentencePiece samples at most this many sentences to train on, which bounds memory.
    max_sentences: int = 1_000_000


@dataclass(frozen=True)
class ModelConfig:
    """LSTM architecture; every choice here keeps the cuDNN kernel eligible on a GPU."""

    embedding_dim: int = 128
    layers: int = 2
    units: int = 128
    bidirectional: bool = True
    dropout: float = 0.3
    # Drops whole token embeddings (every channel of a token at once), so the classifier cannot
    # lean on one word.
    embedding_dropout: float = 0.0
    # Anything above 0 rules out the cuDNN kernel; kept for users who accept that cost.
    recurrent_dropout: float = 0.0
    pooling: Literal["final", "mean", "mean_max"] = "final"
    tie_embeddings: bool = False
    # A word2vec/GloVe text file (optionally .gz; fastText's .vec header is skipped): the embedding
    # rows of whole-word pieces start from its vectors (see pipeline.embeddings). Part of the
    # train stage's key by content.
    pretrained_embeddings: str | None = None
    # Keep the embedding matrix fixed in training (needs pretrained_embeddings).
    freeze_embeddings: bool = False
    # Sentiment: this many classifiers, each with its own weights, trained side by side on the
    # same batches; the model outputs the mean of their probabilities.
    ensemble: int = 1
    # The recurrent layer: `gru` and `simple_rnn` train the same data the same way, to compare
    # cells (`pipeline inspect --compare-cells`); a GRU keeps cuDNN, a SimpleRNN has no such kernel.
    cell: Literal["lstm", "gru", "simple_rnn"] = "lstm"
    # The starting bias of the gate that keeps the old state (an LSTM's forget gate, a GRU's update
    # gate); null keeps Keras's (1 and 0). Higher remembers longer from the first step: see
    # pipeline.models.set_forget_bias and configs/long_range.yaml.
    forget_bias: float | None = None


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and batching."""

    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 1e-3
    # `constant`, or `cosine`: a linear warm-up over warmup_steps optimizer steps from 0 to
    # learning_rate, then a cosine decay to 0 at the end of the last epoch.
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    max_length: int = 256
    sequence_length: int = 128
    # Language models: carry every recurrent layer's state from one window to the next (truncated
    # backpropagation through time over batch_size parallel streams; see pipeline.stateful), and
    # score validation and test as streams read in order.
    stateful: bool = False
    seed: int = 42
    patience: int = 2
    # The validation metric that early stopping watches and that picks the epoch whose weights are
    # kept: val_loss or val_accuracy; a language model also has val_bits_per_char and val_perplexity.
    monitor: Literal["val_loss", "val_accuracy", "val_bits_per_char", "val_perplexity"] = "val_loss"
    # Whether a larger (`max`) or smaller (`min`) value is better; `auto`: larger for accuracy only.
    monitor_mode: Literal["auto", "min", "max"] = "auto"
    buckets: int = 32
    # Polyak averaging: with 0 < m < 1, validation, early stopping and the saved model use an
    # exponential moving average of the weights, updated after every step with this momentum.
    ema_momentum: float = 0.0
    # Decoupled weight decay (AdamW): every step each weight shrinks by learning_rate * weight_decay
    # of itself, apart from its gradient step; 0 = off.
    weight_decay: float = 0.0
    # Sentiment: the training target puts 1 - s on the label and s spread evenly over the classes
    # (so is val_loss); 0 = off. Accuracy and the test figures are unaffected.
    label_smoothing: float = 0.0
    # Sentiment, BPE or unigram pieces: every epoch reads the training texts in a segmentation
    # SentencePiece samples afresh (subword regularisation) with this alpha: for BPE the chance
    # that each merge is skipped (BPE-dropout), for unigram the smoothing of the distribution it
    # samples from. Validation, test and the exported model keep the one best segmentation. 0 = off.
    subword_sampling: float = 0.0
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    deterministic: bool = False
    # Data-parallel training (see pipeline.distribute); batch_size stays the global batch.
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    # For `mirrored`: comma-separated devices such as "GPU:0,GPU:1" or "CPU:0,CPU:1"; empty = all GPUs.
    devices: str = ""
    # For `multi_worker`: seconds a worker waits for the others, at start and at every step, before
    # it stops with an error (a worker whose process is gone is noticed sooner).
    worker_timeout: float = 120.0
    # Language models: each epoch, samples from "" and this prompt are logged to MLflow.
    sample_prompt: str = ""
    sample_tokens: int = 200


@dataclass(frozen=True)
class ExportConfig:
    """Where SavedModels go."""

    dir: str = "models"
    register_as: str | None = None


@dataclass(frozen=True)
class Config:
    """Everything one pipeline run needs."""

    name: str = "imdb"
    task: Literal["sentiment", "lm"] = "sentiment"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Build a config from the defaults, an optional YAML preset and `key=value` overrides.

    Args:
        path: a YAML file whose nested mappings mirror `Config`.
        overrides: strings such as `train.epochs=3`; values are parsed as YAML scalars.

    Returns:
        The validated, frozen config.
    """
    tree: dict[str, Any] = {}
    # Which layer set each dotted key last: 0 the preset, 1.. the overrides in order.
    layers: dict[str, int] = {}
    if path is not None:
        tree = read_yaml(Path(path))
        layers = {key: 0 for key in _dotted_keys(tree)}
        if "name" not in tree:
            tree["name"] = Path(path).stem
    for layer, item in enumerate(overrides, start=1):
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
        layers[key] = layer
    config = _build(Config, tree, prefix="")
    _check_values(config)
    _check_ignored_keys(config, layers)
    return config


def parse_override(item: str) -> tuple[str, Any]:
    """Split `a.b=value` into its key and its YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not KEY=VALUE (for example train.epochs=3)")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # Only scalars are parsed: `ROMEO:` or `[x]` stay the strings they were typed as.
    if isinstance(value, (dict, list)):
        value = raw
    return key.strip(), value


def to_dict(config: Config) -> dict[str, Any]:
    """The config as nested plain dicts, as written to YAML."""
    return dataclasses.asdict(config)


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


def dump_yaml(config: Config, path: Path) -> None:
    """Write the resolved config, loadable again with `load_config(path)`."""
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")


def with_values(config: Config, values: dict[str, Any]) -> Config:
    """`config` with some dotted keys set to new values, checked as `load_config` checks a preset.

    Args:
        config: the config to start from.
        values: new values by dotted key, e.g. `{"model.units": 96}` (a sweep trial's values).

    Returns:
        The new, validated config; a `ConfigError` names an unknown key or a bad value.
    """
    tree = to_dict(config)
    for key, value in values.items():
        check_key(key)
        _set_dotted(tree, key, value)
    changed = _build(Config, tree, prefix="")
    _check_values(changed)
    return changed


def check_key(key: str) -> None:
    """Raise `ConfigError` unless `key` is a dotted config key such as `model.units`; the message
    names the nearest valid key."""
    valid = list(flatten(Config()))
    if key not in valid:
        raise ConfigError(_unknown_key_message(key, valid))


def read_yaml(path: Path, kind: str = "config file",
              missing: str = "pass a YAML preset from configs/") -> dict[str, Any]:
    """A YAML file holding a mapping, read as presets are read (YAML 1.2 booleans and floats).

    Args:
        path: the file.
        kind: what the file is, for error messages ("config file", "space file").
        missing: the fix to suggest when the file does not exist.
    """
    if not path.is_file():
        raise ConfigError(f"{kind} {path} does not exist; {missing}")
    try:
        tree = _load_yaml(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{kind} {path} is not valid UTF-8 YAML: {err}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping of keys, not {type(tree).__name__}")
    return tree


def _dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        keys += _dotted_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, tree: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(_unknown_key_message(dotted, [f"{prefix}{n}" for n in names]))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted} is a section; set its keys, e.g. {dotted}.x")
            kwargs[key] = _build(hint, value, prefix=f"{dotted}.")
        else:
            kwargs[key] = _coerce(dotted, value, hint)
    return cls(**kwargs)


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]}?" if close else f"valid keys here: {', '.join(valid)}"
    return f"unknown config key {key}; {hint}"


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the annotation `hint`, allowing int -> float only."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"config key {key} must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
    if hint in (int, float) and isinstance(value, str):
        value = _number(value, hint)  # "3" from a quoted YAML value or a tool means 3
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"config key {key} must be {hint.__name__}; got {value!r} ({type(value).__name__})"
        )
    return value


def _number(text: str, hint: type) -> Any:
    """`text` as an int or float when it spells one exactly, else unchanged (and then refused)."""
    try:
        return hint(text.strip())
    except ValueError:
        return text


def _check_values(config: Config) -> None:
    """Range checks that the types alone cannot express."""
    positive = {
        "tokenizer.vocab_size": config.tokenizer.vocab_size,
        "model.embedding_dim": config.model.embedding_dim,
        "model.layers": config.model.layers,
        "model.units": config.model.units,
        "model.ensemble": config.model.ensemble,
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.max_length": config.train.max_length,
        "train.sequence_length": config.train.sequence_length,
        "train.buckets": config.train.buckets,
        "data.synthetic_length": config.data.synthetic_length,
        "data.synthetic_examples": config.data.synthetic_examples,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"config key {key} must be at least 1; got {value}")
    fractions = {
        "data.validation_fraction": config.data.validation_fraction,
        "data.test_fraction": config.data.test_fraction,
        "model.dropout": config.model.dropout,
        "model.embedding_dropout": config.model.embedding_dropout,
        "model.recurrent_dropout": config.model.recurrent_dropout,
        "train.ema_momentum": config.train.ema_momentum,
        "train.label_smoothing": config.train.label_smoothing,
    }
    for key, value in fractions.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"config key {key} must be in [0, 1); got {value}")
    non_negative = {"train.warmup_steps": config.train.warmup_steps, "train.weight_decay": config.train.weight_decay}
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"config key {key} must be 0 or more; got {value}")
    if config.train.warmup_steps and config.train.lr_schedule == "constant":
        raise ConfigError("config key train.warmup_steps needs a schedule to warm up into; "
                          "set train.lr_schedule=cosine")
    if config.train.learning_rate <= 0:
        raise ConfigError(f"config key train.learning_rate must be positive; got {config.train.learning_rate}")
    if config.train.worker_timeout <= 0:
        raise ConfigError(f"config key train.worker_timeout must be above 0 seconds; got {config.train.worker_timeout}")
    if config.data.synthetic not in (None, *synthetic.TASKS):
        raise ConfigError(f"config key data.synthetic must be {', '.join(synthetic.TASKS)} or null; "
                          f"got {config.data.synthetic!r}")
    if config.data.synthetic and config.task != "sentiment":
        raise ConfigError("config key data.synthetic makes labelled examples for task sentiment; set task=sentiment")
    if config.data.train is None and config.data.synthetic is None:
        raise ConfigError("config key data.train is required: a TFDS split or a local file")
    if config.task == "lm" and config.model.bidirectional:
        raise ConfigError(
            "config key model.bidirectional must be false for task lm: a language model predicts "
            "the next token, and a backward LSTM would see it; set model.bidirectional=false"
        )
    if config.model.freeze_embeddings and not config.model.pretrained_embeddings:
        raise ConfigError("config key model.freeze_embeddings=true would freeze random vectors; "
                          "set model.pretrained_embeddings=PATH or model.freeze_embeddings=false")
    if config.task != "lm" and config.train.monitor in ("val_bits_per_char", "val_perplexity"):
        raise ConfigError(f"config key train.monitor={config.train.monitor} applies to task lm only; "
                          "a sentiment model has val_loss and val_accuracy")
    if config.train.stateful and config.task != "lm":
        raise ConfigError("config key train.stateful applies to task lm only: a classifier reads each example "
                          "from a zero state; set train.stateful=false")
    if config.train.stateful and config.train.distribute in ("mirrored", "multi_worker"):
        raise ConfigError(f"config key train.stateful cannot be used with train.distribute="
                          f"{config.train.distribute}: the carried states belong to one device's batch; "
                          "set train.distribute=none")
    if config.task == "lm" and config.model.ensemble != 1:
        raise ConfigError(f"config key model.ensemble applies to task sentiment only; got "
                          f"{config.model.ensemble} for task lm; set model.ensemble=1")
    sampling = config.train.subword_sampling
    if not 0.0 <= sampling <= 1.0:
        raise ConfigError(f"config key train.subword_sampling must be in [0, 1]; got {sampling}")
    if sampling and config.task == "lm":
        raise ConfigError("config key train.subword_sampling applies to task sentiment only: a language model "
                          "reads one token stream; set train.subword_sampling=0")
    if config.task == "lm" and config.train.label_smoothing:
        raise ConfigError("config key train.label_smoothing applies to task sentiment only: a language model's "
                          "bits per character and perplexity are read from its loss; set train.label_smoothing=0")


def _check_ignored_keys(config: Config, layers: dict[str, int]) -> None:
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
    a cluster, as `_check_ignored_keys` lets it."""
    if config.tokenizer.model_type not in ("bpe", "unigram") or workers > 1:
        return 0.0
    return config.train.subword_sampling


def monitor_mode(train: TrainConfig) -> str:
    """`max` or `min`: which way `train.monitor` improves."""
    if train.monitor_mode != "auto":
        return train.monitor_mode
    return "max" if train.monitor.endswith("accuracy") else "min"


def run_name(config: Config) -> str:
    """A name that says what the model is, e.g. `sst2-bilstm-2x128` or `sst2-bigru-2x128` (also its
    export folder)."""
    cell = {"lstm": "lstm", "gru": "gru", "simple_rnn": "rnn"}[config.model.cell]
    kind = f"bi{cell}" if config.model.bidirectional else cell
    members = f"-ensemble{config.model.ensemble}" if config.model.ensemble > 1 else ""
    return f"{config.name}-{kind}-{config.model.layers}x{config.model.units}{members}"


def fingerprint(config: Config, length: int = 6) -> str:
    """A short hash of the resolved config: equal configs, equal fingerprints.

    Values are already typed by `load_config`, so `3` and `"3"` cannot give two fingerprints.
    """
    import hashlib
    import json

    text = json.dumps(flatten(config), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]
