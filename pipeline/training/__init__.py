"""How a model is trained: its recipe, batches, callbacks, checkpoints, signals, and distribute/."""

