"""Run stages inside MLflow runs: one run per stage, nested under one parent for `pipeline run`.

This is where a stage's result becomes params, metrics, tags and artifacts; the stages
themselves only read and write files. It is also where finished outputs are reused: a stage
whose output for this config's key exists is not run again, and its MLflow run says so
(`cache_hit=true`) and links to the run that made the output. An interrupted training is
resumed into the run it was logging to.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from pipeline import config as config_lib
from pipeline import models, registry, tracking
from pipeline.config import Config
from pipeline.registry import NAMES
from pipeline.stages import train
from pipeline.store import cache
from pipeline.store.workdir import is_finished, producer, stage_dir
from pipeline.training import distribute

log = logging.getLogger(__name__)


def run_stage(stage: str, config: Config, workdir: str | Path, force: bool = False) -> Any:
    """Run one stage in its own MLflow run (nested when a parent run is active).

    A finished output for this config is reused unless `force`; an interrupted training is
    resumed into its MLflow run, unless `force` throws its checkpoints away.
    """
    worker = distribute.role(config)
    if not worker.is_chief:
        return train_beside_chief(config, workdir) if stage == "train" else _chief_only(stage, worker)
    if stage == "train":
        distribute.strategy_for(config)  # joins a cluster before any run is opened
    output = finished_output(stage, config, workdir)
    if output is not None and not force:
        if stage == "train":
            distribute.skip_training(distribute.strategy_for(config))  # the other workers wait for word
        return _reuse(stage, config, workdir, output)
    resume_id = None
    if stage == "train":
        resumed = train.resumable_run(config, workdir)
        if resumed is None and not force:
            for line in train.abandoned_runs(config, workdir):
                log.warning(line)
        if force:  # checkpoints, and the segmentations a training killed in its first epoch drew
            train.discard_checkpoints(config, workdir)
        elif resumed and _same_parent(resumed.run) and tracking.run_exists(resumed.run.get("run_id", "")):
            resume_id = resumed.run["run_id"]
        # Otherwise the training still resumes from its checkpoint, in a new run that gets the
        # earlier epochs' metrics copied in (a run cannot move to another parent).
    if not tracking.active():  # a stage run on its own; `run_all` does this for the whole run
        tracking.settle_stale_runs(config_lib.fingerprint(config), _where(workdir), keep={resume_id})
    with tracking.start_run(stage, tags=_stage_tags(stage, config, workdir), run_id=resume_id):
        if resume_id is None:
            log_config(config)
        log.info("== %s: %s (key %s)", stage, "resuming" if resume_id else "running", cache.stage_keys(config)[stage])
        result = registry.get(stage).run(config, workdir)
        _log_outputs(config, result)
    return result


def run_all(config: Config, workdir: str | Path, force: str | None = None,
            tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Run every stage in order under one parent run; the test metrics land on the parent too.

    `force` names the first stage to re-run even if its output exists (every later stage is
    re-run too). A training killed earlier is resumed, in its original parent run. `tags` are
    added to the parent run (a sweep names its study and trial there).
    """
    first_forced = NAMES.index(force) if force else len(NAMES)
    strategy = distribute.strategy_for(config)  # a bad device, batch or TF_CONFIG fails before any data work
    if not distribute.is_chief(strategy):
        return {"train": train_beside_chief(config, workdir, fresh=first_forced <= NAMES.index("tokenize"))}
    fingerprint = config_lib.fingerprint(config)
    resumed = train.resumable_run(config, workdir) if first_forced > NAMES.index("train") else None
    parent_id = resumed.run.get("parent_run_id") if resumed else None
    # Under `mlflow run` the parent is the run it made (MLFLOW_RUN_ID), never an earlier one.
    if parent_id and ("MLFLOW_RUN_ID" in os.environ or not tracking.run_exists(parent_id)):
        parent_id = None
    tracking.settle_stale_runs(fingerprint, _where(workdir),
                               keep={parent_id, resumed.run.get("run_id") if resumed else None})
    results = {}
    name = f"{config_lib.run_name(config)}-{fingerprint}"
    with tracking.start_run(name, tags={**run_tags(config, workdir), **distribute.describe(config, strategy),
                                        **(tags or {})}, run_id=parent_id):
        if parent_id is None:
            log_config(config)
        else:
            log.info("resuming MLflow run %s", parent_id)
        for index, stage in enumerate(NAMES):
            if parent_id and index < first_forced and tracking.finished_child(parent_id, stage):
                # A resumed parent run already holds this stage's run.
                log.info("== %s: done earlier in this run", stage)
                if stage == "train":
                    distribute.skip_training(strategy)
                results[stage] = registry.get(stage).load(config, workdir)
                continue
            results[stage] = run_stage(stage, config, workdir, force=index >= first_forced)
        # What the UI's run table should show without opening the child runs.
        tracking.log_metrics(results["evaluate"].metrics)
        tracking.set_tags({"export_path": results["export"].path, "lstm_kernel": results["train"].lstm_kernel})
    return results


def train_beside_chief(config: Config, workdir: str | Path, fresh: bool = False) -> train.TrainResult | None:
    """A worker's part in a multi-worker training, worker 0 being the chief: the same data and
    training, without MLflow, in a scratch folder deleted afterwards. The chief's finished prepare
    and tokenize outputs are read where this worker sees them (same host, shared filesystem),
    unless `fresh` (the chief is re-making them)."""
    with tempfile.TemporaryDirectory(prefix="pipeline-worker-") as scratch:
        for stage in ("prepare", "tokenize"):
            done = None if fresh else finished_output(stage, config, workdir)
            if done is None:
                registry.get(stage).run(config, scratch)
            else:
                link = stage_dir(config, scratch, stage)
                link.parent.mkdir(parents=True)
                link.symlink_to(done.resolve(), target_is_directory=True)
        try:
            return train.run(config, scratch)
        except distribute.NothingToTrain:
            log.info("worker 0 has this training's output already; nothing to train")
            return None


def _chief_only(stage: str, worker: distribute.Cluster) -> None:
    log.info("worker %d of %d: %s runs on worker 0 only; nothing to do here", worker.index, worker.workers, stage)


def finished_output(stage: str, config: Config, workdir: str | Path) -> Path | None:
    """The finished output of `stage` for this config, if one exists: where the stage's module
    says (`finished_output`, for an output outside the work folder), else its work folder."""
    finder = getattr(registry.get(stage).load_module(), "finished_output", None)
    if finder is not None:
        return finder(config)
    path = stage_dir(config, workdir, stage)
    return path if is_finished(path) else None

def _same_parent(run: dict[str, str]) -> bool:
    """Whether a checkpoint's train run sits under the parent run now active (or both have none)."""
    return run.get("parent_run_id") == (tracking.run_reference().get("run_id") if tracking.active() else None)


def _reuse(stage: str, config: Config, workdir: str | Path, output: Path) -> Any:
    """Read a finished stage's result, and record the reuse in a `cache_hit` run."""
    made_by = producer(output)
    result = registry.get(stage).load(config, workdir)
    tags = {**_stage_tags(stage, config, workdir), "cache_hit": "true",
            "cache_source_run_id": made_by.get("run_id", "")}
    with tracking.start_run(stage, tags=tags):
        log_config(config)
        tracking.note_reuse(output, made_by)
        _log_outputs(config, result, artifacts=False)
    source = made_by.get("run_id") or "an untracked run"
    log.info("== %s: cached, reusing %s (made by run %s)", stage, output, source)
    return result


def run_tags(config: Config, workdir: str | Path) -> dict[str, str]:
    """Tags that let the MLflow UI filter and group runs, and tell where a run came from."""
    return {
        "task": config.task,
        "dataset": config.data.tfds or Path(config.data.train or "").name,
        "preset": config.name,
        "config_fingerprint": config_lib.fingerprint(config),
        "device": "gpu" if models.gpu_visible() else "cpu",
        **versions(),
        **tracking.process_tags(),
        "pipeline.workdir": _where(workdir),
    }


def _where(workdir: str | Path) -> str:
    return str(Path(workdir).resolve())


def _stage_tags(stage: str, config: Config, workdir: str | Path) -> dict[str, str]:
    return {**run_tags(config, workdir), "stage": stage, "stage_key": cache.stage_keys(config)[stage]}


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """TensorFlow, Keras, CUDA and cuDNN versions ("none" on a CPU-only build), the pipeline's
    code version, and the project's git commit when it runs from a git checkout."""
    build = tf.sysconfig.get_build_info()
    tags = {
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "cuda_version": str(build.get("cuda_version") or "none"),
        "cudnn_version": str(build.get("cudnn_version") or "none"),
        "pipeline_version": cache.code_version(),
    }
    commit = _git_commit(Path(__file__).resolve().parent.parent)
    if commit:
        tags["git_commit"] = commit
    return tags


def _git_commit(directory: Path) -> str | None:
    """`HEAD` of the git checkout holding `directory`, with `-dirty` for uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(directory), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def log_config(config: Config) -> None:
    """The resolved config, as flat params and as `config.yaml`."""
    tracking.log_params(config_lib.flatten(config))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        config_lib.dump_yaml(config, path)
        tracking.log_artifact(path)


def _log_outputs(config: Config, result: Any, artifacts: bool = True) -> None:
    """Log what a stage's result says of itself (`result.logged()`): metrics, tags, and its files as
    artifacts unless `artifacts` is false (a reused output's files are in the run that made it). An
    exported model is registered when `export.register_as` names a registered model."""
    logged = result.logged()
    tracking.log_metrics(logged.metrics)
    tracking.set_tags(logged.tags)
    if logged.model is not None and config.export.register_as and tracking.active():
        uri = tracking.register_export(logged.model, config.export.register_as,
                                       cache.stage_keys(config)["export"], config.task)
        tracking.set_tags({"registered_model": uri})
    if artifacts:
        for path, folder in logged.artifacts:
            tracking.log_artifact(path, folder)
