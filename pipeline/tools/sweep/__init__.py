"""Hyperparameter sweeps on Optuna, each trial a `pipeline run`."""

from pipeline.tools.sweep.report import report, trial_rows
from pipeline.tools.sweep.space import PRUNERS, SAMPLERS, TEST_METRIC, VALIDATION_METRICS, Space, load_space
from pipeline.tools.sweep.study import DEFAULT_STORAGE, open_storage, open_study, shown_url
from pipeline.tools.sweep.trials import (
    LOST,
    SURPLUS,
    PruningCallback,
    SweepResult,
    TrialPruned,
    fail_lost_trials,
    run,
    run_trial,
)

__all__ = [
    "DEFAULT_STORAGE", "LOST", "PRUNERS", "PruningCallback", "SAMPLERS", "SURPLUS", "Space", "SweepResult",
    "TEST_METRIC", "TrialPruned", "VALIDATION_METRICS", "fail_lost_trials", "load_space", "open_storage",
    "open_study", "report", "run", "run_trial", "shown_url", "trial_rows",
]
