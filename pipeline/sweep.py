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

from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from pipeline import config as config_lib
from pipeline import runner, tracking, train
from pipeline.config import Config
from pipeline.errors import ConfigError, PipelineError, Stopped, SweepError

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///optuna.db"
# What train.py logs after every epoch, by task (a language model's perplexity and bits per
# character come from its BitsPerCharacter callback).
VALIDATION_METRICS = {"sentiment": ("val_loss", "val_accuracy"),
                      "lm": ("val_loss", "val_accuracy", "val_perplexity", "val_bits_per_char")}
# The test metric the trials table shows beside the objective.
TEST_METRIC = {"sentiment": "test_accuracy", "lm": "test_bits_per_char"}
# The options a space file may give each sampler and pruner, and the Optuna argument each sets.
SAMPLERS = {"tpe": {"startup_trials": "n_startup_trials"}, "random": {}, "grid": {}}
PRUNERS = {"median": {"startup_trials": "n_startup_trials", "warmup_epochs": "n_warmup_steps"}, "none": {}}
# A FAIL trial with this user attribute has no result its values earned and holds none of the
# study's trials: its process died or was stopped, or it came after the study had all its trials.
LOST = "sweep.lost"
SURPLUS = "the study had its trials when this one was asked for"


@dataclass(frozen=True)
class Space:
    """What a sweep searches: the objective, how to sample and prune, a distribution per config key."""

    metric: str
    direction: str  # "maximize" or "minimize"
    sampler: tuple[str, dict[str, int]]  # a name in SAMPLERS and Optuna's arguments
    pruner: tuple[str, dict[str, int]]
    params: dict[str, BaseDistribution]


@dataclass(frozen=True)
class SweepResult:
    """The study as this process left it: its trials best first, and the best trial's config."""

    study: str
    rows: list[dict[str, Any]]
    best_trial: FrozenTrial | None
    best_config: Path | None


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


def load_space(path: str | Path, config: Config) -> Space:
    """Read a space file and check it against the config the sweep starts from.

    Every problem is a `ConfigError` that names the file and the entry: an unknown key (with the
    nearest one), an empty range, a distribution the file cannot express, a value the key does not
    take, an objective the task never logs or a test metric as the objective.
    """
    path = Path(path)
    tree = config_lib.read_yaml(path, kind="space file", missing="see configs/sweeps/ for examples")
    _check_names(path, "space file key", tree, ("objective", "sampler", "pruner", "params"))
    metric, direction = _objective(path, tree.get("objective"), config.task)
    params = tree.get("params")
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{path}: params must map config keys to distributions, "
                          "e.g. model.dropout: {float: [0.1, 0.5]}")
    distributions = {str(key): _distribution(path, str(key), spec, config) for key, spec in params.items()}
    sampler = _named_options(path, "sampler", tree.get("sampler", "tpe"), SAMPLERS)
    for key, distribution in distributions.items():
        if sampler[0] == "grid" and _grid_values(distribution) is None:
            raise ConfigError(f"{path}: sampler grid needs a list of values for params.{key}; "
                              "use choice: [...] (or an int range) there, or sampler tpe or random")
    pruner = _named_options(path, "pruner", tree.get("pruner", "median"), PRUNERS)
    return Space(metric, direction, sampler, pruner, distributions)


def _objective(path: Path, spec: Any, task: str) -> tuple[str, str]:
    if isinstance(spec, str):
        spec = {"metric": spec}
    if not isinstance(spec, dict) or "metric" not in spec:
        raise ConfigError(f"{path}: objective must name a metric, "
                          "e.g. objective: {metric: val_accuracy, direction: maximize}")
    _check_names(path, "objective key", spec, ("metric", "direction"))
    metric, logged = str(spec["metric"]), ", ".join(VALIDATION_METRICS[task])
    if metric.startswith("test_"):
        raise ConfigError(f"{path}: objective {metric} is a test metric; a sweep selects on validation "
                          f"metrics, or the test set stops being a test: use one of {logged}")
    if metric not in VALIDATION_METRICS[task]:
        raise ConfigError(f"{path}: objective {metric} is never logged for task {task}; use one of {logged}")
    lower = metric.endswith(tracking.LOWER_IS_BETTER)
    best = "minimize" if lower else "maximize"
    direction = spec.get("direction", best)
    if direction not in ("maximize", "minimize"):
        raise ConfigError(f"{path}: objective direction must be maximize or minimize; got {direction!r}")
    if direction != best:
        raise ConfigError(f"{path}: objective {metric} is better {'lower' if lower else 'higher'}, "
                          f"so its direction is {best}, not {direction}")
    return metric, direction


def _distribution(path: Path, key: str, spec: Any, config: Config) -> BaseDistribution:
    """The Optuna distribution for `params.<key>`, checked against what the config key takes."""
    try:
        config_lib.check_key(key)
    except ConfigError as error:
        raise ConfigError(f"{path}: params: {error}") from None
    where = f"{path}: params.{key}"
    kinds = [kind for kind in ("int", "float", "choice") if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: {spec!r} is not a distribution this file can express; use "
                          "{int: [low, high]} or {float: [low, high]} (with log: true or step: S if you "
                          "like) or {choice: [a, b, ...]}")
    kind = kinds[0]
    _check_names(path, f"option of params.{key}", [k for k in spec if k != kind],
                 () if kind == "choice" else ("log", "step"))
    try:
        distribution = _choice(where, spec[kind]) if kind == "choice" else _range(where, kind, spec)
    except ConfigError:
        raise
    except ValueError as error:  # Optuna's own checks: a log scale from 0, a step on a log scale...
        raise ConfigError(f"{where}: {error}") from None
    ends = distribution.choices if kind == "choice" else (distribution.low, distribution.high)
    for value in ends:  # the key must take every value the trials can get
        try:
            config_lib.with_values(config, {key: value})
        except ConfigError as error:
            raise ConfigError(f"{where}: {error}") from None
    return distribution


def _range(where: str, kind: str, spec: dict[str, Any]) -> BaseDistribution:
    bounds, number = spec[kind], int if kind == "int" else (int, float)
    if not (isinstance(bounds, list) and len(bounds) == 2
            and all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)):
        raise ConfigError(f"{where}: {kind} takes [low, high], two {'whole ' if kind == 'int' else ''}"
                          f"numbers; got {bounds!r}")
    low, high = bounds
    if low > high:
        raise ConfigError(f"{where}: the range [{low}, {high}] is empty; write it [low, high]")
    if low == high:
        raise ConfigError(f"{where}: the range [{low}, {high}] holds one value; set it with --set instead")
    log_scale = spec.get("log", False)
    if not isinstance(log_scale, bool):
        raise ConfigError(f"{where}: log must be true or false; got {log_scale!r}")
    if kind == "int":
        return IntDistribution(low, high, log=log_scale, step=spec.get("step", 1))
    return FloatDistribution(float(low), float(high), log=log_scale, step=spec.get("step"))


def _choice(where: str, values: Any) -> BaseDistribution:
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: choice takes a list of one or more values; got {values!r}")
    return CategoricalDistribution(values)


def _grid_values(distribution: BaseDistribution) -> list[Any] | None:
    """Every value the grid sampler tries: the choices, or every step of an int range; None for floats."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    if isinstance(distribution, IntDistribution):
        return list(range(distribution.low, distribution.high + 1, distribution.step))
    return None


def _named_options(path: Path, what: str, spec: Any, known: dict[str, dict[str, str]]) -> tuple[str, dict[str, int]]:
    """`tpe`, or `{tpe: {startup_trials: 5}}`, as the name and Optuna's keyword arguments."""
    if isinstance(spec, dict) and len(spec) == 1:
        ((name, options),) = spec.items()
    else:
        name, options = spec, {}
    if not isinstance(name, str) or not isinstance(options or {}, dict):
        raise ConfigError(f"{path}: {what} must be a name ({', '.join(known)}) or a name with options, "
                          f"e.g. {{median: {{startup_trials: 5}}}}; got {spec!r}")
    _check_names(path, what, [name], tuple(known))
    _check_names(path, f"{name} option", options or {}, tuple(known[name]))
    for key, value in (options or {}).items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path}: {name} option {key} must be a whole number, 0 or more; got {value!r}")
    return name, {known[name][key]: value for key, value in (options or {}).items()}


def _check_names(path: Path, what: str, names: Any, valid: tuple[str, ...]) -> None:
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(str(name), valid, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}?" if close else (f"use {', '.join(valid)}" if valid else "it takes none")
            raise ConfigError(f"{path}: unknown {what} {name}; {hint}")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's relational storage at `url`; a `SweepError` within seconds if it cannot be used."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SweepError(f"--storage {url} is not a database URL; use sqlite:///FILE or a SQLAlchemy URL "
                         "such as postgresql://USER:PASSWORD@HOST/DATABASE") from None
    engine_kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": 60}}  # processes wait for each other's writes
    elif parsed.get_backend_name() == "postgresql":
        engine_kwargs = {"connect_args": {"connect_timeout": 10}, "pool_pre_ping": True}
    try:
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return _connect(url, engine_kwargs)
    except ImportError as missing:
        raise SweepError(f"Optuna storage {shown_url(url)} needs a database driver that is not installed "
                         f"({missing.__cause__ or missing}); for postgresql://: pip install 'psycopg[binary]'"
                         ) from None
    except (SQLAlchemyError, OSError) as error:
        reason = str(getattr(error, "orig", None) or error).strip().splitlines()[0]
        raise SweepError(f"Optuna storage {shown_url(url)} is unreachable ({reason}); every process of a "
                         "study needs the same reachable --storage") from None


def _connect(url: str, engine_kwargs: dict[str, Any], attempts: int = 3) -> optuna.storages.RDBStorage:
    """Optuna's storage, tried again after a database error: processes that create a new storage
    at once race to make its tables, and the losers find them made."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(1, attempts):
        with contextlib.suppress(SQLAlchemyError):
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        time.sleep(0.5 * attempt)
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


def shown_url(url: str) -> str:
    """`url` with its password hidden, for messages and tags."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def open_study(name: str, storage: optuna.storages.RDBStorage, space: Space, config: Config) -> optuna.Study:
    """The study `name`, created now or loaded, whichever process comes first.

    A study remembers the objective and the config it was started from (all but the swept keys):
    a process that brings another one would mix trials that cannot be compared, so it is refused.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise SweepError(f"study name {name!r} may hold only letters, digits, '.', '_' and '-'")
    study = optuna.create_study(study_name=name, storage=storage, sampler=_sampler(space), pruner=_pruner(space),
                                direction=space.direction, load_if_exists=True)
    objective = f"{space.metric} {space.direction}"
    base = {key: value for key, value in config_lib.flatten(config).items() if key not in space.params}
    started = study.user_attrs.get("sweep.base")
    if started is None:
        study.set_user_attr("sweep.objective", objective)
        study.set_user_attr("sweep.base", base)
        return study
    if study.user_attrs.get("sweep.objective") != objective:
        raise SweepError(f"study {name} optimises {study.user_attrs.get('sweep.objective')}, not {objective}; "
                         "use its space file, or start another --study")
    for key, value in base.items():
        if key in started and started[key] != value:
            raise SweepError(f"study {name} was started with {key}={started[key]!r}, not {value!r}; give every "
                             "process of a study the same --config and --set, or start another --study")
    return study


def _sampler(space: Space) -> optuna.samplers.BaseSampler:
    name, options = space.sampler
    if name == "grid":
        return optuna.samplers.GridSampler({key: _grid_values(d) for key, d in space.params.items()})
    if name == "random":
        return optuna.samplers.RandomSampler()
    # The constant liar counts running trials as bad ones, so processes in parallel spread out.
    return optuna.samplers.TPESampler(constant_liar=True, **options)


def _pruner(space: Space) -> optuna.pruners.BasePruner:
    name, options = space.pruner
    return optuna.pruners.MedianPruner(**options) if name == "median" else optuna.pruners.NopPruner()


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
        trials = min(trials, math.prod(len(_grid_values(d)) for d in space.params.values()))
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
    log.info("trial %d: %s", trial.number, _values(trial.params))
    reporting = train.extra_callbacks.set((functools.partial(PruningCallback, trial, space.metric),))
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
        train.extra_callbacks.reset(reporting)
        # The objective beside the test metrics on the trial's run, for the MLflow UI's compare view.
        tracking.annotate_runs(where, {"sweep.state": state.name}, objective if state != TrialState.FAIL else {})
    everything = study.get_trials(deepcopy=False)
    done = sum(t.state != TrialState.RUNNING and _holds_a_slot(t) for t in everything)
    ended = next(t for t in everything if t.number == trial.number)
    log.info("trial %d %s in %s: %s=%s; %d of %d trials done", trial.number, state.name, _duration(ended),
             space.metric, _short(_objective_value(ended)), done, trials)
    return state


def _objective_value(trial: FrozenTrial) -> float | None:
    """The trial's value; for a pruned trial, the last one it reported."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    return trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None


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

    test_metric = TEST_METRIC[task]
    rows = []
    for trial in sorted(trials, key=rank):
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name}
        row.update({key: _short(trial.params.get(key)) for key in space.params})
        row[space.metric] = trial.value if trial.state == TrialState.COMPLETE else None
        row[test_metric] = trial.user_attrs.get(test_metric)
        row["duration"] = _duration(trial)
        row["note"] = _note(trial)
        rows.append(row)
    return rows


def _note(trial: FrozenTrial) -> str:
    if trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        return f"pruned after epoch {step} at {_short(trial.intermediate_values[step])}"
    return str(trial.user_attrs.get(LOST) or trial.user_attrs.get("error") or "")


def _values(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={_short(value)}" for key, value in params.items())


def _short(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(trial: FrozenTrial) -> str | None:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return None
    seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds())
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
