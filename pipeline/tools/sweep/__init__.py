"""Hyperparameter sweeps: an Optuna study whose trials are ordinary `pipeline run`s.

Reads a space file (the objective, the sampler, the pruner and a distribution per config key; see
`configs/sweeps/`) and the config it searches around. Each trial is `runner.run_all` of that config
with the trial's values set, in this process, so a stage whose key is finished is reused across
trials, and every trial is trained, evaluated, exported and tracked as a `pipeline run` is: its
MLflow parent run nests under this process's sweep run, tagged `sweep.study`, `sweep.trial` and
`sweep.state`. The objective is reported to Optuna after every epoch, and the pruner may stop a
trial between two epochs.

The study lives in Optuna's relational storage (a SQLite file, or any SQLAlchemy URL that several
hosts share), so any number of processes can work on one study: each asks for a new trial only
while the study holds fewer than `trials` trials that are running or ended with a result.

Writes `<workdir>/sweeps/<study>/`: `best.yaml` (the config with the best trial's values, for
`pipeline run --config`), `history.png` and `importance.png`; the sweep run gets all three.
"""

from pipeline.tools.sweep.report import report, trial_rows
from pipeline.tools.sweep.space import PRUNERS, SAMPLERS, Space, load_space
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
    "TrialPruned", "fail_lost_trials", "load_space", "open_storage",
    "open_study", "report", "run", "run_trial", "shown_url", "trial_rows",
]
