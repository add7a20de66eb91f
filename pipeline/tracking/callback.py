"""Per-epoch metrics from Keras to MLflow."""

from __future__ import annotations

import math
import time

import mlflow
from mlflow.entities import Metric
from mlflow.keras import MlflowCallback

from pipeline.tracking.runs import active


def log_epoch_history(history: dict[str, list[float]]) -> None:
    """Log per-epoch metrics at `step=epoch`, skipping (metric, step) pairs the run already has.

    A resumed training calls this with the epochs of its checkpoint: a process killed between
    writing a checkpoint and logging its metrics loses no epoch, and none is logged twice.
    """
    run = mlflow.active_run()
    if run is None:
        return
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    missing = []
    for key, values in history.items():
        logged = {m.step for m in client.get_metric_history(run_id, key)}
        missing += [Metric(key, float(v), now, step) for step, v in enumerate(values)
                    if step not in logged and math.isfinite(float(v))]
    for start in range(0, len(missing), 1000):
        client.log_batch(run_id, metrics=missing[start:start + 1000])


class EpochMetricsCallback(MlflowCallback):
    """MLflow's Keras callback, logging train and validation metrics with `step=epoch`.

    MLflow's version also logs every `evaluate` pass as un-stepped `validation_*` metrics,
    which duplicates the `val_*` ones; that part is switched off here.
    """

    def on_test_end(self, logs=None):
        pass

    def on_epoch_end(self, epoch, logs=None):
        # Synchronous, so that a step is in MLflow before the next epoch starts. An epoch whose
        # loss is not finite has no checkpoint either; a re-run starts before it, and logs it then.
        if logs and active() and math.isfinite(float(logs.get("loss", 0.0))):
            mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch, synchronous=True)

    def on_train_end(self, logs=None):
        if active():
            mlflow.flush_async_logging()
