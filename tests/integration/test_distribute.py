"""Data-parallel training: strategy choice, bad input, mirrored training against one device, and
multi-worker training through `pipeline launch` (two real worker processes on loopback ports).

Two logical CPUs, like a multi-worker strategy, can only be made before TensorFlow runs its
first op, which this test process did long ago, so those runs go through processes of their own.
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from pipeline import runner
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.store.workdir import stage_dir
from pipeline.tools import launch
from pipeline.training import distribute
from pipeline.training.distribute import step
from tests.conftest import lm_overrides, tiny_overrides, write_corpus

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



def test_the_multi_worker_loop_scores_an_ensemble_by_its_members_mean():
    import tensorflow as tf

    # Two rows, two members: row 0's members disagree (mean says class 1), row 1's agree on class 0.
    members = tf.constant([[[0.6, 0.4], [0.1, 0.9]], [[0.8, 0.2], [0.7, 0.3]]])
    targets = tf.constant([1, 0])
    per_row = tf.constant([0.5, 0.25])
    loss_sum, correct, rows = step._Steps._sums(per_row, members, targets).numpy()
    assert (loss_sum, correct, rows) == (0.75, 2.0, 2.0)


def test_auto_is_multi_worker_under_a_cluster_tf_config(monkeypatch, tiny_config):
    spec = {"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(spec))
    assert distribute.mode(tiny_config) == "multi_worker"
    assert distribute.role(tiny_config) == distribute.Cluster(2, 1)
    none = load_config(None, [*_tiny(tiny_config), "train.distribute=none"])
    assert distribute.role(none) == distribute.Cluster(1, 0)  # asked for one device: TF_CONFIG is not read
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["localhost:1"]}, "task": {"index": 0}}))
    assert distribute.mode(tiny_config) == "auto"


def test_launch_refuses_a_command_that_does_not_train(tmp_path):
    result = subprocess.run([str(PIPELINE), "launch", "--workers", "2", "--", "predict", "models/x"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "launch runs a training command (run or train), not 'predict'" in result.stderr


def test_a_worker_alone_gives_up_after_the_timeout_with_one_line(sentiment_files, tmp_path):
    ports = launch.free_ports(2)
    env = launch.worker_env([f"127.0.0.1:{port}" for port in ports], 0)
    overrides = [*tiny_overrides(sentiment_files, tmp_path), "train.worker_timeout=3"]
    args = [str(PIPELINE), "run", "--workdir", str(tmp_path / "work"), *_as_options(overrides)]
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL  # TensorFlow holds the interpreter: only SIGKILL ends the wait
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: worker 0 could not reach the other workers (127.0.0.1:{ports[0]}, 127.0.0.1:{ports[1]}) within "
        "train.worker_timeout=3s; start the same command on every worker (TF_CONFIG task index 0 to N-1), or "
        "raise train.worker_timeout")
    assert not (tmp_path / "work").exists()


# Long enough to kill a worker after a few epochs; no dropout, so one process can replay it. Not
# longer: the two processes sum a step's gradients in another order than one process does, and the
# round-off (1e-7 after 3 epochs here) grows to 2.5e-4 by epoch 6, 5e-3 by epoch 12, as training descends.
CLUSTER = ["train.epochs=6", "train.patience=6", "model.dropout=0.0", "train.deterministic=true",
           "train.worker_timeout=60"]


def test_two_workers_train_the_single_process_model_and_resume_after_a_kill(sentiment_files, tmp_path):
    overrides = [*tiny_overrides(sentiment_files, tmp_path), *CLUSTER]
    tracking_uri = f"sqlite:///{tmp_path / 'cluster.db'}"
    command = [str(PIPELINE), "launch", "--workers", "2", "--", "run", "--workdir", str(tmp_path / "cluster"),
               "--tracking-uri", tracking_uri, *_as_options(overrides)]
    config = load_config(None, [*overrides, "train.distribute=multi_worker"])
    partial = stage_dir(config, tmp_path / "cluster", "train").with_name(
        stage_dir(config, tmp_path / "cluster", "train").name + ".partial")

    # Kill worker 1 once the chief has checkpointed epoch 2: the chief must stop, and say why.
    log = tmp_path / "launch.log"
    with log.open("w") as out, subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT) as first:
        try:
            _wait_for(lambda: re.search(r"worker 1 of 2: pid (\d+)", log.read_text()), first, timeout=60)
            worker = int(re.search(r"worker 1 of 2: pid (\d+)", log.read_text()).group(1))
            _wait_for(lambda: any(p.name >= "epoch-002" for p in partial.glob("epoch-*")), first, timeout=300)
            os.kill(worker, signal.SIGKILL)
            first.wait(timeout=120)
        finally:
            first.kill()
    output = log.read_text()
    assert first.returncode == 1
    assert re.search(r"^Error: worker 1 (stopped sending heartbeats|closed its connection) \(its process is gone\) "
                     r"in epoch \d+; this worker stops too\. Run the same command on every worker again", output, re.M)
    assert "worker 1 was killed by SIGKILL" in output
    assert not stage_dir(config, tmp_path / "cluster", "train").exists()

    second = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "resuming training after epoch" in second.stderr
    assert " exited " not in second.stderr  # the launcher names every worker that failed

    # The same model as one process training on the same data and global batch.
    single = runner.run_all(load_config(None, [*overrides, "train.distribute=none",
                                               f"export.dir={tmp_path / 'single-models'}"]), tmp_path / "single")
    expected = _weights(single["train"].model_path.parent)
    got = _weights(stage_dir(config, tmp_path / "cluster", "train"))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED"
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id) == \
        ["evaluate", "export", "prepare", "tokenize", "train"]
    expected_tags = {"train.distribute": "multi_worker", "replicas": "2", "workers": "2",
                     "strategy": "MultiWorkerMirroredStrategy"}
    assert {key: parent.data.tags[key] for key in expected_tags} == expected_tags
    (trained,) = [r for r in runs if r.info.run_name == "train"]
    logged = sorted((m.step, m.value) for m in client.get_metric_history(trained.info.run_id, "val_loss"))
    assert [step for step, _ in logged] == list(range(6))  # every epoch once: none lost to the kill, none twice
    history = single["train"].model_path.parent / "history.csv"
    single_losses = [float(row["val_loss"]) for row in csv.DictReader(history.open())]
    np.testing.assert_allclose([value for _, value in logged], single_losses, atol=1e-3)
    assert len(list((tmp_path / "models").glob("*/*/saved_model.pb"))) == 1


def _as_options(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _wait_for(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the launch ended before the condition held"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_workers_that_tokenized_differently_stop_before_training(sentiment_files, tmp_path):
    # Started by hand, as on two hosts: each with its TF_CONFIG, here with different vocabularies.
    addresses = [f"127.0.0.1:{port}" for port in launch.free_ports(2)]
    base = [*tiny_overrides(sentiment_files, tmp_path), "train.worker_timeout=60"]
    workers = []
    try:
        for index, vocabulary in enumerate((60, 30)):
            args = [str(PIPELINE), "run", "--workdir", str(tmp_path / f"work{index}"),
                    *_as_options([*base, f"tokenizer.vocab_size={vocabulary}"])]
            workers.append(subprocess.Popen(args, cwd=tmp_path, env=launch.worker_env(addresses, index),
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        results = [worker.communicate(timeout=300) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 1
        assert stderr.strip().splitlines()[-1] == (
            "Error: 1 worker(s) tokenized the training split differently from worker 0; give every worker the "
            "same data and config (and the same package versions)")
    assert not list((tmp_path / "work0").glob("train/*"))
