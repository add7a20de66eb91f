"""What a stage's result gives MLflow: each result type says it once, in its `logged()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Logged:
    """What MLflow receives of a stage's result: metrics, tags, files or folders logged as
    artifacts under an artifact folder (`(path, folder)`), and a model to register."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[tuple[Path, str]] = field(default_factory=list)
    # An exported model to register under `export.register_as`, when the config names one.
    model: Path | None = None
