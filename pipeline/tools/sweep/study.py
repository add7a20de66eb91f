"""The study's storage, sampler and pruner."""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any

import optuna

from pipeline import config as config_lib
from pipeline.config import Config
from pipeline.errors import SweepError
from pipeline.tools.sweep.space import Space, grid_values

DEFAULT_STORAGE = "sqlite:///optuna.db"


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
        return optuna.samplers.GridSampler({key: grid_values(d) for key, d in space.params.items()})
    if name == "random":
        return optuna.samplers.RandomSampler()
    # The constant liar counts running trials as bad ones, so processes in parallel spread out.
    return optuna.samplers.TPESampler(constant_liar=True, **options)


def _pruner(space: Space) -> optuna.pruners.BasePruner:
    name, options = space.pruner
    return optuna.pruners.MedianPruner(**options) if name == "median" else optuna.pruners.NopPruner()
