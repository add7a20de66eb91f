"""Data-parallel training on `tf.distribute`: which strategy a config asks for, on which devices.

`train.distribute` picks the strategy:
  - `auto`: `MirroredStrategy` over every visible GPU when there are two or more, else none;
  - `none`: TensorFlow's default strategy, one device;
  - `mirrored`: `MirroredStrategy` over all local GPUs, or over `train.devices`
    (`GPU:0,GPU:1`, or `CPU:0,CPU:1`: logical CPUs, made here, for trying it on a laptop);
  - `multi_worker`: `MultiWorkerMirroredStrategy` over the cluster the `TF_CONFIG` environment
    variable describes, as TF launchers and Kubernetes operators set it. Its `TF_CONFIG` is
    read and checked here; training under it needs a step of the pipeline's own (Keras 3's
    `fit` fails under that strategy), which is not built yet, so it stops with a clear line.
`train.batch_size` is the global batch: each replica gets `batch_size / replicas`. Everything
here that can be wrong (a device that does not exist, a batch that does not divide, a missing
or malformed `TF_CONFIG`) is a `ConfigError` raised before any data work.
"""

from __future__ import annotations

import functools
import json
import os
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


@functools.lru_cache(maxsize=4)
def strategy_for(config: Config) -> tf.distribute.Strategy:
    """The strategy `train.distribute` names, checked against the devices and the batch size.

    Made once per process and config: a multi-worker strategy connects to the other workers
    when it is made, and TensorFlow allows that once.
    """
    mode = config.train.distribute
    gpus = tf.config.list_logical_devices("GPU")
    if mode == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("train.distribute=multi_worker needs the TF_CONFIG environment variable; start the "
                              "workers with `pipeline launch --workers N -- run ...` or set TF_CONFIG on each host")
        cluster_from_env()  # a malformed spec fails here with its own message
        # Keras 3's fit fails under this strategy (keras#20585); until the pipeline's own
        # multi-worker step exists, say so before any work rather than fail inside fit.
        raise ConfigError("train.distribute=multi_worker is not available yet: Keras 3's model.fit cannot train "
                          "under MultiWorkerMirroredStrategy (keras#20585); use train.distribute=mirrored on one host")
    elif mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(_mirrored_devices(config) or None)
    elif mode == "auto" and len(gpus) > 1:
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    if config.train.batch_size % replicas:
        raise ConfigError(f"train.batch_size={config.train.batch_size} does not divide among {replicas} replicas; "
                          f"set it to a multiple of {replicas} (it is the global batch)")
    return strategy


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
    workers = cluster_from_env().workers if config.train.distribute == "multi_worker" else 1
    return {"train.distribute": config.train.distribute, "replicas": str(strategy.num_replicas_in_sync),
            "workers": str(workers), "strategy": type(strategy).__name__}
