"""What workers tell each other: the resume point, the chief's weights."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.errors import TrainingError
from pipeline.training.distribute.cluster import NothingToTrain, is_chief, needs_own_loop

# Waiting for a slower worker to finish its data preparation has no time limit: a worker whose
# process is gone is caught by TensorFlow's health check (within about a minute) instead.
_PATIENT = 24 * 3600


@dataclass(frozen=True)
class StartMessage:
    """What the chief tells every worker before a training, sent as one float64 vector, field by field:
    whether there is anything to train, where to resume (epoch and early stopping's counters), and a
    digest of the chief's training tokens, which every worker compares with its own."""

    training: bool
    resumed: bool = False
    epoch: int = 0
    stopped: bool = False
    wait: int = 0
    best: float | None = None  # sent as NaN when there is no best value yet
    best_epoch: int = 0
    digest: float = 0.0

    def vector(self) -> np.ndarray:
        return np.asarray([math.nan if v is None else float(v) for v in dataclasses.astuple(self)], np.float64)

    @classmethod
    def from_vector(cls, vector: np.ndarray) -> StartMessage:
        values = dict(zip((f.name for f in dataclasses.fields(cls)), vector.tolist(), strict=True))
        return cls(training=bool(values["training"]), resumed=bool(values["resumed"]), epoch=int(values["epoch"]),
                   stopped=bool(values["stopped"]), wait=int(values["wait"]),
                   best=None if math.isnan(values["best"]) else values["best"], best_epoch=int(values["best_epoch"]),
                   digest=values["digest"])


def resume_point(strategy: tf.distribute.Strategy, latest, tokenized: Path):
    """The checkpoint every worker resumes from: the chief's, whatever the others have on disk.

    `latest` is this process's newest checkpoint (the chief's is the only one that counts); the
    others get its epoch and early-stopping counters, and `sync_from_chief` later sends its
    weights. `tokenized` is this worker's tokenize output: workers that tokenized the training
    split differently would train on different tokens, so that stops every worker here with one line.

    Returns:
        `latest` on the chief and on a single process; elsewhere a `Checkpoint` without files.
    Raises:
        NothingToTrain: on workers 1.., when the chief called `skip_training` instead.
    """
    if not needs_own_loop(strategy):
        return latest
    from pipeline.data.splits import load_split
    from pipeline.training.checkpoints import Checkpoint

    digest = float(zlib.crc32(np.ascontiguousarray(load_split(tokenized, "train")["ids"]).tobytes()))
    saved = latest.state["early_stopping"] if latest else {}
    mine = StartMessage(training=True, resumed=latest is not None, epoch=latest.epoch if latest else 0,
                        stopped=bool(saved.get("stopped")), wait=saved.get("wait", 0), best=saved.get("best"),
                        best_epoch=saved.get("best_epoch", 0), digest=digest)
    chief = _start_message(strategy, mine)
    if not chief.training:
        raise NothingToTrain()
    with collectives("before training"):
        differ = _sum_over_workers(strategy, float(chief.digest != digest))
    if differ:
        raise TrainingError(f"{int(differ)} worker(s) tokenized the training split differently from worker 0; "
                            "give every worker the same data and config (and the same package versions)")
    if is_chief(strategy) or not chief.resumed:
        return latest
    state = {"epoch": chief.epoch, "early_stopping": {"stopped": chief.stopped, "wait": chief.wait,
                                                      "best": chief.best, "best_epoch": chief.best_epoch}}
    return Checkpoint(None, chief.epoch, {}, state)


def skip_training(strategy: tf.distribute.Strategy) -> None:
    """On the chief, when this training's output exists already: tell the other workers, which
    wait in `resume_point`, that there is nothing to train."""
    if needs_own_loop(strategy):
        _start_message(strategy, StartMessage(training=False))


def _start_message(strategy: tf.distribute.Strategy, message: StartMessage) -> StartMessage:
    """The chief's `message` on every worker: the first collective of a training."""
    with collectives("before training"):
        return StartMessage.from_vector(_from_chief(strategy, [tf.constant(message.vector())])[0].numpy())


@contextlib.contextmanager
def collectives(phase: str) -> Iterator[None]:
    """TensorFlow's errors for a worker that went missing, as one `TrainingError` line."""
    message = None
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError) as error:
        message = f"{_missing_worker(error)} {phase}; this worker stops too. " \
                  "Run the same command on every worker again to resume from the chief's last checkpoint"
    if message:
        # The failed step's frames hold a thread pool TensorFlow did not close; freed now, not at exit
        # (where it would print a traceback of its own).
        gc.collect()
        raise TrainingError(message)


def _missing_worker(error: tf.errors.OpError) -> str:
    """Which worker a collective's error blames, and why, in a few words."""
    text = error.message
    peer = (re.search(r"unhealthy[^\n]*\n/job:worker/replica:\d+/task:(\d+)", text)
            or re.search(r"remote target /job:worker/replica:\d+/task:(\d+)", text))
    who = f"worker {peer.group(1)}" if peer else "another worker"
    if "heartbeats" in text:
        return f"{who} stopped sending heartbeats (its process is gone)"
    if "Socket closed" in text or "Connection reset" in text or "failed to connect" in text.lower():
        return f"{who} closed its connection (its process is gone)"
    if isinstance(error, tf.errors.DeadlineExceededError):
        return f"{who} did not answer within train.worker_timeout"
    first = (text.strip().splitlines() or [type(error).__name__])[0]
    return f"{who} failed ({type(error).__name__}: {first[:160]})"


def sync_from_chief(strategy: tf.distribute.Strategy, model) -> None:
    """Give every worker the chief's weights, optimizer state and random state (after a resume,
    which only the chief could read from disk)."""
    if not needs_own_loop(strategy):
        return
    from pipeline.training.checkpoints import rng_variables

    variables = [*model.weights, *model.optimizer.variables, *rng_variables(model)]
    with collectives("before training"):
        values = _from_chief(strategy, [v.value for v in variables])
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _from_chief(strategy: tf.distribute.Strategy, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
    """Worker 0's `tensors` on every worker: a sum in which the other workers add zeros (exact).

    Collectives carry floats and 64-bit integers, so other types travel as int64; one all-reduce
    per type, since TensorFlow packs each into one buffer.
    """
    wire = [t if t.dtype.is_floating else tf.cast(t, tf.int64) for t in tensors]
    groups: dict[tf.DType, list[int]] = {}
    for index, tensor in enumerate(wire):
        groups.setdefault(tensor.dtype, []).append(index)

    def replica(values):
        context = tf.distribute.get_replica_context()
        first = context.replica_id_in_sync_group == 0
        summed = {}
        for indices in groups.values():
            mine = [values[i] * tf.cast(first, values[i].dtype) for i in indices]
            summed.update(zip(indices, context.all_reduce(tf.distribute.ReduceOp.SUM, mine, options=_patient()),
                              strict=True))
        return [summed[i] for i in range(len(values))]

    reduced = tf.function(lambda values: strategy.run(replica, args=(values,)))(wire)
    local = [strategy.experimental_local_results(value)[0] for value in reduced]
    return [tf.cast(v, t.dtype) for v, t in zip(local, tensors, strict=True)]


def _sum_over_workers(strategy: tf.distribute.Strategy, value: float) -> float:
    """`value` summed over the workers: each of a worker's local replicas adds its share."""
    share = value / len(strategy.extended.worker_devices)

    def replica(x):
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(x), _patient())

    total = tf.function(lambda x: strategy.run(replica, args=(x,)))(tf.constant([share], tf.float64))
    return round(float(strategy.experimental_local_results(total)[0][0]), 6)


def _patient() -> tf.distribute.experimental.CommunicationOptions:
    return tf.distribute.experimental.CommunicationOptions(timeout_seconds=_PATIENT)


class _QuietHealthCheck(logging.Filter):
    """Drops TensorFlow's "peer is down" lines once training is over: the other workers exit
    when it ends, while the chief goes on to evaluate and export."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("seems down" in message or "check alive" in message)


def training_over(strategy: tf.distribute.Strategy) -> None:
    """Mark this worker's part in the cluster done (see `_QuietHealthCheck`)."""
    if needs_own_loop(strategy):
        logging.getLogger("tensorflow").addFilter(_QuietHealthCheck())
