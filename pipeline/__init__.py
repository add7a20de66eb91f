"""Train, evaluate and export LSTM text models, every run tracked in MLflow: the Python API.

What the command line does, for a notebook or a script:

    import pipeline

    config = pipeline.load_config("configs/sst2_local.yaml", ["train.epochs=1"])
    results = pipeline.run(config, "data/work/sst2")
    print(results["evaluate"].metrics)

Each stage also runs alone (`pipeline.prepare(config, workdir)`, ...), reusing a finished output
of the same config as `pipeline run` does. Runs go to MLflow's tracking URI
(`MLFLOW_TRACKING_URI`, or `sqlite:///mlflow.db` here). Importing this package loads no
TensorFlow; running a stage does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config, load_config

__all__ = ["Config", "load_config", "run", "run_stage", "prepare", "tokenize", "train", "evaluate", "export"]


def run(config: Config, workdir: str | Path, force: str | None = None) -> dict[str, Any]:
    """Run every stage in order under one MLflow parent run, as `pipeline run` does.

    Args:
        config: from `load_config`.
        workdir: where stage outputs go (`data/work/<config name>` on the command line).
        force: the first stage to re-run even if its output exists; every later one re-runs too.

    Returns:
        Each stage's result by stage name: `results["evaluate"].metrics`, `results["export"].path`.
    """
    from pipeline import runner

    return runner.run_all(config, workdir, force=force)


def run_stage(stage: str, config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Run one stage (`prepare`, `tokenize`, `train`, `evaluate` or `export`) in its own MLflow run.

    A finished output for this config is reused unless `force`; the stages it reads must have run.
    """
    from pipeline import runner

    return runner.run_stage(stage, config, workdir, force=force)


def prepare(config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Read the dataset and write normalised splits; returns counts, labels and the output folder."""
    return run_stage("prepare", config, workdir, force)


def tokenize(config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Train SentencePiece on the training split and encode every split."""
    return run_stage("tokenize", config, workdir, force)


def train(config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Train (or resume training) the configured model; returns the kept epoch and its metrics."""
    return run_stage("train", config, workdir, force)


def evaluate(config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Compute the test metrics and plots of the trained model; `.metrics` holds the figures."""
    return run_stage("evaluate", config, workdir, force)


def export(config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Write a SavedModel that takes raw text; `.path` is its folder."""
    return run_stage("export", config, workdir, force)
