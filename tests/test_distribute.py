"""Data-parallel training: strategy choice, bad input, and mirrored training against one device.

Two logical CPUs can only be made before TensorFlow runs its first op, which this test process
did long ago, so mirrored runs go through `pipeline run` in a process of their own.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from pipeline import distribute, runner
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.workdir import stage_dir

from .conftest import lm_overrides, tiny_overrides, write_corpus

PIPELINE = Path(sys.executable).with_name("pipeline")
TWO_CPUS = ["train.distribute=mirrored", "train.devices=CPU:0,CPU:1"]
# One optimizer step, nothing random in it: the mirrored step must equal the single-device one.
ONE_STEP = ["train.epochs=1", "model.dropout=0.0", "train.batch_size=64"]


def test_cluster_from_tf_config():
    spec = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    assert distribute.cluster_from_env({"TF_CONFIG": json.dumps(spec)}) == distribute.Cluster(2, 1)
    assert distribute.cluster_from_env({}) == distribute.Cluster(1, 0)


@pytest.mark.parametrize(("raw", "message"), [
    ("{not json", r"^TF_CONFIG is not a worker cluster spec \('\{not json'\); set TF_CONFIG to "),
    ('{"cluster": {"worker": ["a:1"]}}', r"^TF_CONFIG is not a worker cluster spec"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', r"is not one of its 1 workers"),
])
def test_malformed_tf_config_is_one_clear_line(raw, message):
    with pytest.raises(ConfigError, match=message):
        distribute.cluster_from_env({"TF_CONFIG": raw})


def test_multi_worker_without_tf_config_says_how_to_start_workers(monkeypatch, tiny_config):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = load_config(None, [*_tiny(tiny_config), "train.distribute=multi_worker"])
    with pytest.raises(ConfigError, match=r"needs the TF_CONFIG environment variable; start the workers with "
                                          r"`pipeline launch --workers N -- run"):
        distribute.strategy_for(config)


def test_a_device_that_does_not_exist_is_named(tiny_config):
    config = load_config(None, [*_tiny(tiny_config), "train.distribute=mirrored", "train.devices=CPU:0,GPU:7"])
    with pytest.raises(ConfigError, match=r"^train.devices names GPU:7, which this machine does not have "
                                          r"\(devices: CPU:0\)"):
        distribute.strategy_for(config)


def test_devices_without_mirrored_are_an_error():
    with pytest.raises(ConfigError, match=r"train.devices has no effect because train.distribute is auto"):
        load_config(None, ["train.devices=GPU:0,GPU:1"])


def test_one_device_by_default(tiny_config):
    strategy = distribute.strategy_for(tiny_config)
    assert strategy.num_replicas_in_sync == 1
    assert distribute.describe(tiny_config, strategy) == {
        "train.distribute": "auto", "replicas": "1", "workers": "1", "strategy": "_DefaultDistributionStrategy"}


def test_a_batch_that_does_not_divide_among_replicas_fails_before_any_data_work(sentiment_files, tmp_path):
    overrides = [*tiny_overrides(sentiment_files, tmp_path), *TWO_CPUS, "train.batch_size=7"]
    result = _pipeline("run", overrides, tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == ("Error: train.batch_size=7 does not divide among 2 replicas; "
                                                      "set it to a multiple of 2 (it is the global batch)")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("task", ["sentiment", "lm"])
def test_mirrored_on_two_cpus_takes_the_single_device_step(task, sentiment_files, tmp_path):
    if task == "lm":
        # The corpus makes 2,652 training tokens: 176 windows of 15, one batch split 88/88.
        overrides = [*lm_overrides(write_corpus(tmp_path / "corpus.txt"), tmp_path), "train.sequence_length=15",
                     "train.batch_size=176", "train.epochs=1", "model.dropout=0.0", "train.sample_tokens=1"]
    else:
        overrides = [*tiny_overrides(sentiment_files, tmp_path), *ONE_STEP]
    single = load_config(None, overrides)
    results = runner.run_all(single, tmp_path / "single")
    if task == "lm":
        assert results["tokenize"].stats["train"]["tokens"] == 2652, "one even batch: adjust the sizes above"
    result = _pipeline("run", [*overrides, *TWO_CPUS], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    mirrored = load_config(None, [*overrides, *TWO_CPUS])
    expected = _weights(stage_dir(single, tmp_path / "single", "train"))
    got = _weights(stage_dir(mirrored, tmp_path / "mirrored", "train"))
    assert [w.shape for w in got] == [w.shape for w in expected]
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=2e-5)
    summary = json.loads((stage_dir(mirrored, tmp_path / "mirrored", "train") / "summary.json").read_text())
    assert summary["lstm_kernel"] == "generic"  # no GPU here; every LSTM still cuDNN-eligible (test_models)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mirrored.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    (trained,) = [r for r in runs if r.info.run_name == "train"]
    expected = {"train.distribute": "mirrored", "replicas": "2", "workers": "1", "strategy": "MirroredStrategy"}
    for run in (parent, trained):  # the train run's tags come from the strategy the model was built under
        assert {key: run.data.tags[key] for key in expected} == expected
    assert parent.data.params["train.devices"] == "CPU:0,CPU:1"


def _tiny(config):
    return [f"data.train={config.data.train}", f"data.validation={config.data.validation}", "data.tfds=null",
            "data.test=null", "data.format=label_text"]


def _pipeline(command: str, overrides: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mirrored.db'}"}
    args = [str(PIPELINE), command, "--workdir", str(tmp_path / "mirrored"),
            *[arg for item in overrides for arg in ("--set", item)]]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _weights(train_dir: Path) -> list[np.ndarray]:
    return [np.asarray(w) for w in keras.saving.load_model(train_dir / "model.keras").get_weights()]


def test_multi_worker_stops_with_one_line_before_any_work(monkeypatch, tiny_config):
    spec = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    config = load_config(None, [*_tiny(tiny_config), "train.distribute=multi_worker"])
    with pytest.raises(ConfigError, match=r"^train.distribute=multi_worker is not available yet: .*"
                                          r"use train.distribute=mirrored on one host$"):
        distribute.strategy_for(config)
