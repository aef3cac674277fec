"""Figures for evaluation: confusion matrix, most confused pairs, training curves, misclassified sketches.

Uses ``matplotlib.figure.Figure`` directly (no pyplot), so it needs no display and no global state.
Every figure has a bounded size and a bounded number of drawn elements at any class count (the real
dataset has 345 classes: a labelled cell per pair would be 119,025 text objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.strokes import stroke3_to_polylines

ANNOTATED_CLASSES = 30  # up to this many classes, every cell shows its count
LABELLED_CLASSES = 80  # up to this many, every row and column is labelled with its class name


def confusion_matrix_figure(confusion: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    """Return a heat map of a confusion matrix (rows: true class, columns: predicted).

    Counts are written in the cells up to :data:`ANNOTATED_CLASSES` classes and class names on the
    axes up to :data:`LABELLED_CLASSES`; beyond that the heat map alone, at most 16 inches square
    (the numbers are in the ``confusion_matrix.csv`` artifact beside it).
    """
    confusion = np.asarray(confusion)
    count = len(classes)
    size = max(4.0, 0.6 * count + 2) if count <= ANNOTATED_CLASSES else min(16.0, 6.0 + 0.03 * count)
    figure = Figure(figsize=(size, size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(confusion, cmap="Blues", interpolation="nearest")
    if count <= LABELLED_CLASSES:
        fontsize = 10 if count <= ANNOTATED_CLASSES else 6
        axes.set_xticks(range(count), classes, rotation=45 if count <= ANNOTATED_CLASSES else 90, ha="right",
                        fontsize=fontsize)  # fmt: skip
        axes.set_yticks(range(count), classes, fontsize=fontsize)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true")
    else:
        axes.set_xlabel(f"predicted class (0-{count - 1}, in the order of confusion_matrix.csv)")
        axes.set_ylabel(f"true class (0-{count - 1})")
        figure.colorbar(image, ax=axes, shrink=0.6, label="test sketches")
    axes.set_title(title or "confusion matrix")
    if count <= ANNOTATED_CLASSES:
        threshold = confusion.max() / 2 if confusion.size else 0
        for (i, j), value in np.ndenumerate(confusion):
            axes.text(j, i, str(value), ha="center", va="center", color="white" if value > threshold else "black")
    return figure


def most_confused_pairs(confusion: np.ndarray, classes: Sequence[str], top: int = 20) -> list[tuple[str, str, int]]:
    """Return the ``top`` (true class, predicted class, count) mistakes, most frequent first."""
    confusion = np.asarray(confusion)
    errors = confusion.copy()
    np.fill_diagonal(errors, 0)
    flat = np.argsort(errors, axis=None, kind="stable")[::-1][:top]
    pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(flat, errors.shape), strict=True)]
    return [(classes[i], classes[j], int(errors[i, j])) for i, j in pairs if errors[i, j] > 0]


def confused_pairs_figure(confusion: np.ndarray, classes: Sequence[str], title: str = "", top: int = 20) -> Figure:
    """Return a bar chart of the most frequent mistakes (true -> predicted), readable at any class count."""
    pairs = most_confused_pairs(confusion, classes, top)
    figure = Figure(figsize=(8, 1.5 + 0.3 * max(1, len(pairs))), layout="constrained")
    axes = figure.add_subplot()
    if pairs:
        labels = [f"{true} -> {predicted}" for true, predicted, _ in pairs][::-1]
        axes.barh(range(len(pairs)), [count for *_, count in pairs][::-1], color="tab:red")
        axes.set_yticks(range(len(pairs)), labels, fontsize=8)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("test sketches")
    else:
        axes.text(0.5, 0.5, "no mistakes", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    axes.set_title(title or "most confused class pairs")
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
