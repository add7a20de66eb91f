"""Running trials: each an ordinary `pipeline run`, reported and pruned per epoch."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import keras
import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline import config as config_lib
from pipeline import runner, tracking
from pipeline.config import Config
from pipeline.errors import PipelineError, Stopped
from pipeline.stages import train
from pipeline.tools.sweep.report import LOST, SURPLUS, SweepResult, report, short, trial_duration, values_text
from pipeline.tools.sweep.space import Space, grid_values
from pipeline.tools.sweep.study import DEFAULT_STORAGE, open_storage, open_study, shown_url
from pipeline.training import callbacks

log = logging.getLogger(__name__)







class TrialPruned(optuna.TrialPruned, Stopped):
    """Optuna's pruning signal, and a `Stopped` that ends the MLflow runs it leaves KILLED."""

    def __init__(self, message: str, value: float):
        Stopped.__init__(self, message, {"sweep.pruned": "true"})
        self.value = value  # the objective at the epoch the trial stopped


class PruningCallback(keras.callbacks.Callback):
    """Reports the objective to the trial after every epoch, and stops the training (between two
    epochs) when the pruner says the trial cannot win."""

    def __init__(self, trial: optuna.Trial, metric: str):
        super().__init__()
        self.trial, self.metric = trial, metric

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.metric not in logs:
            return
        self.trial.report(float(logs[self.metric]), step=epoch)
        if self.trial.should_prune():
            raise TrialPruned(f"trial {self.trial.number} pruned after epoch {epoch}: "
                              f"{self.metric}={float(logs[self.metric]):.4f}", float(logs[self.metric]))


def run(config: Config, workdir: str | Path, space: Space, trials: int, study_name: str,
        storage_url: str = DEFAULT_STORAGE) -> SweepResult:
    """Work on the study until it holds `trials` trials, counting every process's, then report it.

    Args:
        config: the config every trial starts from (a preset and its overrides).
        workdir: the work directory every trial's stages share.
        space: what to search, from `load_space`.
        trials: how many trials the study should end with: complete, pruned, or failed by their values.
        study_name: the Optuna study; processes with the same name and storage share it.
        storage_url: the Optuna storage, `sqlite:///FILE` or any SQLAlchemy URL.

    Returns:
        The study's trials, best first, and the best one's config, written to `best.yaml`.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this module logs one line per trial
    storage = open_storage(storage_url)
    study = open_study(study_name, storage, space, config)
    if space.sampler[0] == "grid":
        trials = min(trials, math.prod(len(grid_values(d)) for d in space.params.values()))
    lost = fail_lost_trials(study, storage)
    tracking.settle_orphans({"sweep.study": study_name})
    tags = {"sweep.study": study_name, "sweep.storage": shown_url(storage_url),
            "sweep.objective": f"{space.metric} {space.direction}", **tracking.process_tags()}
    with tracking.start_run(f"sweep-{study_name}", tags=tags):
        for number in lost:
            tracking.annotate_runs({"sweep.study": study_name, "sweep.trial": str(number)}, {"sweep.state": "FAIL"})
        while (trial := _ask(study, space, trials)) is not None:
            run_trial(study, trial, space, config, workdir, trials)
        return report(study, space, config, workdir)


def fail_lost_trials(study: optuna.Study, storage: optuna.storages.RDBStorage) -> list[int]:
    """Mark FAIL (and lost) the RUNNING trials whose process on this host has ended, such as one
    killed with `kill -9`; return their numbers. Another host's trials are left to that host."""
    study_id = storage.get_study_id_from_name(study.study_name)
    this_process = tracking.process_tags()
    lost = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = {key: trial.user_attrs.get(key) for key in this_process}
        # None of this process's trials runs yet, whatever its command line looks like.
        if owner != this_process and not tracking.process_gone(owner):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, LOST, "its process ended while it ran")
            study.tell(trial.number, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process starting now got there first
        lost.append(trial.number)
    if lost:
        log.info("trials %s of study %s were left running by a process that ended: marked FAIL",
                 ", ".join(map(str, lost)), study.study_name)
    return lost


def _holds_a_slot(trial: FrozenTrial) -> bool:
    """Whether `trial` is one of the study's trials: running, or ended with a result its values earned."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING):
        return True
    return trial.state == TrialState.FAIL and LOST not in trial.user_attrs


def _ask(study: optuna.Study, space: Space, trials: int) -> optuna.Trial | None:
    """A new trial for this process, or None when the study has (or is running) all its trials.

    Two processes may ask at the same moment for the last trial; trial numbers are unique and
    ordered, so the one that got the higher number gives its trial back (FAIL, lost).
    """
    if sum(map(_holds_a_slot, study.get_trials(deepcopy=False))) >= trials:
        return None
    trial = study.ask(space.params)
    for key, value in tracking.process_tags().items():
        trial.set_user_attr(key, value)
    ahead = sum(_holds_a_slot(t) for t in study.get_trials(deepcopy=False) if t.number < trial.number)
    if ahead >= trials:
        trial.set_user_attr(LOST, SURPLUS)
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def run_trial(study: optuna.Study, trial: optuna.Trial, space: Space, config: Config, workdir: str | Path,
              trials: int) -> TrialState:
    """Run one trial as a `pipeline run` of its config, and tell Optuna how it ended.

    A pipeline error (a NaN loss, say) fails the trial and the sweep goes on; an interrupt or a bug
    fails it as lost, and stops the sweep.
    """
    trial_config = config_lib.with_values(config, trial.params)
    where = {"sweep.study": study.study_name, "sweep.trial": str(trial.number)}
    log.info("trial %d: %s", trial.number, values_text(trial.params))
    reporting = callbacks.extra_callbacks.set((functools.partial(PruningCallback, trial, space.metric),))
    state, objective = TrialState.FAIL, {}
    try:
        results = runner.run_all(trial_config, workdir, tags=where)
        for key, value in results["evaluate"].metrics.items():
            trial.set_user_attr(key, value)  # for the trials table, whichever process prints it
        objective = {space.metric: results["train"].best_metrics.get(space.metric)}
        state = study.tell(trial, objective[space.metric]).state
    except TrialPruned as pruned:
        train.discard_checkpoints(trial_config, workdir)  # a pruned training is never to be resumed
        state = study.tell(trial, state=TrialState.PRUNED).state
        # Where it stood when stopped: without a value, MLflow's parallel coordinates would draw the
        # trial above the best one.
        objective = {space.metric: pruned.value}
    except PipelineError as error:
        log.warning("trial %d failed: %s", trial.number, error)
        trial.set_user_attr("error", str(error)[:1000])
        study.tell(trial, state=TrialState.FAIL)
    except BaseException as error:
        trial.set_user_attr(LOST, f"stopped by {type(error).__name__}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        callbacks.extra_callbacks.reset(reporting)
        # The objective beside the test metrics on the trial's run, for the MLflow UI's compare view.
        tracking.annotate_runs(where, {"sweep.state": state.name}, objective if state != TrialState.FAIL else {})
    everything = study.get_trials(deepcopy=False)
    done = sum(t.state != TrialState.RUNNING and _holds_a_slot(t) for t in everything)
    ended = next(t for t in everything if t.number == trial.number)
    log.info("trial %d %s in %s: %s=%s; %d of %d trials done", trial.number, state.name, trial_duration(ended),
             space.metric, short(_objective_value(ended)), done, trials)
    return state


def _objective_value(trial: FrozenTrial) -> float | None:
    """The trial's value; for a pruned trial, the last one it reported."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None
