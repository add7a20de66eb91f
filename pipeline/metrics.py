"""The metrics the pipeline reports, each declared once: its name, the tasks that have it, which way
is better, and whether training logs it after every epoch.

A metric is logged under a split's prefix: `val_accuracy` after each epoch, `test_accuracy` by the
evaluate stage. Early stopping and the kept epoch (`train.monitor`), sweeps' objectives, the
compare table's order and the inspect legends all read this table.
"""

from __future__ import annotations

from dataclasses import dataclass

SPLITS = ("val", "test")


@dataclass(frozen=True)
class Metric:
    """One metric, without its split prefix."""

    name: str
    tasks: tuple[str, ...]
    higher_is_better: bool
    per_epoch: bool  # logged with the `val_` prefix after every training epoch


METRICS: tuple[Metric, ...] = (
    Metric("loss", ("sentiment", "lm"), higher_is_better=False, per_epoch=True),
    Metric("accuracy", ("sentiment", "lm"), higher_is_better=True, per_epoch=True),
    Metric("macro_f1", ("sentiment",), higher_is_better=True, per_epoch=False),
    Metric("auc", ("sentiment",), higher_is_better=True, per_epoch=False),
    Metric("perplexity", ("lm",), higher_is_better=False, per_epoch=True),
    Metric("bits_per_char", ("lm",), higher_is_better=False, per_epoch=True),
)
# The figure each task is judged by first: tables and legends lead with it.
HEADLINE = {"sentiment": "accuracy", "lm": "bits_per_char"}
_BY_NAME = {metric.name: metric for metric in METRICS}


def find(name: str) -> Metric | None:
    """The metric a logged name such as `val_accuracy` or `test_bits_per_char` reports, if it is one."""
    prefix, _, rest = name.partition("_")
    return _BY_NAME.get(rest if prefix in SPLITS else name)


def higher_is_better(name: str) -> bool:
    """Whether a larger value of the logged metric `name` is better (true for names it does not know)."""
    metric = find(name)
    return metric is None or metric.higher_is_better


def validation_metrics(task: str) -> tuple[str, ...]:
    """What training logs after every epoch for `task`: the names `train.monitor` and sweeps choose from."""
    return tuple(f"val_{m.name}" for m in METRICS if task in m.tasks and m.per_epoch)


def test_metrics() -> tuple[str, ...]:
    """Every figure the evaluate stage can report, over all tasks: the compare table's columns."""
    return tuple(f"test_{m.name}" for m in METRICS)


def headline(task: str, split: str = "test") -> str:
    """The logged name of the figure `task` is judged by on `split`, e.g. `test_accuracy`."""
    return f"{split}_{HEADLINE[task]}"
