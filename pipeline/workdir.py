"""Where each stage reads and writes, and how a stage's output appears all at once.

The work directory holds one folder per stage (`prepare/`, `tokenize/`, `train/`,
`evaluate/`). A stage writes into a hidden temporary sibling and renames it into place only when
it has finished, so a crash or a bad input never leaves a folder that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import MissingStageError

STAGES = ("prepare", "tokenize", "train", "evaluate", "export")


def stage_dir(workdir: str | Path, stage: str) -> Path:
    """The finished output folder of `stage` under `workdir`."""
    return Path(workdir) / stage


def require_stage(workdir: str | Path, stage: str, needed_by: str) -> Path:
    """The output of an earlier stage, or a clear error saying which command to run first."""
    path = stage_dir(workdir, stage)
    if not (path / "DONE").is_file():
        raise MissingStageError(
            f"{path} has no finished {stage} output, which {needed_by} needs; "
            f"run `pipeline {stage}` (or `pipeline run`) with the same --workdir first"
        )
    return path


@contextlib.contextmanager
def atomic_output(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces `final`, on error it is deleted.

    A `DONE` marker is written last, so readers can tell a finished folder from anything else.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        (tmp / "DONE").write_text("", encoding="utf-8")
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
