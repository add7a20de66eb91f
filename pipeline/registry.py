"""The one list of stages: each declared once, with the stages it reads, the module that runs it,
its help line and the config keys its output depends on.

The runner, the stage keys (`pipeline.store.cache`), the work folders and the CLI all walk
`STAGES`; nothing else names a stage in order. This module imports no TensorFlow: a stage's
module is imported only when the stage runs or loads (`Stage.module`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from pipeline import config as config_lib
from pipeline.config import Config


@dataclass(frozen=True)
class Stage:
    """A stage of the pipeline.

    Attributes:
        name: the command and folder name (`pipeline tokenize`, `<workdir>/tokenize/<key>/`).
        module: its module under the package, e.g. `stages.train`, with `run(config, workdir)` and
            `load(config, workdir)`, both returning the stage's typed result. A result has
            `logged()`, what MLflow receives of it (`pipeline.stages.results.Logged`).
        reads: the stages whose output it reads; their keys are part of its key.
        help: one line for `pipeline --help`.
        config_keys: the dotted config keys its output depends on, for this config.
    """

    name: str
    module: str
    reads: tuple[str, ...]
    help: str
    config_keys: Callable[[Config], list[str]]

    def load_module(self) -> ModuleType:
        return importlib.import_module(f"pipeline.{self.module}")

    def run(self, config: Config, workdir) -> Any:
        return self.load_module().run(config, workdir)

    def load(self, config: Config, workdir) -> Any:
        return self.load_module().load(config, workdir)


def _prepare_keys(config: Config) -> list[str]:
    flat = config_lib.flatten(config)
    keys = ["task", "data.tfds", "data.format", "data.text_field", "data.label_field", "data.encoding",
            "data.document"]
    carved = [s for s in ("validation", "test") if flat[f"data.{s}"] is None or flat["data.synthetic"]]
    if flat["data.synthetic"]:  # its examples come from these keys and the seed
        keys += ["data.synthetic", "data.synthetic_length", "data.synthetic_examples"]
    keys += [f"data.{s}_fraction" for s in carved]
    if carved and config.task != "lm":
        keys.append("data.split_seed")  # stratified carving is seeded; an LM's is the stream's tail
    return keys


def _tokenize_keys(config: Config) -> list[str]:
    keys = ["task", *(k for k in config_lib.flatten(config) if k.startswith("tokenizer."))]
    return keys if config.task == "lm" else [*keys, "train.max_length"]


def _train_keys(config: Config) -> list[str]:
    unused = ({"train.max_length", "train.buckets"} if config.task == "lm" else
              {"train.sequence_length", "train.sample_prompt", "train.sample_tokens", "train.max_length"})
    unused |= {"train.worker_timeout"}  # how long to wait for a worker changes no result
    return ["task", *(k for k in config_lib.flatten(config) if k.startswith(("model.", "train.")) and k not in unused)]


def _task_only(config: Config) -> list[str]:
    # evaluate and export read only what train and tokenize wrote, through their keys.
    return ["task"]


STAGES: tuple[Stage, ...] = (
    Stage("prepare", "stages.prepare", (),
          "Read the dataset (TFDS or local files) and write normalised splits.", _prepare_keys),
    Stage("tokenize", "stages.tokenization", ("prepare",),
          "Train SentencePiece on the training split and encode every split.", _tokenize_keys),
    Stage("train", "stages.train", ("tokenize",),
          "Train the LSTM with model.fit, early stopping and checkpoints.", _train_keys),
    Stage("evaluate", "stages.evaluate", ("train",),
          "Compute test metrics, a confusion matrix and learning curves.", _task_only),
    Stage("export", "stages.export", ("train",),
          "Write a SavedModel that takes raw text, under `export.dir/<run name>/<version>/`.", _task_only),
)
NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)
BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}


def get(name: str) -> Stage:
    """The stage called `name` (a `KeyError` for any other name)."""
    return BY_NAME[name]
