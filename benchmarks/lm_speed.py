"""Seconds per training step of the language-model preset, compile settings side by side.

Keras's `jit_compile="auto"` turns XLA off on a machine without a GPU; a single run on this
2-core machine gave 2.05 and 3.41 s/step for the same setting, so one measurement says
nothing. This script builds one model per setting (the `configs/text_local.yaml` shape by
default: 2 x LSTM(512), embedding 256, vocabulary 1000, batch 64, 128 tokens, states carried
as `train.stateful` carries them), traces each once, then times `--steps` steps of each in
turn, `--rounds` times, so a change in the machine's load hits every setting alike. Reports the
median and the spread of each setting's rounds. The data are random ids: speed does not
depend on them.

    python benchmarks/lm_speed.py [--rounds 4] [--steps 8] [--settings jit_off,jit_on,spe4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from pipeline import models
from pipeline.models import stateful

SETTINGS = {
    "jit_off": {"jit_compile": False},
    "jit_on": {"jit_compile": True},
    "spe4": {"jit_compile": False, "steps_per_execution": 4},
}


def build(setting: dict, args) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = models.build_language_model_lstm(args.vocab, embedding_dim=args.embedding_dim, units=args.units,
                                             layers=args.layers, dropout=0.1)
    if args.stateful:
        model = stateful.with_carried_state(model, args.batch_size)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **setting)
    return model


def batches(args, steps: int) -> tf.data.Dataset:
    ids = np.random.default_rng(0).integers(4, args.vocab, size=(steps * args.batch_size, args.sequence_length + 1))
    ds = tf.data.Dataset.from_tensor_slices(ids.astype(np.int32)).batch(args.batch_size, drop_remainder=True)
    return ds.map(lambda w: (w[:, :-1], w[:, 1:])).cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--settings", default="jit_off,jit_on")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--sequence-length", type=int, default=128)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embedding-dim", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--no-stateful", dest="stateful", action="store_false")
    args = parser.parse_args()
    names = args.settings.split(",")
    data = batches(args, args.steps)
    built = {name: build(SETTINGS[name], args) for name in names}
    for model in built.values():
        model.fit(data, epochs=1, verbose=0)  # tracing and XLA compilation, not timed
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name in names:
            start = time.perf_counter()
            built[name].fit(data, epochs=1, verbose=0)
            seconds[name].append((time.perf_counter() - start) / args.steps)
    for name in names:
        rounds = ", ".join(f"{s:.2f}" for s in seconds[name])
        print(f"{name:8s} median {statistics.median(seconds[name]):.2f} s/step  (rounds: {rounds})")


if __name__ == "__main__":
    main()
