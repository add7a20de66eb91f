"""Data-parallel training on `tf.distribute`: which strategy a config asks for, on which devices,
and the training loop for the strategy Keras's own `fit` cannot drive.

`train.distribute` picks the strategy:
  - `auto`: `MultiWorkerMirroredStrategy` when `TF_CONFIG` lists two or more workers, else
    `MirroredStrategy` over every visible GPU when there are two or more, else none;
  - `none`: TensorFlow's default strategy, one device;
  - `mirrored`: `MirroredStrategy` over all local GPUs, or over `train.devices`
    (`GPU:0,GPU:1`, or `CPU:0,CPU:1`: logical CPUs, made here, for trying it on a laptop);
  - `multi_worker`: `MultiWorkerMirroredStrategy` over the cluster the `TF_CONFIG` environment
    variable describes, as TF launchers and Kubernetes operators set it. Keras 3's `fit` fails
    under it (keras#20585), so `fit` below drives the same callbacks from a replicated step.
`train.batch_size` is the global batch: each replica gets `batch_size / replicas`. Everything
here that can be wrong (a device that does not exist, a batch that does not divide, a missing
or malformed `TF_CONFIG`) is a `ConfigError` raised before any data work.

Under `multi_worker`, worker 0 is the chief: it alone keeps checkpoints, and a resumed training
starts from the chief's, sent to the others (`resume_point`, `sync_from_chief`). Every step's
collectives time out after `train.worker_timeout` seconds, and TensorFlow's health check aborts
them when a peer's process is gone, so a lost worker stops the others instead of hanging them.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipeline.config import Config
from pipeline.errors import ConfigError, TrainingError

log = logging.getLogger(__name__)
# Waiting for a slower worker to finish its data preparation has no time limit: a worker whose
# process is gone is caught by TensorFlow's health check (within about a minute) instead.
_PATIENT = 24 * 3600


@dataclass(frozen=True)
class Cluster:
    """This process's place in a `TF_CONFIG` cluster."""

    workers: int
    index: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def cluster_from_env(environ: dict[str, str] | None = None) -> Cluster:
    """The worker count and this worker's index from `TF_CONFIG`; one worker when it is unset."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    if not raw:
        return Cluster(1, 0)
    fix = 'set TF_CONFIG to {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'
    try:
        spec = json.loads(raw)
        workers = spec["cluster"]["worker"]
        task = spec["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"TF_CONFIG is not a worker cluster spec ({raw[:80]!r}); {fix}") from None
    if task.get("type", "worker") != "worker" or not isinstance(workers, list) or not 0 <= index < len(workers):
        raise ConfigError(f"TF_CONFIG task {task} is not one of its {len(workers)} workers; {fix}")
    return Cluster(len(workers), index)


def requested_devices(config: Config) -> list[str]:
    """`train.devices` as a list of names such as `CPU:0`, without blanks."""
    return [name.strip() for name in config.train.devices.split(",") if name.strip()]


def make_logical_cpus(config: Config) -> None:
    """Split the CPU into as many logical devices as `train.devices` names CPUs.

    TensorFlow accepts this only before it first runs an op, so the CLI calls it first thing.
    """
    wanted = [d for d in requested_devices(config) if d.upper().startswith("CPU:")]
    if config.train.distribute != "mirrored" or len(wanted) < 2:
        return
    (cpu,) = tf.config.list_physical_devices("CPU")[:1]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * len(wanted))
    except RuntimeError:
        if len(tf.config.list_logical_devices("CPU")) < len(wanted):
            raise ConfigError(f"train.devices={config.train.devices}: TensorFlow started before the logical CPUs "
                              "could be made; run the train stage in a new process") from None


def mode(config: Config) -> str:
    """`train.distribute` with `auto` resolved as far as the environment decides it: `multi_worker`
    under a `TF_CONFIG` of two or more workers (GPUs are counted when the strategy is made)."""
    chosen = config.train.distribute
    if chosen == "auto" and cluster_from_env().workers > 1:
        return "multi_worker"
    return chosen


def role(config: Config) -> Cluster:
    """This process's place among the workers that train `config`: one worker unless multi_worker."""
    return cluster_from_env() if mode(config) == "multi_worker" else Cluster(1, 0)


@functools.lru_cache(maxsize=4)
def strategy_for(config: Config) -> tf.distribute.Strategy:
    """The strategy `train.distribute` names, checked against the devices and the batch size.

    Made once per process and config: a multi-worker strategy connects to the other workers
    when it is made, and TensorFlow allows that once.
    """
    chosen = mode(config)
    if chosen == "multi_worker":  # first: TensorFlow must not have started (listing devices starts it)
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribute=multi_worker needs the TF_CONFIG environment variable; start the "
                              "workers with `pipeline launch --workers N -- run ...` or set TF_CONFIG on each host")
        strategy = _join_cluster(config, cluster_from_env())
    elif chosen == "mirrored":
        strategy = tf.distribute.MirroredStrategy(_mirrored_devices(config) or None)
    elif chosen == "auto" and len(tf.config.list_logical_devices("GPU")) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        raise ConfigError(f"train.batch_size={config.train.batch_size} does not divide among {replicas} replicas; "
                          f"set it to a multiple of {replicas} (it is the global batch)")
    return strategy


def _join_cluster(config: Config, cluster: Cluster) -> tf.distribute.Strategy:
    """`MultiWorkerMirroredStrategy`, made once every worker of the cluster has come up.

    TensorFlow waits for the others without a limit, holding the interpreter (no Python thread or
    signal handler runs meanwhile), so a watchdog process ends this one after `train.worker_timeout`
    seconds, with one line saying which cluster it waited for. Nothing has been written by then.
    """
    timeout = config.train.worker_timeout
    peers = json.loads(os.environ["TF_CONFIG"])["cluster"]["worker"]
    message = (f"Error: worker {cluster.index} could not reach the other workers ({', '.join(peers)}) within "
               f"train.worker_timeout={timeout:g}s; start the same command on every worker (TF_CONFIG task index "
               "0 to N-1), or raise train.worker_timeout")
    watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout), message])
    try:
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    finally:
        watchdog.kill()
        watchdog.wait()


# Sleeps, then prints its message and kills the process that started it, if that is still its parent.
_WATCHDOG = """
import os, signal, sys, time
parent, timeout, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
time.sleep(timeout)
if os.getppid() == parent:
    print(message, file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
"""


def _mirrored_devices(config: Config) -> list[str]:
    """The local devices `train.devices` names, each checked to exist."""
    names = requested_devices(config)
    existing = {d.name.split("device:")[-1].upper(): d.name for d in tf.config.list_logical_devices()}
    missing = [name for name in names if name.upper() not in existing]
    if missing:
        raise ConfigError(f"train.devices names {', '.join(missing)}, which this machine does not have "
                          f"(devices: {', '.join(sorted(existing))}); set train.devices to some of them")
    return [existing[name.upper()] for name in names]


def describe(config: Config, strategy: tf.distribute.Strategy) -> dict[str, str]:
    """What the parent run records about the distribution: mode, replicas, workers, strategy class."""
    workers = cluster_from_env().workers if needs_own_loop(strategy) else 1
    return {"train.distribute": mode(config), "replicas": str(strategy.num_replicas_in_sync),
            "workers": str(workers),
            # TensorFlow's class behind the public MultiWorkerMirroredStrategy is named CollectiveAllReduceStrategy.
            "strategy": "MultiWorkerMirroredStrategy" if needs_own_loop(strategy) else type(strategy).__name__}


def needs_own_loop(strategy: tf.distribute.Strategy) -> bool:
    """Whether Keras 3's `fit` cannot train under `strategy` (keras#20585), so `fit` below must."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints and outputs: always, except on workers 1.. of a cluster."""
    return not needs_own_loop(strategy) or strategy.cluster_resolver.task_id == 0


class NothingToTrain(Exception):
    """Raised on workers 1.. when the chief already has this training's output and trains nothing."""


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
    from pipeline.checkpoints import Checkpoint
    from pipeline.tokenize import load_split

    digest = float(zlib.crc32(np.ascontiguousarray(load_split(tokenized, "train")["ids"]).tobytes()))
    saved = latest.state["early_stopping"] if latest else {}
    best = saved.get("best")
    chief = _start_message(strategy, [True, latest is not None, latest.epoch if latest else 0,
                                      bool(saved.get("stopped")), saved.get("wait", 0),
                                      math.nan if best is None else best, saved.get("best_epoch", 0), digest])
    training, resumed, epoch, stopped, wait, best, best_epoch, chief_digest = chief
    if not training:
        raise NothingToTrain()
    with _collectives("before training"):
        differ = _sum_over_workers(strategy, float(chief_digest != digest))
    if differ:
        raise TrainingError(f"{int(differ)} worker(s) tokenized the training split differently from worker 0; "
                            "give every worker the same data and config (and the same package versions)")
    if is_chief(strategy) or not resumed:
        return latest
    state = {"epoch": int(epoch), "early_stopping": {"stopped": bool(stopped), "wait": int(wait),
                                                     "best": None if math.isnan(best) else float(best),
                                                     "best_epoch": int(best_epoch)}}
    return Checkpoint(None, int(epoch), {}, state)


def skip_training(strategy: tf.distribute.Strategy) -> None:
    """On the chief, when this training's output exists already: tell the other workers, which
    wait in `resume_point`, that there is nothing to train."""
    if needs_own_loop(strategy):
        _start_message(strategy, [False] + [0] * 7)


def _start_message(strategy: tf.distribute.Strategy, values: list) -> np.ndarray:
    """The chief's `values` on every worker: the first collective of a training."""
    with _collectives("before training"):
        return _from_chief(strategy, [tf.constant(np.asarray(values, np.float64))])[0].numpy()


@contextlib.contextmanager
def _collectives(phase: str) -> Iterator[None]:
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
    from pipeline.checkpoints import rng_variables

    variables = [*model.weights, *model.optimizer.variables, *rng_variables(model)]
    with _collectives("before training"):
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


def fit(model, strategy: tf.distribute.Strategy, train_ds: tf.data.Dataset, val_ds: tf.data.Dataset, *,
        epochs: int, initial_epoch: int, steps_per_epoch: int, callbacks: list, loss,
        verbose: int) -> dict[str, list[float]]:
    """`model.fit`'s loop, for a strategy whose `fit` fails: the same callbacks, in the same order.

    Every global batch is split among all replicas of all workers (`experimental_distribute_dataset`
    with data sharding), as `fit` splits it under `MirroredStrategy`; a step's loss is the mean over
    the global batch's rows (tokens for a language model), so the step is the single-device one.
    Epoch and validation metrics are sums over every row, reduced across workers, so each worker
    logs the same numbers and early stopping decides the same on all of them.

    Args:
        loss: the training loss with `reduction=None` (one value per row, or per token).

    Returns:
        The metrics of each epoch run, as `History.history` holds them.
    """
    import keras

    steps = _Steps(model, strategy, loss)
    train_batches = iter(strategy.experimental_distribute_dataset(_sharded_by_data(train_ds)))
    val_batches = strategy.experimental_distribute_dataset(_sharded_by_data(val_ds))
    hooks = keras.callbacks.CallbackList(callbacks, add_progbar=verbose > 0, model=model, verbose=verbose,
                                         epochs=epochs, steps=steps_per_epoch)
    history: dict[str, list[float]] = {}
    model.stop_training = False
    hooks.on_train_begin()
    logs: dict[str, float] = {}
    for epoch in range(initial_epoch, epochs):
        with _collectives(f"in epoch {epoch}"):
            hooks.on_epoch_begin(epoch)
            logs = _train_epoch(steps, train_batches, steps_per_epoch, hooks)
            hooks.on_test_begin()
            val_logs = _means(sum((steps.evaluate(batch).numpy() for batch in val_batches), np.zeros(3)))
            hooks.on_test_end(val_logs)
            logs.update({f"val_{name}": value for name, value in val_logs.items()})
            hooks.on_epoch_end(epoch, logs)
            for name, value in logs.items():
                history.setdefault(name, []).append(value)
            if model.stop_training:
                break
    if epochs > initial_epoch:
        model.optimizer.finalize_variable_values(model.trainable_weights)  # as fit does (moving average)
    hooks.on_train_end(logs)
    return history


def _train_epoch(steps: _Steps, batches, count: int, hooks) -> dict[str, float]:
    totals = np.zeros(3)
    for step in range(count):
        hooks.on_train_batch_begin(step)
        totals += steps.train(next(batches)).numpy()
        hooks.on_train_batch_end(step, _means(totals))
        if steps.model.stop_training:
            break
    return _means(totals)


class _Steps:
    """The replicated train and evaluation steps; each returns [loss sum, correct, rows] over all replicas."""

    def __init__(self, model, strategy: tf.distribute.Strategy, loss_fn):
        self.model, self.strategy, self.loss_fn = model, strategy, loss_fn
        self.train = tf.function(lambda batch: self._reduce(self._train_replica, batch))
        self.evaluate = tf.function(lambda batch: self._reduce(self._eval_replica, batch))

    def _reduce(self, replica_fn, batch):
        per_replica = self.strategy.run(replica_fn, args=batch)
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def _train_replica(self, ids, targets):
        context = tf.distribute.get_replica_context()
        with tf.GradientTape() as tape:
            outputs = self.model(ids, training=True)
            per_unit = tf.cast(self.loss_fn(targets, outputs), tf.float32)
            # The mean over the global batch: the replicas' gradients are summed in apply_gradients.
            units = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(tf.size(per_unit), tf.float32))
            loss = tf.reduce_sum(per_unit) / tf.maximum(units, 1.0)
            scaled = self.model.optimizer.scale_loss(loss)  # loss scaling under mixed precision
        gradients = tape.gradient(scaled, self.model.trainable_variables)
        self.model.optimizer.apply_gradients(zip(gradients, self.model.trainable_variables, strict=True))
        return self._sums(per_unit, outputs, targets)

    def _eval_replica(self, ids, targets):
        outputs = self.model(ids, training=False)
        return self._sums(self.loss_fn(targets, outputs), outputs, targets)

    @staticmethod
    def _sums(per_unit, outputs, targets):
        if outputs.shape.rank == targets.shape.rank + 2:  # an ensemble's members: score their mean
            outputs = tf.reduce_mean(outputs, axis=1)
        correct = tf.cast(tf.argmax(outputs, axis=-1, output_type=tf.int32) == tf.cast(targets, tf.int32), tf.float32)
        return tf.stack([tf.reduce_sum(tf.cast(per_unit, tf.float32)), tf.reduce_sum(correct),
                         tf.cast(tf.size(per_unit), tf.float32)])


def _sharded_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    # Each worker reads every global batch and keeps its replicas' rows: length grouping survives,
    # and every row of a split is seen exactly once.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def _means(totals: np.ndarray) -> dict[str, float]:
    loss, correct, count = (float(v) for v in totals)
    return {"loss": loss / max(count, 1.0), "accuracy": correct / max(count, 1.0)}
