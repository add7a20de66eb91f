"""Serve an export, or a registered model, over HTTP with MLflow's scoring server.

Reads an export folder written by `pipeline export` (a version folder, or a run folder whose
newest version is used) or a `models:/NAME/VERSION` URI.
Writes nothing beside the export: an export is saved as the MLflow model that
`export.register_as` registers, in a temporary folder removed when the server stops.

The server is `mlflow models serve --env-manager local` run by this environment's interpreter,
so it answers the `/invocations` contract of a registered model (a `text` column in, `label`
and `probabilities` out; or a `prompt` column and generation params in, `text` out). It runs in
a process group of its own: Ctrl-C or SIGTERM stops the MLflow CLI, uvicorn and its workers
together, and none outlives the command.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.errors import Interrupted, ServingError
from pipeline.tools import predict

log = logging.getLogger(__name__)
HOST = "127.0.0.1"
PORT = 5001
MODELS_URI = "models:/"
EXAMPLE_VALUES = {"text": "a gripping, funny film", "prompt": "ROMEO:"}


def run(target: str, host: str = HOST, port: int = PORT, tracking_uri: str | None = None) -> None:
    """Serve `target` on `host:port` until Ctrl-C or SIGTERM.

    Args:
        target: an export folder, or a `models:/NAME/VERSION` URI.
        host: the address to listen on.
        port: the port to listen on.
        tracking_uri: where `models:/` URIs are looked up; None for MLflow's default.

    Raises:
        ExportError: `target` is not an export.
        TrackingError: `target` is a `models:/` URI that the tracking store does not hold.
        ServingError: the port is taken, or the server stopped by itself.
    """
    export = None if target.startswith(MODELS_URI) else predict.resolve_export(target)
    check_port_free(host, port)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with tempfile.TemporaryDirectory(prefix="pipeline-serve-") as scratch:
            _serve(target, export, Path(scratch), host, port, tracking_uri)
    except (KeyboardInterrupt, Interrupted):
        pass  # the server's process group is stopped on the way out; stopping is how serving ends
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(target: str, export: tuple[Path, dict] | None, scratch: Path, host: str, port: int,
           tracking_uri: str | None) -> None:
    """Save the export as an MLflow model under `scratch` (a `models:/` URI is served as it is),
    start the scoring server and wait for it; raise `ServingError` if it stops by itself."""
    from pipeline import tracking

    model_uri = target
    if export is None:
        tracking.use(tracking_uri)
    else:
        model_uri = str(scratch / "model")
        tracking.save_export_as_mlflow_model(export[0], export[1]["task"], Path(model_uri))
    column = tracking.model_input_column(model_uri)
    command, env = tracking.serve_command(model_uri, host, port)
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"  # an IPv6 address in brackets
    log.info("Serving %s on %s with MLflow's scoring server (Ctrl-C stops it). Once it is up:\n  %s",
             export[0] if export else target, url, curl_example(url, column))
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        code = process.wait()
    finally:
        stop_process_group(process)
    if code:
        raise ServingError(f"the scoring server exited with code {code}; its messages are above")


def _interrupt(signum, frame):
    """SIGTERM unwinds the stack as Ctrl-C does, so the server's process group is stopped on the way."""
    raise Interrupted(signum)


def check_port_free(host: str, port: int) -> None:
    """Raise `ServingError` unless a server could listen on `host:port` now."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # create_server sets SO_REUSEADDR as uvicorn does, so a port in TIME_WAIT counts as free.
        with socket.create_server((host, port), family=family):
            pass
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise ServingError(f"port {port} of {host} is in use; pass --port with a free one") from None
        raise ServingError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def curl_example(url: str, column: str) -> str:
    """A curl command line that sends one raw text to the `/invocations` of the server at `url`."""
    body = {"dataframe_split": {"columns": [column], "data": [[EXAMPLE_VALUES.get(column, "some text")]]}}
    if column == "prompt":
        body["params"] = {"max_tokens": 60}
    return f"curl -s {url}/invocations -H 'Content-Type: application/json' -d '{json.dumps(body)}'"


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the group that `process` leads (started with `start_new_session=True`), then SIGKILL
    whatever is still there after `timeout` seconds."""
    # The group outlives a reaped leader while its workers run, and its id cannot be reused
    # before the last member is gone, so the group is signalled even then.
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while _group_alive(process.pid) and time.monotonic() < deadline:
            process.poll()  # reap the leader, or it lingers as a zombie and the group looks alive
            time.sleep(0.1)
        if not _group_alive(process.pid):
            break
    process.wait(timeout=timeout)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
