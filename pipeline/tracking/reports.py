"""Reading runs back: the compare table and the UI command."""

from __future__ import annotations

import os
from typing import Any

import mlflow

from pipeline import metrics
from pipeline.errors import TrackingError
from pipeline.tracking.client import DEFAULT_EXPERIMENT

# Columns of `pipeline compare`: what tells runs apart, then what they scored.
COMPARE_PARAMS = ("task", "data.tfds", "tokenizer.model_type", "tokenizer.vocab_size", "model.layers",
                  "model.units", "model.bidirectional", "model.ensemble", "train.epochs", "train.seed")


def compare_runs(experiment: str | None, metric: str) -> list[dict[str, Any]]:
    """The experiment's `pipeline run`s (top-level runs, and a sweep's trials), best `metric` first.

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
        tags = run.data.tags
        # A sweep's trials are `pipeline run`s nested under the sweep's own run; list them instead.
        if "sweep.trial" not in tags and ("mlflow.parentRunId" in tags or "sweep.study" in tags):
            continue
        row = {"run": run.info.run_name, "status": run.info.status}
        row.update({key: run.data.params.get(key, "") for key in COMPARE_PARAMS})
        row.update({key: run.data.metrics.get(key) for key in (*metrics.test_metrics(), metric)})
        rows.append(row)
    descending = metrics.higher_is_better(metric)
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
