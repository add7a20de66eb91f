"""`mlflow run` on the MLproject file, with the real MLflow CLI and a SQLite store in tmp_path."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow

from pipeline.config import dump_yaml, load_config
from pipeline.registry import NAMES
from tests.conftest import ROOT, tiny_overrides


def test_mlflow_run_main_gives_one_parent_with_nested_stage_runs(sentiment_files, tmp_path):
    config_path = tmp_path / "tiny.yaml"
    dump_yaml(load_config(None, tiny_overrides(sentiment_files, tmp_path)), config_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", "main",
         "--experiment-name", "project", "-P", f"config={config_path}", "-P", "overrides=train.epochs=1 model.units=4",
         "-P", f"workdir={tmp_path / 'work'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("project").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    parent = parents[0]
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main", "the run `mlflow run` made is the parent"
    assert parent.info.run_name.startswith("tiny-bilstm-2x4-") and parent.data.params["train.epochs"] == "1"
    children = sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id)
    assert children == sorted(["prepare", "tokenize", "train", "evaluate", "export"])
    assert "test_accuracy" in parent.data.metrics


def test_every_entry_point_is_a_command_line_the_cli_accepts(tmp_path, monkeypatch):
    import shlex

    from mlflow.projects import _project_spec

    from pipeline import cli

    monkeypatch.chdir(ROOT)  # the entry points' defaults are paths in the project
    texts = tmp_path / "texts.txt"
    texts.write_text("a fine film\n", encoding="utf-8")
    project = _project_spec.load_project(str(ROOT))
    assert set(project._entry_points) == {"main", *NAMES, "inspect", "sweep"}, "one entry point per stage"
    for entry_point in project._entry_points.values():
        given = {"input": str(texts)} if "input" in entry_point.parameters else {}
        words = shlex.split(entry_point.compute_command(given, str(tmp_path)))
        assert words[0] == "pipeline"
        command = cli.main.commands[words[1]]
        with command.make_context(words[1], words[2:]) as context:  # raises on an option the command lacks
            assert context.params.get("override_string") == ""
