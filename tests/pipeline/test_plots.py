"""Evaluation figures stay bounded and readable from 4 to 345 classes."""

import numpy as np
import pytest
from matplotlib.text import Text

from pipeline.plots import (
    confused_pairs_figure,
    confusion_matrix_figure,
    most_confused_pairs,
    save_figure,
    sketch_grid_figure,
    training_curves_figure,
)


def _confusion(classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, (classes, classes)) + np.diag(rng.integers(5, 20, classes))


def _texts(figure) -> list[str]:
    return [t.get_text() for t in figure.findobj(Text) if t.get_text() and t.get_visible()]


def test_a_few_classes_get_counts_in_every_cell_and_named_axes():
    confusion = _confusion(4)
    figure = confusion_matrix_figure(confusion, ["a", "b", "c", "d"], "t")
    texts = _texts(figure)
    assert all(str(v) in texts for v in confusion.ravel())
    assert {"a", "b", "c", "d", "predicted", "true"} <= set(texts)


@pytest.mark.parametrize("classes", [31, 80, 345])
def test_many_classes_give_a_bounded_figure_without_cell_labels(classes, tmp_path):
    names = [f"class {i}" for i in range(classes)]
    figure = confusion_matrix_figure(_confusion(classes), names, "t")
    width, height = figure.get_size_inches()
    assert width == height <= 16
    assert len(_texts(figure)) < 2 * classes + 50  # axis labels at most; no text per cell
    path = save_figure(figure, tmp_path / "confusion.png")
    assert 0 < path.stat().st_size < 5_000_000


def test_the_most_confused_pairs_are_the_largest_off_diagonal_counts():
    confusion = np.array([[9, 4, 0], [1, 8, 7], [0, 2, 5]])
    assert most_confused_pairs(confusion, ["x", "y", "z"], top=3) == [("y", "z", 7), ("x", "y", 4), ("z", "y", 2)]
    assert most_confused_pairs(np.diag([3, 4]), ["x", "y"]) == []
    figure = confused_pairs_figure(_confusion(345), [f"c{i}" for i in range(345)], top=20)
    assert figure.get_size_inches()[1] <= 1.5 + 0.3 * 20
    assert sum("->" in t for t in _texts(figure)) == 20


def test_curves_and_sketch_grid_are_drawn(tmp_path):
    curves = training_curves_figure({"loss": [2.0, 1.0], "val_loss": [2.1, 1.4], "accuracy": [0.3, 0.6]}, "lstm")
    assert {"loss", "val_loss", "accuracy"} <= set(_texts(curves))
    sketch = np.array([[5, 0, 0], [0, 5, 1], [3, 3, 1]], np.float32)
    grid = sketch_grid_figure([sketch, sketch], ["cat -> dog (0.61)", "dog -> cat (0.55)"])
    assert "cat -> dog (0.61)" in _texts(grid)
    assert save_figure(grid, tmp_path / "grid.png").stat().st_size > 0
