"""Commands that train nothing load no TensorFlow: they run one after the other in a fresh
interpreter, which reports after each whether `tensorflow` or `keras` is in `sys.modules`."""

import json
import subprocess
import sys

import mlflow

CHILD = """
import json, sys
from click.testing import CliRunner
from pipeline import tracking
from pipeline.cli import main

tracking.ui_command = lambda port: [sys.executable, "-c", "pass"]  # `ui` starts no server here
for args in json.loads(sys.argv[1]):
    result = CliRunner().invoke(main, args)
    print(json.dumps({"args": args, "exit": result.exit_code, "output": result.stdout + result.stderr,
                      "loaded": sorted(m for m in ("tensorflow", "keras") if m in sys.modules)}))
"""


def test_commands_that_do_not_train_load_no_tensorflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.MlflowClient(uri).create_experiment("pipeline")
    commands = [["--help"], ["run", "--help"], ["serve", "--help"], ["config"], ["compare", "--tracking-uri", uri],
                ["ui", "--tracking-uri", uri], ["serve", "models:/nothing/1", "--tracking-uri", uri, "--port", "1"]]
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(commands)], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path)
    reports = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    assert [r["args"] for r in reports] == commands, child.stderr[-2000:]
    for report in reports:
        assert report["loaded"] == [], report
        if report["args"][:2] == ["serve", "models:/nothing/1"]:  # it got as far as looking the model up
            assert report["exit"] == 1 and "models:/nothing/1" in report["output"], report
        else:
            assert report["exit"] == 0, report
