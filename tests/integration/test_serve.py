"""`pipeline serve`: a tiny sentiment export served over HTTP, started as a user starts it.

The server is the venv's `pipeline` script in a process of its own, with a PATH that holds
neither the venv nor uvicorn (as when `.venv/bin/pipeline` is called without activating the
venv), on a free port of 127.0.0.1. It is started once for the module and stopped with its whole
process group; stopping it must also stop the scoring server it started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.integration.test_export import exported  # noqa: F401  fixture: a tiny sentiment export, trained once for this module
from tests.mlflow_servers import HOST, _launch, child_env, free_port, stop_process_group

PIPELINE = Path(sys.executable).with_name("pipeline")
SYSTEM_PATH = "/usr/bin:/bin"
TEXTS = ["a great and moving film", "", "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001f600", "a bad , dull film"]


class Served(NamedTuple):
    url: str
    export: Path  # the version folder that is served


def post(url: str, body: bytes) -> tuple[int, dict]:
    """POST `body` as JSON to `url`/invocations; the status and the decoded answer, errors included."""
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def texts_body(texts: list) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode("utf-8")


@pytest.fixture(scope="module")
def served(exported, tmp_path_factory) -> Iterator[Served]:  # noqa: F811  pytest passes the imported fixture
    """`pipeline serve` on the run folder of the tiny export; its temporary files go under its own TMPDIR,
    which must be empty again once it has stopped."""
    _, _, result = exported
    root = tmp_path_factory.mktemp("serve")
    scratch = root / "tmp"
    scratch.mkdir()
    before = sorted(p.relative_to(result.path) for p in result.path.rglob("*"))
    port = free_port()
    command = [str(PIPELINE), "serve", str(result.path.parent), "--port", str(port)]
    url, process = _launch(command, child_env(PATH=SYSTEM_PATH, TMPDIR=str(scratch)), root, root / "serve.log",
                           port, timeout=180)
    try:
        yield Served(url, result.path)
    finally:
        stop_process_group(process)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=5).close()
    assert list(scratch.iterdir()) == [], "the MLflow model written for serving is removed"
    assert sorted(p.relative_to(result.path) for p in result.path.rglob("*")) == before, "the export is untouched"


def test_raw_texts_get_labels_and_probabilities(served):
    from pipeline.tools import predict

    status, answer = post(served.url, texts_body(TEXTS))
    assert status == 200, answer
    expected = predict.classify(served.export, TEXTS)
    assert len(answer["predictions"]) == len(TEXTS)
    for got, local in zip(answer["predictions"], expected, strict=True):
        assert got["label"] == local["label"]
        assert got["probabilities"] == pytest.approx(local["probabilities"], abs=1e-6)


def test_an_empty_batch_gets_an_empty_answer(served):
    assert post(served.url, texts_body([])) == (200, {"predictions": []})
    assert post(served.url, json.dumps({"inputs": []}).encode()) == (200, {"predictions": []})


@pytest.mark.parametrize(("body", "message"), [
    (b'{"dataframe_split": ', "valid JSON"),
    (json.dumps({"text": ["a great film"]}).encode(), "exactly one of the input fields"),
    (json.dumps({"dataframe_split": {"columns": ["sentence"], "data": [["a great film"]]}}).encode(),
     "missing inputs ['text']"),
    (texts_body(["a great film", 5]), "column 'text' must hold strings; row 1 holds int 5"),
    (texts_body([None]), "column 'text' must hold strings; row 0 holds NoneType None"),
    (texts_body([["a great film"]]), "row 0 holds list"),
], ids=["invalid-json", "no-input-field", "no-text-column", "a-number", "a-null", "a-list"])
def test_a_malformed_request_gets_a_400_that_says_why_and_the_server_carries_on(served, body, message):
    status, answer = post(served.url, body)
    assert status == 400 and message in answer["message"], answer
    status, answer = post(served.url, texts_body(["still there?"]))
    assert status == 200 and len(answer["predictions"]) == 1


def serve_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(PIPELINE), "serve", *args], cwd=cwd, env=child_env(PATH=SYSTEM_PATH),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def test_a_folder_that_is_not_an_export_stops_with_one_line(tmp_path):
    done = serve_command(str(tmp_path), "--port", str(free_port()), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"Error: {tmp_path} is not a SavedModel export "
                                        "(no saved_model.pb, no version folders)"]


def test_a_port_in_use_stops_with_one_line(exported, tmp_path):  # noqa: F811
    with socket.create_server((HOST, 0)) as taken:
        port = taken.getsockname()[1]
        done = serve_command(str(exported[2].path), "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [f"Error: port {port} of {HOST} is in use; pass --port with a free one"]
