"""Training throughput: the tutorial input path against the pipeline's, side by side.

(a) baseline, as the keras-io and TensorFlow tutorials do it: each epoch re-tokenizes the texts
    in Python, pads every sequence to the longest one, and fits on numpy arrays;
(b) pipeline: texts tokenized once into the token cache, length-bucketed `tf.data` batches
    (right-padded to each batch's own longest row), prefetched.

Throughput is timed over the training loop (first batch to end of epoch) plus, for (a), its
per-epoch tokenization and padding. The wall time of each `fit` call is reported too: Keras
3.15 sometimes stalls about 20 s after the last batch of a numpy-fed `fit` (iterator teardown),
which a tutorial pays once per `fit` call, not once per epoch, so it is kept out of the ratio.

Both train the same model (2-layer bidirectional LSTM, 128 units, one SentencePiece model) on
the same data. Epochs alternate a, b, a, b, ...; the first epoch of each side (tracing) is
discarded and the medians of the rest are reported, in real (non-pad) tokens per second.

    python benchmarks/throughput.py [--data PATH] [--rounds 4] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import models
from pipeline.config import TrainConfig
from pipeline.data import inputs, subwords
from pipeline.data.readers import read_local

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "sst2" / "stsa.binary.train"
DEFAULT_DEV = ROOT.parent / "shared" / "data" / "sst2" / "stsa.binary.dev"
DEFAULT_LM = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LABEL TEXT training file (SST-2 train)")
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV, help="LABEL TEXT file for validation accuracy")
    parser.add_argument("--lm-data", type=Path, default=DEFAULT_LM, help="plain text for the LM figure ('' to skip)")
    parser.add_argument("--rounds", type=int, default=4, help="epochs per side; the first is discarded")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--buckets", type=int, default=TrainConfig.buckets, help="length buckets (pipeline default)")
    parser.add_argument("--lm-steps", type=int, default=20, help="LM training steps timed (after 3 warm-up steps)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def lstm_train_flops(lengths_sum: int, embedding_dim: int, units: int, layers: int, directions: int) -> float:
    """Multiply-add FLOPs to train on `lengths_sum` token positions (backward ~ 2x forward)."""
    per_position = 0.0
    inputs = embedding_dim
    for _ in range(layers):
        per_position += directions * 2 * 4 * (inputs + units) * units
        inputs = units * directions
    return 3 * per_position * lengths_sum


def dense_matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a dense float32 matmul, the machine's practical peak."""
    a = tf.random.normal([size, size])
    b = tf.random.normal([size, size])
    tf.matmul(a, b).numpy()
    start = time.perf_counter()
    for _ in range(repeats):
        tf.matmul(a, b).numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def build_classifier(vocab_size: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    model = models.build_sentiment_lstm(vocab_size, 2, embedding_dim=128, units=128, layers=2, bidirectional=True,
                                        dropout=0.3)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=1.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


@contextlib.contextmanager
def no_gc_pauses():
    """Collect garbage first, then keep the cycle collector off while timing (as `timeit` does):
    with two models' graphs alive, a full collection takes seconds, and would land in whichever
    side happened to be running."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class LoopTimer(keras.callbacks.Callback):
    """Seconds from the first batch of an epoch to its end."""

    def on_train_batch_begin(self, batch, logs=None):
        if batch == 0:
            self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def baseline_epoch(model, sp, texts, labels, batch_size) -> dict:
    """Tutorial path: tokenize in Python, pad everything to the longest sequence, fit numpy."""
    timer = LoopTimer()
    with no_gc_pauses():
        start = time.perf_counter()
        ids = [[subwords.BOS_ID] + sp.encode(text) for text in texts]
        x = keras.utils.pad_sequences(ids, padding="post", value=0)
        prepared = time.perf_counter() - start
        model.fit(x, labels, batch_size=batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[timer])
    batches = -(-len(ids) // batch_size)
    return {"seconds": prepared + timer.seconds, "fit_wall_seconds": time.perf_counter() - start,
            "padded_per_batch": (x.size - int((x != 0).sum())) / batches}


def pipeline_epoch(model, dataset) -> dict:
    timer = LoopTimer()
    with no_gc_pauses():
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False, callbacks=[timer])
    return {"seconds": timer.seconds, "fit_wall_seconds": time.perf_counter() - start}


def padded_per_batch(dataset) -> float:
    padded = batches = 0
    for ids, _ in dataset:
        padded += int(tf.reduce_sum(tf.cast(ids == 0, tf.int32)))
        batches += 1
    return padded / batches


def lm_tokens_per_second(path: Path, steps: int, vocab_size: int = 1000) -> float:
    """Real tokens per second training the Shakespeare preset's LM shape (2x512, windows of 128)."""
    text = path.read_text(encoding="utf-8")
    sp = subwords.from_bytes(subwords.train_sentencepiece(
        [line for line in text.splitlines(keepends=True) if line.strip()], vocab_size=vocab_size,
        model_type="bpe", character_coverage=1.0, lossless=True))
    stream = np.array(subwords.encode(sp, [text])[0], dtype=np.int32)
    dataset = inputs.lm_dataset(stream, 128, 64, shuffle=True).repeat()
    keras.utils.set_random_seed(0)
    model = models.build_language_model_lstm(sp.get_piece_size(), embedding_dim=256, units=512, layers=2)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    return steps * 64 * 128 / (time.perf_counter() - start)


def main() -> int:
    args = parse_args()
    if not args.data.is_file():
        print(f"error: {args.data} not found; pass --data PATH to a LABEL TEXT file", file=sys.stderr)
        return 2
    gpu = models.gpu_visible()
    print(f"device: {'GPU (cuDNN LSTM kernels)' if gpu else 'CPU; no GPU found, so LSTMs use the generic kernel'}")
    train = read_local(args.data, "label_text")
    labels_vocab = sorted(set(train.labels))
    labels = np.array([labels_vocab.index(label) for label in train.labels], dtype=np.int32)
    sp = subwords.from_bytes(subwords.train_sentencepiece(train.texts, vocab_size=args.vocab_size))
    vocab = sp.get_piece_size()

    # The pipeline's token cache: encoded once, as the tokenize stage writes it.
    ids, lengths = subwords.pack(subwords.encode(sp, train.texts))
    arrays = {"ids": ids, "lengths": lengths, "labels": labels}
    boundaries = inputs.bucket_boundaries(lengths, args.buckets)

    def epoch_dataset(epoch: int):
        # As in training: each epoch its own order, fixed by seed and epoch.
        return inputs.classification_dataset(arrays, args.batch_size, boundaries=boundaries, shuffle=True, seed=0,
                                           epochs=range(epoch, epoch + 1))

    real_tokens = int(lengths.sum())

    cache_seconds, encode_seconds = token_cache_timing(sp, train.texts, arrays)
    model_a, model_b = build_classifier(vocab), build_classifier(vocab)
    runs = {"a": [], "b": []}
    for round_ in range(args.rounds):
        runs["a"].append(baseline_epoch(model_a, sp, train.texts, labels, args.batch_size))
        runs["b"].append(pipeline_epoch(model_b, epoch_dataset(round_)))
        a, b = runs["a"][-1], runs["b"][-1]
        print(f"round {round_ + 1}/{args.rounds}: a {a['seconds']:.1f}s (fit {a['fit_wall_seconds']:.1f}s), "
              f"b {b['seconds']:.1f}s (fit {b['fit_wall_seconds']:.1f}s)", flush=True)

    flops_per_epoch = lstm_train_flops(real_tokens, 128, 128, 2, 2)
    peak = dense_matmul_flops()
    results = {"device": "gpu" if gpu else "cpu", "examples": len(labels), "real_tokens_per_epoch": real_tokens,
               "bucket_boundaries": boundaries, "dense_matmul_gflops": peak / 1e9,
               "token_cache_load_seconds": cache_seconds, "python_tokenize_seconds": encode_seconds}
    for side in ("a", "b"):
        seconds = statistics.median(r["seconds"] for r in runs[side][1:])
        results[side] = {
            "median_epoch_seconds": seconds,
            "median_fit_wall_seconds": statistics.median(r["fit_wall_seconds"] for r in runs[side][1:]),
            "real_tokens_per_second": real_tokens / seconds,
            "model_gflops": flops_per_epoch / seconds / 1e9,
            "model_flops_utilisation": flops_per_epoch / seconds / peak,
        }
    results["a"]["padded_positions_per_batch"] = runs["a"][0]["padded_per_batch"]
    results["b"]["padded_positions_per_batch"] = padded_per_batch(epoch_dataset(0))
    results["speedup_b_over_a"] = results["b"]["real_tokens_per_second"] / results["a"]["real_tokens_per_second"]
    if args.dev.is_file():
        results["validation_accuracy_after_equal_epochs"] = validation_accuracy(args.dev, sp, labels_vocab,
                                                                                model_a, model_b)
    if str(args.lm_data) and args.lm_data.is_file():
        results["lm_real_tokens_per_second"] = lm_tokens_per_second(args.lm_data, args.lm_steps)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def token_cache_timing(sp, texts, arrays) -> tuple[float, float]:
    """Seconds to load the token cache (`.npz`, as the tokenize stage writes) vs to re-tokenize."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.npz"
        np.savez(path, **arrays)
        start = time.perf_counter()
        with np.load(path) as cached:
            {key: cached[key] for key in cached.files}
        load = time.perf_counter() - start
    start = time.perf_counter()
    [[subwords.BOS_ID] + sp.encode(text) for text in texts]
    return load, time.perf_counter() - start


def validation_accuracy(path: Path, sp, labels_vocab, model_a, model_b) -> dict:
    dev = read_local(path, "label_text")
    y = np.array([labels_vocab.index(label) for label in dev.labels])
    ids, lengths = subwords.pack(subwords.encode(sp, dev.texts))
    batches = inputs.ordered_batches({"ids": ids, "lengths": lengths}, 64)
    return {side: float((model.predict(batches, verbose=0).argmax(1) == y).mean())
            for side, model in (("a", model_a), ("b", model_b))}


def print_table(results: dict, args: argparse.Namespace) -> None:
    a, b = results["a"], results["b"]
    rows = [
        ("median epoch, training loop (s)", f"{a['median_epoch_seconds']:.1f}", f"{b['median_epoch_seconds']:.1f}"),
        ("median wall time of fit() (s)", f"{a['median_fit_wall_seconds']:.1f}", f"{b['median_fit_wall_seconds']:.1f}"),
        ("real tokens / s", f"{a['real_tokens_per_second']:,.0f}", f"{b['real_tokens_per_second']:,.0f}"),
        ("padded positions / batch", f"{a['padded_positions_per_batch']:,.0f}",
         f"{b['padded_positions_per_batch']:,.0f}"),
        ("model GFLOP/s (real tokens)", f"{a['model_gflops']:.2f}", f"{b['model_gflops']:.2f}"),
        ("model FLOP utilisation", f"{a['model_flops_utilisation']:.1%}", f"{b['model_flops_utilisation']:.1%}"),
    ]
    if "validation_accuracy_after_equal_epochs" in results:
        acc = results["validation_accuracy_after_equal_epochs"]
        rows.append((f"validation accuracy after {args.rounds} epochs", f"{acc['a']:.4f}", f"{acc['b']:.4f}"))
    print()
    print(f"{'':34} {'(a) baseline':>14} {'(b) pipeline':>14}")
    for name, left, right in rows:
        print(f"{name:34} {left:>14} {right:>14}")
    print(f"\nspeed-up (b)/(a), real tokens/s: {results['speedup_b_over_a']:.2f}x")
    print(f"dense matmul 2048^3: {results['dense_matmul_gflops']:.1f} GFLOP/s; "
          f"peak RSS {results['peak_rss_mib']:.0f} MiB")
    if "lm_real_tokens_per_second" in results:
        print(f"LM (2x512 LSTM, windows of 128, batch 64): {results['lm_real_tokens_per_second']:,.0f} real tokens/s")
    print(f"token cache: loads in {results['token_cache_load_seconds'] * 1000:.1f} ms; "
          f"re-tokenizing in Python takes {results['python_tokenize_seconds'] * 1000:.0f} ms per epoch")
    print(f"\nreproduce: python benchmarks/throughput.py --data {args.data} --rounds {args.rounds}"
          f" --batch-size {args.batch_size} --buckets {args.buckets}")


if __name__ == "__main__":
    sys.exit(main())
