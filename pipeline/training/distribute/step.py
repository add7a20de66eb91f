"""The replicated training step for strategies Keras's `fit` cannot drive."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from pipeline.training.distribute.sync import collectives


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
        with collectives(f"in epoch {epoch}"):
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
