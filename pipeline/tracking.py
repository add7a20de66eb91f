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
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.keras import MlflowCallback

from pipeline.errors import Interrupted, Stopped, TrackingError

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
        with _creation_lock(mlflow.get_tracking_uri()):
            mlflow.set_experiment(experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT)


@contextlib.contextmanager
def _creation_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise the first touch of a local SQLite store among processes.

    MLflow creates the tables and the experiment on first use without a lock, so two runs
    started together on a new store would both try, and one would fail mid-migration. A file
    lock beside the database (`<db>.lock`) makes the second one wait for the first.
    """
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock, as before
        fcntl = None
    from sqlalchemy.engine import make_url

    # The path as SQLite opens it: MLflow percent-encodes the default URI (a space is %20).
    database = make_url(tracking_uri).database if tracking_uri.startswith("sqlite:") else None
    if fcntl is None or not database or database == ":memory:":
        yield
        return

    database = Path(database)
    database.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does for the database
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def use(tracking_uri: str | None) -> None:
    """Point MLflow at `tracking_uri` after checking it answers; None keeps MLflow's default."""
    if tracking_uri:
        check_reachable(tracking_uri)
        mlflow.set_tracking_uri(tracking_uri)


def current_uri() -> str:
    """The tracking URI in force (MLflow's default, `sqlite:///<cwd>/mlflow.db`, if none was set)."""
    return mlflow.get_tracking_uri()


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


def register_export(path: Path, name: str, key: str, task: str) -> str:
    """Log an export as an MLflow model in the active run and register it as a version of `name`.

    The version is tagged with the export's cache key, so an export registered once is not
    registered again by a later run that reuses it; that run gets the existing version.
    Returns `models:/<name>/<version>`, the URI that `mlflow models serve -m` takes.
    """
    client = mlflow.MlflowClient()
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("export_key") == key:
            log.info("export already registered as models:/%s/%s", name, version.version)
            return f"models:/{name}/{version.version}"
    info = mlflow.pyfunc.log_model(name="model", registered_model_name=name, **_export_as_mlflow_model(path, task))
    version = info.registered_model_version
    client.set_model_version_tag(name, str(version), "export_key", key)
    client.set_model_version_tag(name, str(version), "export_path", str(path))
    return f"models:/{name}/{version}"


def save_export_as_mlflow_model(path: Path, task: str, destination: Path) -> None:
    """Write the export at `path` as an MLflow model into the new folder `destination`, the same
    model that `register_export` logs, for `mlflow models serve` to load from disk."""
    mlflow.pyfunc.save_model(path=str(destination), **_export_as_mlflow_model(path, task))


def _export_as_mlflow_model(path: Path, task: str) -> dict[str, Any]:
    """The arguments of `mlflow.pyfunc.log_model` and `save_model` that wrap an export: the
    model-from-code file, the SavedModel as its `saved_model` artifact, the request signature
    (a `text` column; or a `prompt` column and the generation params) and what serving needs."""
    from importlib import metadata

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from pipeline import mlflow_model

    if task == "lm":
        defaults = mlflow_model.GENERATION_DEFAULTS
        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "prompt")]),
            params=ParamSchema([ParamSpec("max_tokens", "long", defaults["max_tokens"]),
                                ParamSpec("temperature", "double", defaults["temperature"]),
                                ParamSpec("top_k", "long", defaults["top_k"]),
                                ParamSpec("seed", "long", defaults["seed"])]))
    else:
        signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]))
    requirements = [f"{package}=={metadata.version(package)}"
                    for package in ("tensorflow", "tensorflow-text", "pandas")]
    return {"python_model": mlflow_model.__file__, "artifacts": {"saved_model": str(path)},
            "signature": signature, "pip_requirements": requirements}


def model_input_column(model_uri: str) -> str:
    """The first input column of the MLflow model at `model_uri` (`text` or `prompt` for this
    pipeline's models); raises `TrackingError` if there is no such model."""
    try:
        info = mlflow.models.get_model_info(model_uri)
    except (mlflow.exceptions.MlflowException, OSError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise TrackingError(f"no MLflow model at {model_uri} ({first_line}); "
                            f"the tracking URI in force is {mlflow.get_tracking_uri()}") from None
    inputs = info.signature.inputs.input_names() if info.signature and info.signature.inputs else []
    return str(inputs[0]) if inputs else "text"


def serve_command(model_uri: str, host: str, port: int) -> tuple[list[str], dict[str, str]]:
    """`mlflow models serve` for `model_uri` in this environment, and the environment to run it in.

    MLflow starts its scoring server as `uvicorn`, by name, and exits 127 where PATH has no
    uvicorn: this interpreter's bin folder leads the child's PATH, so `.venv/bin/pipeline serve`
    works without an activated venv. The child resolves `models:/` URIs with the tracking URI in force.
    """
    import sys

    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
               "--host", host, "--port", str(port)]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
    return command, env


def log_text(text: str, artifact_file: str) -> None:
    if active():
        mlflow.log_text(text, artifact_file)


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


# Columns of `pipeline compare`: what tells runs apart, then what they scored.
COMPARE_PARAMS = ("task", "data.tfds", "tokenizer.model_type", "tokenizer.vocab_size", "model.layers",
                  "model.units", "model.bidirectional", "model.ensemble", "train.epochs", "train.seed")
COMPARE_METRICS = ("test_accuracy", "test_macro_f1", "test_auc", "test_loss", "test_perplexity",
                   "test_bits_per_char")
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_char")


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
