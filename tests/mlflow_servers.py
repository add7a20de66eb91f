"""Real MLflow servers for tests: `mlflow server` on a free port of 127.0.0.1, stopped with its
whole process group.

`start_mlflow_server` and `stop_process_group` (the one `pipeline serve` stops its server with) are
plain functions, for a test that needs a server of its own or another process beside it
(`mlflow models serve` and `pipeline serve` answer `/health` too, so `wait_for_health` fits them).
`mlflow_server` is the fixture most tests want: one server per test module, imported into
conftest.py so every module can ask for it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline.tools import launch
from pipeline.tools.serving import stop_process_group

HOST = "127.0.0.1"


class MLflowServer(NamedTuple):
    url: str
    process: subprocess.Popen
    root: Path  # mlflow.db, artifacts/ and server.log


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    return launch.free_ports(1)[0]


def child_env(tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for an MLflow child process, pointed at `tracking_uri`.

    The experiment and run variables are dropped: a child must not log into whatever run or
    experiment this process has open. Telemetry is off, as the network is closed.
    """
    env = {key: value for key, value in os.environ.items()
           if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update(extra)
    return env


def start_mlflow_server(root: Path, timeout: float = 60.0) -> MLflowServer:
    """Start `mlflow server` with a SQLite store and artifact root under `root`; return once it answers.

    Artifacts are proxied (`mlflow-artifacts:/` URIs), so clients upload and download them over
    HTTP, as a client on another machine would. Raises `RuntimeError` with the server's log if it
    exits or stays silent for `timeout` seconds; the server is stopped then.
    """
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--host", HOST, "--port", str(port),
               "--workers", "1"]
    # Job execution (GenAI judges and scorers) would add eight huey processes and a folder in
    # /dev/shm that is never removed; tracking, artifacts and the registry do not use it.
    env = child_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    url, process = _launch(command, env, root, root / "server.log", port, timeout)
    return MLflowServer(url, process, root)


@contextlib.contextmanager
def serve_model(model_uri: str, tracking_uri: str, root: Path, timeout: float = 120.0) -> Iterator[str]:
    """`mlflow models serve -m model_uri --env-manager local` on a free loopback port; yields its URL.

    The command and PATH are the ones `pipeline serve` uses (`tracking.serve_command`: this
    interpreter's bin folder leads PATH, as the scoring server runs `uvicorn` by name).
    """
    from pipeline import tracking

    port = free_port()
    command, served_env = tracking.serve_command(model_uri, HOST, port)
    env = child_env(tracking_uri, PATH=served_env["PATH"])
    url, process = _launch([*command, "--workers", "1"], env, root, root / f"serve-{port}.log", port, timeout)
    try:
        yield url
    finally:
        stop_process_group(process)


def _launch(command: list[str], env: dict[str, str], root: Path, log_path: Path, port: int,
            timeout: float) -> tuple[str, subprocess.Popen]:
    """Start a server process logging to `log_path` and return once it answers on `port`.

    It gets a session of its own, so that stopping reaches uvicorn's workers as well as the
    mlflow CLI; if it never answers, it is stopped and `RuntimeError` carries its log.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{HOST}:{port}"
    try:
        wait_for_health(url, process, log_path, timeout)
    except BaseException:
        stop_process_group(process)
        raise
    return url, process


def wait_for_health(url: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    """Poll `url`/health until it answers 200; raise `RuntimeError` with the log's end if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with code {process.returncode} before answering "
                               f"{url}/health:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}/health did not answer within {timeout:.0f} s:\n{_tail(log_path)}")
        time.sleep(0.25)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(encoding="utf-8", errors="replace")[-chars:] if path.is_file() else "(no log)"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[MLflowServer]:
    """A real `mlflow server` for the requesting test module, stopped when the module's tests end."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        stop_process_group(server.process)
