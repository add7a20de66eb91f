"""Commands that train nothing load no TensorFlow: each is run in a fresh interpreter, which then
reports whether `tensorflow` or `keras` is in `sys.modules`."""

import json
import subprocess
import sys

import mlflow
import pytest

CHILD = """
import json, sys
from click.testing import CliRunner
from pipeline import tracking
from pipeline.cli import main

tracking.ui_command = lambda port: [sys.executable, "-c", "pass"]  # `ui` starts no server here
result = CliRunner().invoke(main, sys.argv[1:])
print(json.dumps({"exit": result.exit_code, "output": result.stdout + result.stderr,
                  "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


@pytest.mark.parametrize("args", [
    ["--help"], ["run", "--help"], ["serve", "--help"], ["config"],
    ["compare", "--tracking-uri", "sqlite:///{tmp}/mlflow.db"],
    ["ui", "--tracking-uri", "sqlite:///{tmp}/mlflow.db"],
    ["serve", "models:/nothing/1", "--tracking-uri", "sqlite:///{tmp}/mlflow.db", "--port", "1"],
])
def test_commands_that_do_not_train_load_no_tensorflow(args, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").create_experiment("pipeline")
    child = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, timeout=120,
                           cwd=tmp_path)
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["loaded"] == [], (args, report["output"])
    if args[0] == "serve" and len(args) > 2:  # it got as far as looking the model up
        assert report["exit"] == 1 and "models:/nothing/1" in report["output"], report["output"]
    else:
        assert report["exit"] == 0, report["output"]
