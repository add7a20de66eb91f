"""The space file: objective, sampler, pruner and a distribution per config key."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from pipeline import config as config_lib
from pipeline import metrics
from pipeline.config import Config
from pipeline.errors import ConfigError

# The options a space file may give each sampler and pruner, and the Optuna argument each sets.
SAMPLERS = {"tpe": {"startup_trials": "n_startup_trials"}, "random": {}, "grid": {}}


PRUNERS = {"median": {"startup_trials": "n_startup_trials", "warmup_epochs": "n_warmup_steps"}, "none": {}}


@dataclass(frozen=True)
class Space:
    """What a sweep searches: the objective, how to sample and prune, a distribution per config key."""

    metric: str
    direction: str  # "maximize" or "minimize"
    sampler: tuple[str, dict[str, int]]  # a name in SAMPLERS and Optuna's arguments
    pruner: tuple[str, dict[str, int]]
    params: dict[str, BaseDistribution]


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
        if sampler[0] == "grid" and grid_values(distribution) is None:
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
    metric, logged = str(spec["metric"]), ", ".join(metrics.validation_metrics(task))
    if metric.startswith("test_"):
        raise ConfigError(f"{path}: objective {metric} is a test metric; a sweep selects on validation "
                          f"metrics, or the test set stops being a test: use one of {logged}")
    if metric not in metrics.validation_metrics(task):
        raise ConfigError(f"{path}: objective {metric} is never logged for task {task}; use one of {logged}")
    lower = not metrics.higher_is_better(metric)
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


def grid_values(distribution: BaseDistribution) -> list[Any] | None:
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
