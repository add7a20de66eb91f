"""PNG plots a person would rather look at than read: learning curves and a confusion matrix."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np


def learning_curves(history_csv: Path, out_dir: Path) -> list[Path]:
    """One PNG per metric in Keras's `history.csv`, train and validation on the same axes."""
    with history_csv.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return []
    epochs = [int(r["epoch"]) for r in rows]
    names = [k for k in rows[0] if k != "epoch" and not k.startswith("val_") and k != "learning_rate"]
    paths = []
    for name in names:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(epochs, [float(r[name]) for r in rows], marker="o", label=f"train {name}")
        if f"val_{name}" in rows[0]:
            ax.plot(epochs, [float(r[f"val_{name}"]) for r in rows], marker="o", label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{name} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"curve_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def confusion_matrix(matrix: np.ndarray, labels: list[str], path: Path) -> Path:
    """A confusion-matrix heat map with counts, rows true labels and columns predictions."""
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    limit = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > limit else "black")
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def context_curve(curve: dict[str, list], path: Path) -> Path:
    """Bits per character by characters read since the last state reset (`stateful.context_curve`),
    states carried and the same characters read with a reset every window, on the same axes."""
    edges = curve["edges"]
    labels = [f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, label in (("carried", "states carried"), ("cold", "same characters, reset every window")):
        points = [(i, v) for i, v in enumerate(curve[name]) if v is not None]
        ax.plot([i for i, _ in points], [v for _, v in points], marker="o", label=label)
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_xlabel("characters read since the last reset")
    ax.set_ylabel("bits per character")
    ax.set_title("Does the model use long context?")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
