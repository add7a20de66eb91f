"""Where each stage reads and writes, and how a stage's output appears all at once.

The work directory holds one folder per stage and key: `<workdir>/<stage>/<key>/`, the key
coming from `pipeline.store.cache` (a hash of everything the output depends on). A stage writes into
a hidden temporary sibling and renames it into place only when it has finished, so a crash or a
bad input never leaves a folder that looks complete. The `DONE` file, written last, records
which MLflow run produced the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import MissingStageError
from pipeline.store import cache

DONE = "DONE"
# Beside an export's saved_model.pb: its task, labels, run name and version.
INFO_FILE = "pipeline.json"


def stage_dir(config: Config, workdir: str | Path, stage: str) -> Path:
    """The output folder of `stage` for `config` (finished or not) under `workdir`."""
    return Path(workdir) / stage / cache.stage_keys(config)[stage]


def is_finished(path: Path) -> bool:
    return (path / DONE).is_file()


def producer(path: Path) -> dict[str, Any]:
    """What `DONE` recorded about the run that made a finished folder (empty if unknown)."""
    try:
        return json.loads((path / DONE).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def require_stage(config: Config, workdir: str | Path, stage: str, needed_by: str) -> Path:
    """The output of an earlier stage, or a clear error saying which command to run first."""
    path = stage_dir(config, workdir, stage)
    if not is_finished(path):
        raise MissingStageError(
            f"{path} has no finished {stage} output for this config, which {needed_by} needs; "
            f"run `pipeline {stage}` (or `pipeline run`) with the same --config, --set and --workdir first"
        )
    return path


@contextlib.contextmanager
def stage_output(config: Config, workdir: str | Path, stage: str) -> Iterator[Path]:
    """`atomic_output` for a stage's own folder, recording the producing MLflow run in `DONE`."""
    from pipeline import tracking

    record = {"stage": stage, "key": cache.stage_keys(config)[stage], **tracking.run_reference()}
    with atomic_output(stage_dir(config, workdir, stage), record) as out:
        yield out


@contextlib.contextmanager
def atomic_output(final: str | Path, record: dict[str, Any] | None = None) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final`, on error it is deleted.

    A `DONE` marker holding `record` (as JSON) is written last, so readers can tell a finished
    folder from anything else.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        done = {**(record or {}), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / DONE).write_text(json.dumps(done, indent=2), encoding="utf-8")
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
