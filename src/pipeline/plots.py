"""Figures for evaluation: confusion matrix, training curves, misclassified sketches.

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so it needs no display and no global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.strokes import stroke3_to_polylines


def confusion_matrix_figure(confusion: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    """Return a heat map of a confusion matrix (rows: true class, columns: predicted), counts annotated."""
    confusion = np.asarray(confusion)
    size = max(4.0, 0.6 * len(classes) + 2)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.add_subplot()
    axes.imshow(confusion, cmap="Blues")
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title or "confusion matrix")
    threshold = confusion.max() / 2 if confusion.size else 0
    for (i, j), count in np.ndenumerate(confusion):
        axes.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return figure


def training_curves_figure(history: dict[str, list[float]], title: str = "") -> Figure:
    """Return loss and accuracy per epoch, training and validation, side by side."""
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    for index, metric in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, index + 1)
        for key, style in ((metric, "-o"), (f"val_{metric}", "--o")):
            if history.get(key):
                axes.plot(range(len(history[key])), history[key], style, label=key)
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.legend()
    figure.suptitle(title or "training curves")
    return figure


def sketch_grid_figure(sketches: Sequence[np.ndarray], captions: Sequence[str], columns: int = 4) -> Figure:
    """Return a grid of stroke-3 sketches drawn as pen strokes, each with its caption."""
    rows = max(1, -(-len(sketches) // columns))
    figure = Figure(figsize=(2.2 * columns, 2.4 * rows), layout="constrained")
    for index, (sketch, caption) in enumerate(zip(sketches, captions, strict=True)):
        axes = figure.add_subplot(rows, columns, index + 1)
        for line in stroke3_to_polylines(sketch):
            axes.plot(line[:, 0], -line[:, 1], linewidth=1.2)
        axes.set_aspect("equal")
        axes.set_xticks([])
        axes.set_yticks([])
        axes.set_title(caption, fontsize=8)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
