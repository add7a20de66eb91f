"""Run lifecycle: opening runs, recovering runs whose process died, and logging."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag

from pipeline.errors import Interrupted, Stopped, TrackingError

log = logging.getLogger(__name__)

@contextlib.contextmanager
def start_run(name: str, tags: dict[str, str] | None = None, run_id: str | None = None) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the active one, if any; `run_id` resumes an existing run instead.

    The run ends FINISHED when the body returns, KILLED when the process is interrupted
    (Ctrl-C, SIGTERM) or the work is stopped on purpose (`Stopped`, with its tags), and FAILED on
    any error, with the error's text in the `error` tag.
    """
    nested = mlflow.active_run() is not None
    run = mlflow.start_run(run_id=run_id, run_name=None if run_id else name, nested=nested, tags=tags or {})
    try:
        yield run
    except (KeyboardInterrupt, Interrupted):
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except Stopped as stop:
        mlflow.set_tags(stop.tags)
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
        raise
    except BaseException as error:
        text = str(error) or type(error).__name__
        mlflow.set_tag("error", f"{type(error).__name__}: {text}"[:5000])
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))


def run_reference() -> dict[str, str]:
    """Ids of the active run, its experiment and its parent, to find and link it later."""
    run = mlflow.active_run()
    if run is None:
        return {}
    ref = {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        ref["parent_run_id"] = parent
    return ref


def process_tags() -> dict[str, str]:
    """Which process owns a run: how a later process tells a live run from one left by a crash."""
    return {"pipeline.host": socket.gethostname(), "pipeline.pid": str(os.getpid())}


def process_gone(tags: dict[str, str]) -> bool:
    """Whether the process that `process_tags` recorded in `tags` is known to have ended: it ran on
    this host and no pipeline process has its pid now. Another host's process cannot be checked."""
    if tags.get("pipeline.host") != socket.gethostname():
        return False
    return not _is_pipeline_process(int(tags.get("pipeline.pid", "0") or 0))


def settle_orphans(tags: dict[str, str]) -> list[str]:
    """Mark KILLED the RUNNING runs with all of `tags` whose process is gone (`process_gone`), and
    the RUNNING runs nested below them; return their ids.

    `settle_stale_runs` finds a crashed `pipeline run` by its config; a sweep's own run has no
    config, and a crashed sweep's trials need not run again, so a sweep finds them by its tags.
    """
    found = mlflow.search_runs(filter_string=_tag_filter(tags) + " and attributes.status = 'RUNNING'",
                               output_format="list", search_all_experiments=True)
    settled, parents = [], [r.info.run_id for r in found if process_gone(r.data.tags)]
    while parents:
        run_id = parents.pop()
        if run_id in settled:
            continue
        mlflow.MlflowClient().set_terminated(run_id, RunStatus.to_string(RunStatus.KILLED))
        settled.append(run_id)
        children = mlflow.search_runs(
            filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
            output_format="list", search_all_experiments=True)
        parents += [child.info.run_id for child in children]
    if settled:
        log.info("marked %d run(s) of a stopped process as KILLED", len(settled))
    return settled


def annotate_runs(where: dict[str, str], tags: dict[str, Any], metrics: dict[str, float] | None = None) -> int:
    """Add `tags` and `metrics` to the runs of the active run's experiment whose tags include all of
    `where` (runs that have ended, such as a sweep's trial); return how many there were."""
    client = mlflow.MlflowClient()
    found = client.search_runs([mlflow.active_run().info.experiment_id], filter_string=_tag_filter(where))
    for run in found:
        client.log_batch(run.info.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()],
                         metrics=[Metric(key, float(value), int(time.time() * 1000), 0)
                                  for key, value in (metrics or {}).items()])
    return len(found)


def _tag_filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.`{key}` = '{value}'" for key, value in tags.items())


def settle_stale_runs(config_fingerprint: str, workdir: str, keep: set[str | None]) -> list[str]:
    """Mark KILLED the runs of this config and work folder that a crashed process on this host
    left RUNNING; return their ids.

    Runs in `keep` (the ones about to be resumed) are left alone, and so are other hosts' runs,
    whose processes cannot be checked from here. A run whose process is still alive means the
    same config is running in the same work folder now, which is an error: both would write the
    same files.
    """
    found = mlflow.search_runs(
        filter_string=(f"tags.config_fingerprint = '{config_fingerprint}' and attributes.status = 'RUNNING' "
                       f"and tags.`pipeline.host` = '{socket.gethostname()}'"),
        output_format="list", search_all_experiments=True)
    settled = []
    for run in found:
        tags = run.data.tags
        if run.info.run_id in keep or tags.get("pipeline.workdir", workdir) != workdir:
            continue
        pid = int(tags.get("pipeline.pid", "0") or 0)
        if pid != os.getpid() and _is_pipeline_process(pid):
            raise TrackingError(
                f"run {run.info.run_id} of this config is still running (pid {pid}); wait for it to end, "
                f"or stop it (kill {pid}) and run again to resume it")
        mlflow.MlflowClient().set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        settled.append(run.info.run_id)
    if settled:
        log.info("marked %d run(s) left RUNNING by a stopped process as KILLED", len(settled))
    return settled


def _is_pipeline_process(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc: all we can tell is whether the pid exists
        except OSError:
            return False
        return True
    return b"pipeline" in cmdline


def finished_child(parent_id: str, stage: str) -> bool:
    """Whether the run `parent_id` has a FINISHED nested run for `stage`."""
    found = mlflow.search_runs(
        filter_string=(f"tags.mlflow.parentRunId = '{parent_id}' and tags.stage = '{stage}' "
                       "and attributes.status = 'FINISHED'"),
        output_format="list", search_all_experiments=True, max_results=1)
    return bool(found)


def run_exists(run_id: str) -> bool:
    """Whether `run_id` is a live (not deleted) run in the current tracking store."""
    try:
        return mlflow.MlflowClient().get_run(run_id).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        return False


def add_to_run(run_id: str, folder: Path, artifact_path: str, metrics: dict[str, float],
               steps: dict[str, list[float]] | None = None) -> None:
    """Add a folder's files and some metrics to an existing run, finished or not, without reopening
    it (its status and end time stay as they were). `steps` are series logged at steps 0, 1, ..."""
    client = mlflow.MlflowClient()
    client.log_artifacts(run_id, str(folder), artifact_path)
    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, 0) for k, v in metrics.items() if math.isfinite(float(v))]
    entries += [Metric(k, float(v), now, step) for k, series in (steps or {}).items()
                for step, v in enumerate(series) if math.isfinite(float(v))]
    for start in range(0, len(entries), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=entries[start:start + 1000])


def active() -> bool:
    return mlflow.active_run() is not None


def run_id() -> str | None:
    run = mlflow.active_run()
    return run.info.run_id if run else None


def log_params(params: dict[str, Any]) -> None:
    """Log params, `None` as the string "None" so every key shows in the UI, a list comma-separated."""
    if active():
        mlflow.log_params({k: "None" if v is None else ",".join(v) if isinstance(v, (list, tuple)) else v
                           for k, v in params.items()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log the finite metrics on the active run."""
    finite = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    if active():
        mlflow.log_metrics(finite, step=step)


def set_tags(tags: dict[str, Any]) -> None:
    if active():
        mlflow.set_tags({k: str(v) for k, v in tags.items()})


def note_reuse(output: Path, made_by: dict[str, str]) -> None:
    """Describe a cache-hit run in its MLflow note, linking the run that made the output."""
    run_id, experiment = made_by.get("run_id"), made_by.get("experiment_id")
    source = f"[run {run_id}](#/experiments/{experiment}/runs/{run_id})" if run_id else "a run without tracking"
    set_tags({"mlflow.note.content": f"Cached: this stage's output `{output}` was reused; {source} made it."})


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Log a file, or a folder with everything below it (a SavedModel's `variables/` too)."""
    if not active():
        return
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_text(text: str, artifact_file: str) -> None:
    if active():
        mlflow.log_text(text, artifact_file)
