"""Per-epoch training checkpoints that a killed training resumes from, exactly.

After every epoch, `EpochCheckpoint` writes `epoch-NNN/` under the train stage's `.partial`
folder, into a temporary folder renamed into place when complete (so a `kill -9` mid-write
leaves the previous checkpoint as the latest). A checkpoint holds everything the next epoch
depends on:
  - `model.weights.h5`: the weights and the optimizer's state (moments, iteration count);
  - `best.npz`: the weights early stopping would restore;
  - `state.json`: epochs done, the metrics of every epoch so far, early stopping's counters,
    the state of every Keras random seed generator (dropout masks), and the MLflow run ids.
The data order is the last piece: each epoch's order is a function of the seed and the epoch
number (see `data.classification_dataset`). With `train.ema_momentum`, `model.weights.h5` holds
the weights being trained and the optimizer's state their moving average. In deterministic
mode a resumed training therefore ends with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline import tracking

STATE = "state.json"
WEIGHTS = "model.weights.h5"
BEST = "best.npz"


@dataclass(frozen=True)
class Checkpoint:
    """One finished epoch's checkpoint, as found on disk."""

    path: Path | None  # None on workers 1.. of a cluster: the chief holds the files (`distribute.resume_point`)
    epoch: int  # epochs completed, so training resumes at this (0-based) epoch index
    history: dict[str, list[float]]
    state: dict[str, Any]

    @property
    def run(self) -> dict[str, str]:
        """MLflow ids of the run that was training: `run_id`, `experiment_id`, `parent_run_id`."""
        return self.state.get("run", {})

    @property
    def origin(self) -> dict[str, Any]:
        """What the training was made from (`train.abandoned_runs`): its config's fingerprint and stage keys."""
        return self.state.get("origin", {})

    @property
    def stopped_early(self) -> bool:
        return bool(self.state["early_stopping"]["stopped"])

    def restore(self, model: keras.Model) -> None:
        """Load weights, optimizer state and seed-generator states into a freshly compiled model."""
        model.optimizer.build(model.trainable_variables)
        if self.path is None:
            return  # the values come from the chief (`distribute.sync_from_chief`)
        model.load_weights(self.path / WEIGHTS)
        for variable, value in zip(rng_variables(model), self.state["rng"], strict=True):
            variable.assign(np.asarray(value, dtype=variable.dtype))

    def best_weights(self) -> list[np.ndarray] | None:
        if self.path is None or not (self.path / BEST).is_file():
            return None
        with np.load(self.path / BEST, allow_pickle=False) as arrays:
            return [arrays[f"w{i}"] for i in range(len(arrays.files))]


class Store:
    """The `epoch-NNN/` checkpoints of one training, newest kept, older ones deleted."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def latest(self) -> Checkpoint | None:
        found = sorted(self.root.glob("epoch-[0-9][0-9][0-9]"), key=lambda p: p.name)
        for path in reversed(found):
            try:
                state = json.loads((path / STATE).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # cannot happen through `save`; a folder edited by hand is passed over
            return Checkpoint(path, state["epoch"], state["history"], state)
        return None

    def save(self, model: keras.Model, state: dict[str, Any], best_weights: list[np.ndarray] | None) -> Path:
        final = self.root / f"epoch-{state['epoch']:03d}"
        tmp = self.root / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_weights(tmp / WEIGHTS)
        if best_weights is not None:
            np.savez(tmp / BEST, **{f"w{i}": w for i, w in enumerate(best_weights)})
        state = {**state, "rng": [np.asarray(v).tolist() for v in rng_variables(model)]}
        (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in self.root.glob("epoch-[0-9][0-9][0-9]"):
            if old.name < final.name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """Keras's `EarlyStopping`, starting from a checkpoint's counters and best weights.

    Keras resets the counters in `on_train_begin`; a resumed training must instead carry on
    with them, or patience would restart from zero after every interruption.
    """

    def __init__(self, resumed: Checkpoint | None, **kwargs):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed is not None:
            saved = self.resumed.state["early_stopping"]
            self.wait, self.best, self.best_epoch = saved["wait"], saved["best"], saved["best_epoch"]
            self.best_weights = self.resumed.best_weights()


class AveragedWeights(keras.callbacks.SwapEMAWeights):
    """Keras's `SwapEMAWeights(swap_on_epoch=True)`: from the end of each epoch to the start of
    the next, the model holds the moving average of its weights (the optimizer's `use_ema`), so
    validation, early stopping's best weights and the saved model are the averaged ones.

    Placed first among the callbacks, so the others see the average at epoch end.
    """

    def __init__(self):
        super().__init__(swap_on_epoch=True)

    @contextlib.contextmanager
    def trained_weights(self):
        """The weights being trained, in the model for the duration (a checkpoint must hold
        those, with the average in the optimizer, to resume exactly)."""
        swapped = self._ema_weights_in_model
        if swapped:
            self._swap_variables()
        try:
            yield
        finally:
            if swapped:
                self._swap_variables()


class EpochCheckpoint(keras.callbacks.Callback):
    """Writes a checkpoint at the end of every epoch whose loss is finite."""

    def __init__(self, store: Store, early_stopping: ResumableEarlyStopping, averaged: AveragedWeights | None = None,
                 origin: dict[str, Any] | None = None):
        super().__init__()
        self.store, self.early_stopping, self.averaged, self.origin = store, early_stopping, averaged, origin
        resumed = early_stopping.resumed
        self.history = {k: list(v) for k, v in resumed.history.items()} if resumed else {}

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            return  # TerminateOnNaN stops here; the last good checkpoint stays the latest
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        es = self.early_stopping
        state = {
            "epoch": epoch + 1,
            "history": self.history,
            "early_stopping": {"wait": es.wait, "best": None if es.best is None else float(es.best),
                               "best_epoch": es.best_epoch, "stopped": bool(self.model.stop_training)},
            "run": tracking.run_reference(),
            "origin": self.origin or {},
        }
        with self.averaged.trained_weights() if self.averaged else contextlib.nullcontext():
            self.store.save(self.model, state, es.best_weights)


def join_history(before: dict[str, list[float]], after: dict[str, list[float]]) -> dict[str, list[float]]:
    """The metrics of the epochs before a resume followed by those after it."""
    keys = list(dict.fromkeys([*before, *after]))
    return {k: [float(v) for v in before.get(k, [])] + [float(v) for v in after.get(k, [])] for k in keys}


def rng_variables(model: keras.Model) -> list:
    """The model's random state: every variable that is not a weight (seed-generator states)."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]
