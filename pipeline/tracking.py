"""The one module that talks to MLflow.

Stages call the small functions here; each is a no-op when no MLflow run is active, so a stage
also runs (and is tested) without tracking. `stage_run` opens the runs: one per stage, nested
under the parent run that `pipeline run` opens.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.keras import MlflowCallback

from pipeline.errors import TrackingError

log = logging.getLogger(__name__)
DEFAULT_EXPERIMENT = "pipeline"


def configure(tracking_uri: str | None, experiment: str | None) -> None:
    """Point MLflow at `tracking_uri` (MLflow's own default when None) and `experiment`.

    A tracking server that does not answer fails here, in seconds, before any data work:
    MLflow's own client would retry for minutes.
    """
    use(tracking_uri)
    # Under `mlflow run` (MLFLOW_RUN_ID set), its run and experiment become the pipeline's parent
    # run and experiment. MLFLOW_EXPERIMENT_ID is no such sign: set_experiment exports it too.
    if experiment or "MLFLOW_RUN_ID" not in os.environ:
        mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)


def use(tracking_uri: str | None) -> None:
    """Point MLflow at `tracking_uri` after checking it answers; None keeps MLflow's default."""
    if tracking_uri:
        check_reachable(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Raise `TrackingError` unless an http(s) tracking server answers its health check."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as err:
        reason = type(err).__name__
        raise TrackingError(
            f"MLflow tracking server {tracking_uri} is unreachable ({reason}); start it "
            "(mlflow server ...) or drop --tracking-uri to track in the local sqlite:///mlflow.db"
        ) from None


@contextlib.contextmanager
def start_run(name: str, tags: dict[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the active one, if any; marked FAILED if the body raises."""
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=name, nested=nested, tags=tags or {}) as run:
        yield run


def active() -> bool:
    return mlflow.active_run() is not None


def run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_params(params: dict[str, Any]) -> None:
    """Log params, `None` as the string "None" so every key shows in the UI."""
    if active():
        mlflow.log_params({k: ("None" if v is None else v) for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log the finite metrics on the active run."""
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if active():
        mlflow.log_metrics(finite, step=step)


def set_tags(tags: dict[str, Any]) -> None:
    if active():
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file, or every file below a folder."""
    if not active():
        return
    path = Path(path)
    if path.is_dir():
        for file in sorted(path.iterdir()):
            # DONE is the work directory's completion marker, not a result.
            if file.is_file() and file.name != "DONE":
                mlflow.log_artifact(str(file), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    if active():
        mlflow.log_text(text, artifact_file)


class EpochMetricsCallback(MlflowCallback):
    """MLflow's Keras callback, logging train and validation metrics with `step=epoch`.

    MLflow's version also logs every `evaluate` pass as un-stepped `validation_*` metrics,
    which duplicates the `val_*` ones; that part is switched off here.
    """

    def on_test_end(self, logs=None):
        pass

    def on_train_end(self, logs=None):
        if active():
            mlflow.flush_async_logging()


# Columns of `pipeline compare`: what tells runs apart, then what they scored.
COMPARE_PARAMS = ("task", "data.tfds", "tokenizer.model_type", "tokenizer.vocab_size", "model.layers",
                  "model.units", "model.bidirectional", "train.epochs", "train.seed")
COMPARE_METRICS = ("test_accuracy", "test_macro_f1", "test_auc", "test_loss", "test_perplexity",
                   "test_bits_per_char")
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_char")


def compare_runs(experiment: str | None, metric: str) -> list[dict[str, Any]]:
    """The experiment's top-level runs (one per `pipeline run`), best `metric` first.

    Runs without `metric` come last; losses, perplexity and bits per character sort ascending.
    """
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        raise TrackingError(f"no MLflow experiment named {name!r} at {mlflow.get_tracking_uri()}; "
                            "pass --experiment or --tracking-uri")
    runs = mlflow.MlflowClient().search_runs([found.experiment_id], max_results=1000)
    rows = []
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            continue
        row = {"run": run.info.run_name, "status": run.info.status}
        row.update({key: run.data.params.get(key, "") for key in COMPARE_PARAMS})
        row.update({key: run.data.metrics.get(key) for key in (*COMPARE_METRICS, metric)})
        rows.append(row)
    descending = not metric.endswith(LOWER_IS_BETTER)
    rows.sort(key=lambda r: (r[metric] is None, -(r[metric] or 0) if descending else (r[metric] or 0)))
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `rows`, leaving out columns that no row has a value for."""
    if not rows:
        return "no runs"
    columns = [c for c in rows[0] if any(r[c] not in (None, "", "None") for r in rows)]

    def cell(value: Any) -> str:
        return "-" if value in (None, "", "None") else f"{value:.4f}" if isinstance(value, float) else str(value)

    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def ui_command(port: int) -> list[str]:
    """The `mlflow ui` command for the tracking URI in force, bound to 127.0.0.1."""
    import sys

    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", mlflow.get_tracking_uri(),
            "--host", "127.0.0.1", "--port", str(port)]
