"""Data-parallel training on `tf.distribute`: strategies, worker roles, the custom step."""

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
