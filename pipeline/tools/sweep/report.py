"""What a sweep leaves: the trials table, best.yaml and the plots."""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline import config as config_lib
from pipeline import metrics, tracking
from pipeline.config import Config
from pipeline.tools.sweep.space import Space

log = logging.getLogger(__name__)

def report(study: optuna.Study, space: Space, config: Config, workdir: str | Path) -> SweepResult:
    """Write and log the study's plots and the best trial's config; return the trials table."""
    out = Path(workdir) / "sweeps" / study.study_name
    out.mkdir(parents=True, exist_ok=True)
    trials = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(LOST) != SURPLUS]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    tracking.log_metrics({f"trials_{state}": count for state, count in counts.items()})
    # Several processes may report at once: each writes its files aside, then renames them into place.
    with tempfile.TemporaryDirectory(dir=out, prefix=".report-") as tmp:
        files = _plots(study, space, complete, Path(tmp))
        if best is not None:
            config_lib.dump_yaml(config_lib.with_values(config, best.params), Path(tmp) / "best.yaml")
            files.append(Path(tmp) / "best.yaml")
            tracking.log_metrics({f"best_{space.metric}": best.value})
            tracking.set_tags({"sweep.best_trial": best.number})
        for path in files:
            tracking.log_artifact(path)
            os.replace(path, out / path.name)
    return SweepResult(study.study_name, trial_rows(trials, space, config.task), best,
                       out / "best.yaml" if best is not None else None)


# A FAIL trial with this user attribute has no result its values earned and holds none of the
# study's trials: its process died or was stopped, or it came after the study had all its trials.
LOST = "sweep.lost"


SURPLUS = "the study had its trials when this one was asked for"


@dataclass(frozen=True)
class SweepResult:
    """The study as this process left it: its trials best first, and the best trial's config."""

    study: str
    rows: list[dict[str, Any]]
    best_trial: FrozenTrial | None
    best_config: Path | None


def _plots(study: optuna.Study, space: Space, complete: list[FrozenTrial], out: Path) -> list[Path]:
    """The optimisation history, and the parameters' importance when two complete trials differ."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    if not complete:
        return []
    varied = [key for key in space.params if len({repr(t.params.get(key)) for t in complete}) > 1]
    axes = {"history.png": lambda: optuna_plots.plot_optimization_history(study, target_name=space.metric)}
    if len(complete) >= 2 and varied:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        axes["importance.png"] = lambda: optuna_plots.plot_param_importances(
            study, evaluator=evaluator, params=varied, target_name=space.metric)
    else:
        log.info("no parameter importance plot: it needs two complete trials whose values differ")
    paths = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, draw in axes.items():
            figure = draw().figure
            figure.tight_layout()
            figure.savefig(out / name, dpi=120)
            plt.close(figure)
            paths.append(out / name)
    return paths


def trial_rows(trials: list[FrozenTrial], space: Space, task: str) -> list[dict[str, Any]]:
    """One row per trial, best first: complete trials by their value, then pruned, running, failed."""
    order = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.RUNNING: 2}
    sign = 1 if space.direction == "minimize" else -1

    def rank(trial: FrozenTrial) -> tuple:
        value = trial.value if trial.state == TrialState.COMPLETE and trial.value is not None else 0.0
        return order.get(trial.state, 3), sign * value, trial.number

    test_metric = metrics.headline(task)
    rows = []
    for trial in sorted(trials, key=rank):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        row.update({key: short(trial.params.get(key)) for key in space.params})
        row[space.metric] = trial.value if trial.state == TrialState.COMPLETE else None
        row[test_metric] = trial.user_attrs.get(test_metric)
        row["duration"] = trial_duration(trial)
        row["note"] = _note(trial)
        rows.append(row)
    return rows


def _note(trial: FrozenTrial) -> str:
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"pruned after epoch {step} at {short(trial.intermediate_values[step])}"
    return str(trial.user_attrs.get(LOST) or trial.user_attrs.get("error") or "")


def values_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={short(value)}" for key, value in params.items())


def short(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_duration(trial: FrozenTrial) -> str | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
