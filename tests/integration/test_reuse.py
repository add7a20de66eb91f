"""`pipeline run` end to end: finished stages reused, their MLflow runs linked, --force re-running."""

from __future__ import annotations

import logging

import mlflow
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.registry import NAMES
from pipeline.store.workdir import is_finished, stage_dir
from tests.conftest import tiny_overrides


def _run(caplog, files, tmp_path, *extra):
    """Run the tiny config; return, per stage, whether it "ran" or was "cached"."""
    args = ["run", "--workdir", str(tmp_path / "work"), "--experiment", "cache"]
    for item in tiny_overrides(files, tmp_path):
        args += ["--set", item]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pipeline.runner"):
        result = CliRunner().invoke(main, [*args, *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = [m for m in caplog.messages if m.startswith("== ")]
    return {line.split(":")[0][3:]: ("cached" if ": cached" in line else "ran") for line in lines}


def test_pipeline_run_reuses_finished_stages_and_links_their_runs(caplog, sentiment_files, tmp_path):
    assert _run(caplog, sentiment_files, tmp_path) == dict.fromkeys(NAMES, "ran")
    assert _run(caplog, sentiment_files, tmp_path) == dict.fromkeys(NAMES, "cached")
    runs = mlflow.search_runs(experiment_names=["cache"], output_format="list", order_by=["attributes.start_time"])
    first = {r.info.run_name: r for r in runs[::-1] if "cache_hit" not in r.data.tags}
    hits = [r for r in runs if r.data.tags.get("cache_hit") == "true"]
    assert sorted(r.info.run_name for r in hits) == sorted(NAMES)
    for hit in hits:
        assert hit.data.tags["cache_source_run_id"] == first[hit.info.run_name].info.run_id
        assert hit.data.tags["mlflow.parentRunId"] != first[hit.info.run_name].data.tags["mlflow.parentRunId"]
    second_parent = next(r for r in runs if r.info.run_id == hits[0].data.tags["mlflow.parentRunId"])
    assert "test_accuracy" in second_parent.data.metrics, "a cached run still shows the test metrics"

    # Only the number of epochs changes: the data and the tokenizer are reused.
    assert _run(caplog, sentiment_files, tmp_path, "--set", "train.epochs=1") == {
        "prepare": "cached", "tokenize": "cached", "train": "ran", "evaluate": "ran", "export": "ran"}
    assert _run(caplog, sentiment_files, tmp_path, "--force", "train") == {
        "prepare": "cached", "tokenize": "cached", "train": "ran", "evaluate": "ran", "export": "ran"}
    assert _run(caplog, sentiment_files, tmp_path, "--force") == dict.fromkeys(NAMES, "ran")
    config = load_config(None, tiny_overrides(sentiment_files, tmp_path))
    assert all(is_finished(stage_dir(config, tmp_path / "work", s)) for s in ("prepare", "tokenize", "train"))
