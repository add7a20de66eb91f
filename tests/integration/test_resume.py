"""Interrupted training: kill -9 and resume, Ctrl-C and SIGTERM, NaN losses, determinism.

The process tests run the real `pipeline` command in a subprocess and stop it once the first
epoch's checkpoint is on disk; an epoch of this config takes about a second, which leaves the
test ample time to act before training ends.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest

from pipeline import models, runner, tracking
from pipeline.config import load_config
from pipeline.errors import TrainingError
from pipeline.registry import NAMES as STAGES
from pipeline.stages import prepare, tokenization, train
from pipeline.store.workdir import stage_dir
from pipeline.training import batches, callbacks
from tests.conftest import lm_overrides, tiny_overrides, write_corpus, write_label_text

PIPELINE = str(Path(sys.executable).parent / "pipeline")


@pytest.fixture
def slow_epochs(tmp_path) -> list[str]:
    """Overrides for a 3-epoch deterministic run whose epochs last about a second each."""
    files = {"train": write_label_text(tmp_path / "train.txt", 1600, seed=1),
             "validation": write_label_text(tmp_path / "dev.txt", 40, seed=2)}
    return [*tiny_overrides(files, tmp_path), "train.epochs=3", "train.patience=5", "train.deterministic=true"]


def _command(overrides: list[str], workdir: Path, uri: str) -> list[str]:
    args = [PIPELINE, "run", "--workdir", str(workdir), "--tracking-uri", uri, "--experiment", "resume"]
    for item in overrides:
        args += ["--set", item]
    return args


def _start_and_stop_after_epoch_one(command: list[str], partial: Path, signum: int) -> subprocess.CompletedProcess:
    """Start `command`, send `signum` once the epoch-1 checkpoint exists, and wait for the exit."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (partial / "epoch-001").is_dir():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.01)
    process.send_signal(signum)
    out, err = process.communicate(timeout=120)
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _runs(uri: str) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(tracking_uri=uri)
    return client.search_runs([client.get_experiment_by_name("resume").experiment_id])


def _weights(config, workdir: Path) -> list[np.ndarray]:
    return keras.saving.load_model(stage_dir(config, workdir, "train") / "model.keras").get_weights()


# The second case adds the state a resume must restore beyond the checkpoint: the moving average of
# the weights, and the segmentations subword sampling drew for every epoch when the training began.
SAMPLING = ["tokenizer.model_type=bpe", "tokenizer.vocab_size=80", "train.subword_sampling=0.3"]


@pytest.mark.parametrize("extra", [[], ["train.ema_momentum=0.9", *SAMPLING]],
                         ids=["plain", "weight-average-and-subword-sampling"])
def test_kill_9_then_same_command_resumes_into_the_same_run_with_identical_weights(slow_epochs, tmp_path, extra):
    slow_epochs = [*slow_epochs, *extra]
    config = load_config(None, slow_epochs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = _command(slow_epochs, tmp_path / "work", uri)
    # An earlier run with other epochs: the killed run then reuses its prepare and tokenize.
    earlier = subprocess.run([*command, "--set", "train.epochs=1"], capture_output=True, text=True, timeout=600)
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    partial = train.partial_dir(config, tmp_path / "work")
    killed = _start_and_stop_after_epoch_one(command, partial, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    # Sampling can't be seeded alike in two processes: the uninterrupted run below gets the killed
    # run's segmentations, as if it had drawn them itself.
    segmentations = partial / batches.SEGMENTATIONS
    assert segmentations.is_file() == bool(extra)
    if extra:
        straight_partial = train.partial_dir(config, tmp_path / "straight")
        straight_partial.mkdir(parents=True)
        shutil.copy(segmentations, straight_partial / batches.SEGMENTATIONS)
    assert [r.info.status for r in _runs(uri) if r.info.run_name == "train"
            and r.data.params["train.epochs"] == "3"] == ["RUNNING"]

    # The same config, never interrupted, run alongside the resume in folders and a tracking store of its own.
    other_uri = f"sqlite:///{tmp_path / 'other.db'}"
    alone = _command([*slow_epochs, f"export.dir={tmp_path / 'straight-models'}"], tmp_path / "straight", other_uri)
    with open(tmp_path / "straight.log", "w") as log:
        straight = subprocess.Popen(alone, stdout=log, stderr=log)
    try:
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
        straight.wait(timeout=600)
    finally:
        straight.kill()
        straight.wait()
    assert straight.returncode == 0, (tmp_path / "straight.log").read_text()[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming training after epoch" in resumed.stderr

    runs = [r for r in _runs(uri) if r.data.params.get("train.epochs") == "3"]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(STAGES), "one run per stage, none repeated"
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.run_name for r in children if r.data.tags.get("cache_hit")} == {"prepare", "tokenize"}
    trains = [r for r in children if r.info.run_name == "train"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    for metric in ("loss", "val_loss", "val_accuracy"):
        steps = sorted(m.step for m in client.get_metric_history(trains[0].info.run_id, metric))
        assert steps == [0, 1, 2], metric
    assert not partial.exists()

    for a, b in zip(_weights(config, tmp_path / "work"), _weights(config, tmp_path / "straight"), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _val_losses(uri) == _val_losses(other_uri)


def _val_losses(uri: str) -> list[tuple[int, float]]:
    run = next(r for r in _runs(uri) if r.info.run_name == "train" and r.data.params["train.epochs"] == "3")
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "val_loss")
    return sorted((m.step, m.value) for m in history)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_marks_the_runs_killed_and_exits_128_plus_signal(slow_epochs, tmp_path, signum, code):
    config = load_config(None, slow_epochs)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    stopped = _start_and_stop_after_epoch_one(_command(slow_epochs, tmp_path / "work", uri),
                                              train.partial_dir(config, tmp_path / "work"), signum)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr
    statuses = {r.info.run_name.split("-")[0]: r.info.status for r in _runs(uri)}
    assert statuses["train"] == "KILLED" and statuses["tiny"] == "KILLED"
    assert statuses["prepare"] == statuses["tokenize"] == "FINISHED"
    assert train.resumable_run(config, tmp_path / "work").epoch >= 1, "the finished epochs are kept"


def test_nan_loss_fails_the_run_with_a_clear_error(tiny_config, tmp_path, monkeypatch):
    build = models.build_model

    def diverging(*args):
        model = build(*args)
        return keras.Model(model.inputs, keras.layers.Lambda(lambda p: p * float("nan"))(model.outputs[0]))

    monkeypatch.setattr(models, "build_model", diverging)
    for stage in (prepare, tokenization):
        stage.run(tiny_config, tmp_path / "work")
    tracking.configure(None, "nan")
    with pytest.raises(TrainingError, match=r"training loss became nan in epoch 0.*Lower train.learning_rate"):
        runner.run_stage("train", tiny_config, tmp_path / "work")
    run = mlflow.search_runs(output_format="list", filter_string="attributes.run_name = 'train'")[0]
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("TrainingError: the training loss became nan")
    assert not stage_dir(tiny_config, tmp_path / "work", "train").exists()


def test_two_deterministic_trainings_give_identical_weights_and_metrics(sentiment_files, tmp_path):
    overrides = [*tiny_overrides(sentiment_files, tmp_path), "train.deterministic=true", "model.dropout=0.3"]
    config = load_config(None, overrides)
    results = []
    for name in ("a", "b"):
        for stage in (prepare, tokenization, train):
            result = stage.run(config, tmp_path / name)
        results.append(result)
    assert results[0].best_metrics == results[1].best_metrics
    for a, b in zip(_weights(config, tmp_path / "a"), _weights(config, tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_run_left_running_by_a_dead_process_is_marked_killed():
    tracking.configure(None, "stale")
    tags = {"config_fingerprint": "abc123", "pipeline.host": socket.gethostname(), "pipeline.pid": "999999999",
            "pipeline.workdir": "/work/a"}
    runs = {}
    for name, changed in [("stale", {}), ("other host", {"pipeline.host": "elsewhere"}),
                          ("other workdir", {"pipeline.workdir": "/work/b"})]:
        with mlflow.start_run(run_name=name, tags={**tags, **changed}) as run:
            pass
        mlflow.MlflowClient().update_run(run.info.run_id, status="RUNNING")
        runs[name] = run.info.run_id
    assert tracking.settle_stale_runs("abc123", "/work/a", keep=set()) == [runs["stale"]]
    statuses = {name: mlflow.get_run(run_id).info.status for name, run_id in runs.items()}
    assert statuses == {"stale": "KILLED", "other host": "RUNNING", "other workdir": "RUNNING"}



def test_a_changed_text_file_says_the_interrupted_training_cannot_be_resumed(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus.txt", lines=200)
    config = load_config(None, [*lm_overrides(corpus, tmp_path), "train.stateful=true", "train.batch_size=4"])
    work = tmp_path / "work"

    class Killed(Exception):
        pass

    class KillAfterOneEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Killed

    for stage in (prepare, tokenization):
        stage.run(config, work)
    token = callbacks.extra_callbacks.set((KillAfterOneEpoch,))
    try:
        with pytest.raises(Killed):
            train.run(config, work)
    finally:
        callbacks.extra_callbacks.reset(token)
    interrupted = train.partial_dir(config, work)
    assert (interrupted / "epoch-001").is_dir()

    original = corpus.read_text(encoding="utf-8")
    corpus.write_text(original + "\nROMEO:\nthe text changed between the start and the resume.\n", encoding="utf-8")
    changed = load_config(None, [*lm_overrides(corpus, tmp_path), "train.stateful=true", "train.batch_size=4"])
    assert train.partial_dir(changed, work) != interrupted
    with caplog.at_level("WARNING", logger="pipeline.runner"):
        for stage in STAGES[:3]:
            runner.run_stage(stage, changed, work)
    lines = [r.getMessage() for r in caplog.records if "cannot be resumed" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"the interrupted training in {interrupted} cannot be resumed: the content of {corpus} changed" in lines[0]
    assert (interrupted / "epoch-001").is_dir(), "the interrupted run's checkpoints are kept"
    # The edit undone: the interrupted run is this config's own again, resumable, with nothing to say.
    corpus.write_text(original, encoding="utf-8")
    assert train.resumable_run(config, work) is not None and train.abandoned_runs(config, work) == []
