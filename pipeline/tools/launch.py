"""Start a multi-worker training on this machine: N `pipeline` processes, one per worker.

Each worker gets the `TF_CONFIG` a cluster launcher would give it (every worker's loopback
address, its own index) and no GPU, so N CPU processes stand in for N hosts. Worker 0 (the
chief) writes to this terminal; the others write to `worker-<i>.log` files in a temporary
folder, kept and named when a worker fails. The launch ends when every worker has: with the
chief's exit code, or with a failed worker's when the chief succeeded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)
# Subcommands that train, and so can run as one worker of several.
COMMANDS = ("run", "train")
# After one worker has failed, how long the others get to notice and exit on their own.
GRACE_SECONDS = 30.0


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that were free a moment ago."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def worker_env(addresses: list[str], index: int) -> dict[str, str]:
    """The environment of worker `index`: its `TF_CONFIG`, and the CPU only. TensorFlow's log
    level is left to the worker, which picks its own for a cluster."""
    spec = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
    env = {**os.environ, "TF_CONFIG": json.dumps(spec), "CUDA_VISIBLE_DEVICES": "-1"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def run(args: list[str], workers: int, verbose: bool = False) -> int:
    """Run `pipeline <args>` as `workers` workers of one cluster on loopback ports; wait for all.

    `train.distribute=multi_worker` is added to `args`, whatever the config says; `verbose`
    passes `-v` (TensorFlow's own log lines) to every worker.

    Returns:
        The chief's exit code, or the first failed worker's when the chief exited 0.
    """
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    command = [*_pipeline(), *(["-v"] if verbose else []), *args, "--set", "train.distribute=multi_worker"]
    logs = Path(tempfile.mkdtemp(prefix="pipeline-launch-"))
    processes: list[subprocess.Popen] = []
    try:
        for index in range(workers):
            out = None if index == 0 else open(logs / f"worker-{index}.log", "wb")  # noqa: SIM115 (closed by exit)
            processes.append(subprocess.Popen(command, env=worker_env(addresses, index), stdout=out,
                                              stderr=subprocess.STDOUT if out else None))
            where = "this terminal" if index == 0 else logs / f"worker-{index}.log"
            log.info("worker %d of %d: pid %d, %s, output to %s", index, workers, processes[-1].pid,
                     addresses[index], where)
        codes = _wait(processes)
    except BaseException:
        _stop(processes)
        raise
    failed = [(i, code) for i, code in enumerate(codes) if code != 0]
    for index, code in failed:
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited {code}"
        where = "" if index == 0 else f"; its output: {logs / f'worker-{index}.log'}"
        log.error("worker %d %s%s", index, how, where)
    if not any(index > 0 for index, _ in failed):
        shutil.rmtree(logs, ignore_errors=True)
    if codes[0] != 0:
        return codes[0] if codes[0] > 0 else 128 - codes[0]
    return next((code if code > 0 else 128 - code for _, code in failed), 0)


def _pipeline() -> list[str]:
    """This installation's `pipeline` command, run by this interpreter."""
    return [sys.executable, "-m", "pipeline"]


def _wait(processes: list[subprocess.Popen]) -> list[int]:
    """Every worker's exit code. Once one has failed, the rest get `GRACE_SECONDS` to notice
    (their collectives fail) and are then stopped."""
    deadline = None
    while any(p.poll() is None for p in processes):
        if deadline is None and any(p.returncode not in (None, 0) for p in processes):
            deadline = time.monotonic() + GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            _stop(processes)
        time.sleep(0.2)
    return [p.returncode for p in processes]


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to the workers still running, then SIGKILL to those that ignore it for 10 s (one
    blocked inside a collective cannot run its signal handler)."""
    for p in processes:
        if p.poll() is None:
            p.terminate()
    for p in processes:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
