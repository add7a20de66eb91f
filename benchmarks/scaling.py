
"""Data-parallel scaling: the same model, data and global batch on 1 replica, on N mirrored ones,
and on N worker processes (`multi_worker`, one replica each, on loopback ports).

Trains the SST-2 preset's model (`configs/sst2_local.yaml`, or --config) for the same epochs once
per replica count, each in a fresh process (logical CPUs can only be made before TensorFlow
starts), through the pipeline's own strategy, batches and model (Adam as the preset sets it,
without the moving average of the weights): `model.fit` on one process, the pipeline's own
distributed loop (`distribute.fit`) across workers. Prints real (non-pad) tokens
per second over the training loop, the scaling efficiency (tokens/s of N replicas divided by N
times tokens/s of one) and the validation loss and accuracy after the last epoch, which should
agree: the replicas split each global batch, so they take the same steps.

On a CPU-only machine, N replicas are N logical CPUs sharing the same cores, so no speed-up is
expected: the figure is the overhead. On a GPU host, `--devices GPU` uses the GPUs instead.

    python benchmarks/scaling.py [--config configs/sst2_local.yaml] [--replicas 1 2] [--workers 2] [--epochs 1]
                                 [--devices CPU]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from pipeline.data import splits  # noqa: E402
from pipeline.training import batches, recipe  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "sst2_local.yaml")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to compare")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per replica count")
    parser.add_argument("--devices", choices=["CPU", "GPU"], default="CPU", help="what a replica runs on")
    parser.add_argument("--workdir", type=Path, default=ROOT / "data" / "work" / "bench-scaling",
                        help="where prepare and tokenize outputs are kept (reused between runs)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes for the multi_worker row (0: no such row)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: train with this many replicas
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # internal: one of this many workers
    return parser.parse_args(argv)


def config_for(args: argparse.Namespace, replicas: int, workers: int = 0):
    from pipeline.config import load_config

    devices = ",".join(f"{args.devices}:{i}" for i in range(replicas))
    if workers:
        mode = ["train.distribute=multi_worker"]
    elif replicas == 1:
        mode = ["train.distribute=none"]
    else:
        mode = ["train.distribute=mirrored", f"train.devices={devices}"]
    return load_config(args.config, [*mode, f"train.epochs={args.epochs}"])


def child(args: argparse.Namespace) -> dict:
    """Train with `args.child` replicas (or as one of `args.worker_of` workers) in this process;
    return the figures as a dict."""
    from pipeline import models
    from pipeline.store.workdir import stage_dir
    from pipeline.training import distribute

    config = config_for(args, args.child or 1, workers=args.worker_of or 0)
    distribute.make_logical_cpus(config)
    strategy = distribute.strategy_for(config)
    recipe.setup_runtime(config)
    tokenized = stage_dir(config, args.workdir, "tokenize")
    prepared = stage_dir(config, args.workdir, "prepare")
    made = batches.datasets(config, tokenized, prepared, first_epoch=0)
    train_ds, val_ds = made.train, made.validation
    vocab = json.loads((tokenized / "stats.json").read_text())["vocab_size"]
    with strategy.scope():
        model = models.build_model(config, vocab, len(made.labels))
        model.compile(optimizer=keras.optimizers.Adam(config.train.learning_rate, clipnorm=1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
        model.optimizer.build(model.trainable_variables)
    timer = LoopTimer()
    fit_args = {"epochs": args.epochs, "steps_per_epoch": made.steps_per_epoch, "callbacks": [timer], "verbose": 0}
    if distribute.needs_own_loop(strategy):
        history = distribute.fit(model, strategy, train_ds, val_ds, initial_epoch=0, from_logits=False, **fit_args)
    else:
        history = model.fit(train_ds, validation_data=val_ds, **fit_args).history
    tokens = int(splits.load_split(tokenized, "train")["lengths"].sum()) * args.epochs
    return {"replicas": strategy.num_replicas_in_sync, "strategy": distribute.describe(config, strategy)["strategy"],
            "tokens_per_s": tokens / timer.seconds, "train_seconds": timer.seconds,
            "val_loss": history["val_loss"][-1], "val_accuracy": history["val_accuracy"][-1]}


class LoopTimer(keras.callbacks.Callback):
    """Seconds spent in the training loops, from each epoch's first batch to its last (validation excluded)."""

    seconds = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds += self.end - self.start


def main() -> int:
    args = parse_args()
    if args.child or args.worker_of:
        print(json.dumps(child(args)))
        return 0
    from pipeline.stages import prepare, tokenization
    from pipeline.store.workdir import is_finished, stage_dir

    os.chdir(ROOT)  # the presets name the shipped data relative to the project
    base = config_for(args, 1)
    for stage, module in (("prepare", prepare), ("tokenize", tokenization)):
        if not is_finished(stage_dir(base, args.workdir, stage)):
            module.run(base, args.workdir)
    results = []
    for replicas in args.replicas:
        results.append(run_children([["--child", str(replicas)]], [None]))
    if args.workers:
        from pipeline.tools import launch

        addresses = [f"127.0.0.1:{port}" for port in launch.free_ports(args.workers)]
        results.append(run_children([["--worker-of", str(args.workers)]] * args.workers,
                                    [launch.worker_env(addresses, i) for i in range(args.workers)]))
    if any(r is None for r in results):
        return 1
    print_table(results, args)
    return 0


def run_children(extra_args: list[list[str]], envs: list[dict | None]) -> dict | None:
    """Start this script once per entry, together; the first one's figures (None if any failed)."""
    children = [subprocess.Popen([sys.executable, __file__, *extra, *sys.argv[1:]], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for extra, env in zip(extra_args, envs, strict=True)]
    outputs = [c.communicate() for c in children]
    for c, (_, err) in zip(children, outputs, strict=True):
        if c.returncode:
            sys.stderr.write(err[-3000:])
            return None
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def print_table(results: list[dict], args: argparse.Namespace) -> None:
    one = next((r for r in results if r["replicas"] == 1), None)
    print(f"\n{args.config.name}: {args.epochs} epoch(s), global batch as in the preset, replicas on {args.devices}")
    print(f"{'replicas':>8}  {'strategy':<28}{'tokens/s':>10}  {'efficiency':>10}  {'val_loss':>9}  {'val_acc':>8}")
    for r in results:
        efficiency = f"{r['tokens_per_s'] / (r['replicas'] * one['tokens_per_s']):.2f}" if one else "-"
        print(f"{r['replicas']:>8}  {r['strategy']:<28}{r['tokens_per_s']:>10,.0f}  {efficiency:>10}  "
              f"{r['val_loss']:>9.4f}  {r['val_accuracy']:>8.4f}")
    replicas = " ".join(map(str, args.replicas))
    config = args.config.resolve()
    config = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    print(f"\nreproduce: python benchmarks/scaling.py --config {config} --replicas {replicas} "
          f"--workers {args.workers} --epochs {args.epochs} --devices {args.devices}")


if __name__ == "__main__":
    sys.exit(main())
