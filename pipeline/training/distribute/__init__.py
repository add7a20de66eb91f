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
    under it (keras#20585), so `step.fit` drives the same callbacks from a replicated step.
`train.batch_size` is the global batch: each replica gets `batch_size / replicas`. Everything
here that can be wrong (a device that does not exist, a batch that does not divide, a missing
or malformed `TF_CONFIG`) is a `ConfigError` raised before any data work.

Under `multi_worker`, worker 0 is the chief: it alone keeps checkpoints, and a resumed training
starts from the chief's, sent to the others (`resume_point`, `sync_from_chief`). Every step's
collectives time out after `train.worker_timeout` seconds, and TensorFlow's health check aborts
them when a peer's process is gone, so a lost worker stops the others instead of hanging them.
"""

from pipeline.training.distribute.cluster import (
    Cluster,
    NothingToTrain,
    cluster_from_env,
    describe,
    is_chief,
    make_logical_cpus,
    mode,
    needs_own_loop,
    requested_devices,
    role,
    strategy_for,
)
from pipeline.training.distribute.step import fit
from pipeline.training.distribute.sync import resume_point, skip_training, sync_from_chief, training_over

__all__ = [
    "Cluster", "NothingToTrain", "cluster_from_env", "describe", "fit", "is_chief", "make_logical_cpus", "mode",
    "needs_own_loop", "requested_devices", "resume_point", "role", "skip_training", "strategy_for",
    "sync_from_chief", "training_over",
]
