"""Serving throughput: `pipeline serve` (MLflow's scoring server) under a burst of concurrent clients.

Starts `pipeline serve MODEL` on a free port of 127.0.0.1 (or uses the server at --url), warms it
up with one request of each shape, then sends --requests POSTs to /invocations from --clients
threads: single texts and batches of --batch-size, alternating, drawn with a fixed seed from
texts that include empty and non-ASCII ones. The whole burst is bounded by --timeout seconds; a
request not answered by then counts as an error, as do non-2xx answers, exceptions and answers
with the wrong number of predictions. Prints requests/s, texts/s, p50/p99 latency and the error
count, and the command to reproduce; exits 1 if there was any error. A server it started is
stopped with its whole process group.

    python benchmarks/serving.py [--model models/<run>/<version>] [--requests 400] [--clients 8]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from pipeline.errors import ExportError
from pipeline.tools import predict
from pipeline.tools.serving import stop_process_group

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TEXTS = ["a gripping, funny film", "flat and lifeless", "", "   ", "an utterly moving story, beautifully acted",
         "caf\u00e9 na\u00efve \u00fcber \u00e7a va", "\u65e5\u672c\u8a9e\u306e\u6620\u753b \U0001f600",
         "\u0444\u0438\u043b\u044c\u043c \u0445\u043e\u0440\u043e\u0448\u0438\u0439", "boring . " * 60,
         "not bad at all , and at times great"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="sentiment export to serve (default: the newest under models/)")
    parser.add_argument("--url", help="benchmark the server already running here instead of starting one")
    parser.add_argument("--requests", type=int, default=400, help="requests in the burst")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--batch-size", type=int, default=32, help="texts in a batch request (others hold one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds the whole burst may take")
    parser.add_argument("--start-timeout", type=float, default=180.0, help="seconds the server may take to start")
    parser.add_argument("--seed", type=int, default=0, help="fixes which texts each request carries")
    return parser.parse_args()


def newest_sentiment_export(models: Path) -> Path | None:
    """The most recently written sentiment version folder under `models/<run>/`, or None."""
    found = []
    for run in (p for p in models.glob("*") if p.is_dir()):
        try:
            path, info = predict.resolve_export(run)
        except ExportError:
            continue
        if info.get("task") == "sentiment":
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def start_server(model: Path, log_path: Path, timeout: float) -> tuple[str, subprocess.Popen]:
    """`pipeline serve MODEL` on a free loopback port, in a process group of its own; returns once it answers."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port = sock.getsockname()[1]
    command = [str(Path(sys.executable).with_name("pipeline")), "serve", str(model), "--port", str(port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return url, process
        except requests.RequestException:
            time.sleep(0.25)
    stop_process_group(process)
    tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
    raise RuntimeError(f"`pipeline serve` did not answer on {url} within {timeout:.0f} s:\n{tail}")


def payloads(count: int, batch_size: int, seed: int) -> list[list[str]]:
    """The texts of each request: single texts and batches, alternating, drawn from `TEXTS`."""
    rng = random.Random(seed)
    return [rng.choices(TEXTS, k=1 if i % 2 == 0 else batch_size) for i in range(count)]


def send(session: requests.Session, url: str, texts: list[str], deadline: float) -> tuple[float, str | None]:
    """POST one request; its latency in seconds and what went wrong, if anything."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return 0.0, "not sent: the burst's --timeout had passed"
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}})
    start = time.perf_counter()
    try:
        response = session.post(f"{url}/invocations", data=body.encode("utf-8"), timeout=remaining,
                                headers={"Content-Type": "application/json"})
    except requests.RequestException as error:
        return time.perf_counter() - start, type(error).__name__
    latency = time.perf_counter() - start
    if not response.ok:
        return latency, f"HTTP {response.status_code}: {response.text[:200]}"
    if len(response.json()["predictions"]) != len(texts):
        return latency, f"{len(response.json()['predictions'])} predictions for {len(texts)} texts"
    return latency, None


def burst(url: str, batches: list[list[str]], clients: int, timeout: float) -> dict:
    """Send `batches` from `clients` threads, each with its own keep-alive session; gather the figures."""
    local = threading.local()

    def one(texts: list[str]) -> tuple[float, str | None]:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return send(local.session, url, texts, deadline)

    deadline = time.monotonic() + timeout
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, batches))
    seconds = time.perf_counter() - start
    answered = [(latency, len(texts)) for (latency, error), texts in zip(results, batches, strict=True) if not error]
    return {"seconds": seconds, "results": results, "answered": answered,
            "texts": sum(n for _, n in answered), "errors": [error for _, error in results if error]}


def print_table(figures: dict, args: argparse.Namespace, target: str) -> None:
    latencies = {"all": [lat for lat, _ in figures["answered"]],
                 "single text": [lat for lat, n in figures["answered"] if n == 1],
                 f"batch of {args.batch_size}": [lat for lat, n in figures["answered"] if n > 1]}
    rows = [("requests answered", f"{len(figures['answered'])} of {args.requests}"),
            ("requests / s", f"{len(figures['answered']) / figures['seconds']:,.1f}"),
            ("texts / s", f"{figures['texts'] / figures['seconds']:,.0f}")]
    for name, values in latencies.items():
        if values:
            p50, p99 = np.percentile(np.array(values) * 1000, [50, 99])
            rows.append((f"p50 / p99 latency, {name} (ms)", f"{p50:,.0f} / {p99:,.0f}"))
    rows += [("errors (non-2xx or exceptions)", str(len(figures["errors"]))),
             ("wall time of the burst (s)", f"{figures['seconds']:.1f}")]
    print(f"\n{target}: {args.requests} requests from {args.clients} clients, single texts and batches of "
          f"{args.batch_size} alternating")
    for name, value in rows:
        print(f"{name:38} {value:>16}")
    for error in sorted(set(figures["errors"]))[:5]:
        print(f"  error: {error}")
    where = f"--url {args.url}" if args.url else f"--model {args.model}"
    print(f"\nreproduce: python benchmarks/serving.py {where} --requests {args.requests} --clients {args.clients}"
          f" --batch-size {args.batch_size} --timeout {args.timeout:g} --seed {args.seed}")


def main() -> int:
    args = parse_args()
    if not args.url and args.model is None:
        args.model = newest_sentiment_export(ROOT / "models")
        if args.model is None:
            print(f"error: no sentiment export under {ROOT / 'models'}; run `make run` first, or pass --model PATH",
                  file=sys.stderr)
            return 2
    batches = payloads(args.requests, args.batch_size, args.seed)
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as scratch:
        process = None
        try:
            url = (args.url or "").rstrip("/")
            if not url:
                started = time.perf_counter()
                url, process = start_server(args.model, Path(scratch) / "serve.log", args.start_timeout)
                print(f"`pipeline serve {args.model}` answered on {url} after {time.perf_counter() - started:.1f} s")
            for texts in (batches[0], batches[1]):  # warm-up: TensorFlow traces each input shape once
                send(requests.Session(), url, texts, time.monotonic() + 60)
            figures = burst(url, batches, args.clients, args.timeout)
        finally:
            if process is not None:
                stop_process_group(process)
    print_table(figures, args, url if args.url else str(args.model))
    return 1 if figures["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
