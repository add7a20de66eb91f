"""Run stages inside MLflow runs: one run per stage, nested under one parent for `pipeline run`.

This is where a stage's result becomes params, metrics, tags and artifacts; the stages
themselves only read and write files.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import evaluate, export, models, prepare, tokenize, tracking, train
from pipeline.config import Config
from pipeline.workdir import STAGES, stage_dir

log = logging.getLogger(__name__)
MODULES = {"prepare": prepare, "tokenize": tokenize, "train": train, "evaluate": evaluate, "export": export}


def run_stage(stage: str, config: Config, workdir: str | Path) -> Any:
    """Run one stage in its own MLflow run (nested when a parent run is active)."""
    with tracking.start_run(stage, tags={**run_tags(config), "stage": stage}):
        log_config(config)
        log.info("== %s", stage)
        result = MODULES[stage].run(config, workdir)
        _log_outputs(stage, config, Path(workdir), result)
    return result


def run_all(config: Config, workdir: str | Path) -> dict[str, Any]:
    """Run every stage in order under one parent run; the test metrics land on the parent too."""
    results = {}
    fingerprint = config_lib.fingerprint(config)
    name = f"{config_lib.run_name(config)}-{fingerprint}"
    with tracking.start_run(name, tags={**run_tags(config), "config_fingerprint": fingerprint}):
        log_config(config)
        for stage in STAGES:
            results[stage] = run_stage(stage, config, workdir)
        # What the UI's run table should show without opening the child runs.
        tracking.log_metrics(results["evaluate"].metrics)
        tracking.set_tags({"export_path": results["export"].path, "lstm_kernel": results["train"].lstm_kernel})
    return results


def run_tags(config: Config) -> dict[str, str]:
    """Tags that let the MLflow UI filter and group runs."""
    return {
        "task": config.task,
        "dataset": config.data.tfds or Path(config.data.train or "").name,
        "preset": config.name,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "device": "gpu" if models.gpu_visible() else "cpu",
    }


def log_config(config: Config) -> None:
    """The resolved config, as flat params and as `config.yaml`."""
    tracking.log_params(config_lib.flatten(config))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        config_lib.dump_yaml(config, path)
        tracking.log_artifact(path)


def _log_outputs(stage: str, config: Config, workdir: Path, result: Any) -> None:
    out = stage_dir(workdir, stage)
    if stage == "prepare":
        counts = {f"{k}_examples": v for k, v in result.counts.items()}
        tracking.log_metrics({**counts, "skipped_blank": result.skipped_blank})
        for name in ("stats.json", "labels.json"):
            tracking.log_artifact(out / name, "prepare")
    elif stage == "tokenize":
        splits = [s for s in ("train", "validation", "test") if s in result.stats]
        tracking.log_metrics({"vocab_size": result.vocab_size,
                              **{f"{s}_truncated": result.stats[s]["truncated"] for s in splits},
                              **{f"{s}_tokens": result.stats[s]["tokens"] for s in splits}})
        for name in ("tokenizer.model", "tokenizer.vocab", "stats.json"):
            tracking.log_artifact(out / name, "tokenizer")
    elif stage == "train":
        tracking.log_metrics({"epochs_run": result.epochs_run, "best_epoch": result.best_epoch})
        for name in ("history.csv", "summary.json"):
            tracking.log_artifact(out / name, "train")
    elif stage == "evaluate":
        tracking.log_metrics(result.metrics)
        tracking.log_artifact(out, "evaluate")
    elif stage == "export":
        tracking.log_artifact(result.path, "saved_model")
        tracking.set_tags({"export_path": result.path})
