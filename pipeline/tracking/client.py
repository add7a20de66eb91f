"""Where runs go: the tracking URI, the experiment, and the lock that makes it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import mlflow

from pipeline.errors import TrackingError

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
