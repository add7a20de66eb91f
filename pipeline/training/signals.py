"""Ctrl-C and SIGTERM as an `Interrupted` exception, raised where it is safe to unwind.

Raised from inside a signal handler, an exception can land in the middle of an MLflow write
and leave its SQLite store locked. While training runs (`deferred()`), the handler therefore
only records the signal, and `StopOnSignal` raises it between two batches. A second signal
does not wait. Elsewhere the exception is raised at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import keras

from pipeline.errors import Interrupted

_deferring = False
_pending: int | None = None


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Route SIGINT and SIGTERM through `_handle` for the block (main thread only, as Python
    requires), then put the previous handlers back."""
    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _handle(signum, frame):
    global _pending
    if _deferring and _pending is None:
        _pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold signals for `StopOnSignal`; one still pending when the block ends is raised then."""
    global _deferring, _pending
    _deferring, _pending = True, None
    try:
        yield
    finally:
        _deferring = False
    raise_pending()


def raise_pending() -> None:
    global _pending
    if _pending is not None:
        signum, _pending = _pending, None
        raise Interrupted(signum)


class StopOnSignal(keras.callbacks.Callback):
    """Raises a held SIGINT or SIGTERM after the batch (or epoch end) it arrived in."""

    def on_train_batch_end(self, batch, logs=None):
        raise_pending()

    def on_test_batch_end(self, batch, logs=None):
        raise_pending()

    def on_epoch_end(self, epoch, logs=None):
        raise_pending()
