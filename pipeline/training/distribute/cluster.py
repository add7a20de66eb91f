"""Which strategy a config asks for, on which devices and workers."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import tensorflow as tf

from pipeline.config import Config
from pipeline.errors import ConfigError


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
    return [name.strip() for name in config.train.devices if name.strip()]


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
            raise ConfigError(f"train.devices={','.join(config.train.devices)}: TensorFlow started before the "
                              "logical CPUs could be made; run the train stage in a new process") from None


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
