"""Sketch descriptors: a few numbers per sketch that say what users draw, computed for a whole chunk of
flat stroke-3 rows at once (no loop over sketches). Monitoring compares their distributions with the
reference profile of the model's test split.

- ``points``: rows of the sketch (after the no-op points are dropped, before cropping);
- ``strokes``: pen lifts (at least 1);
- ``width``, ``height``: the bounding box of the absolute pen positions;
- ``aspect``: ``width / (width + height)``: 0.5 for a square box, 0 for a vertical line, 1 for a horizontal one
  (bounded where ``width / height`` is not);
- ``pen_up_share``: the share of the pen's travel made with the pen up, between strokes;
- ``duration_s``: seconds from the first to the last pen point, where the source has times (raw ndjson),
  else NaN.
"""

from __future__ import annotations

import numpy as np

from pipeline.features import segment_starts

DESCRIPTORS = ("points", "strokes", "width", "height", "aspect", "pen_up_share", "duration_s")


def sketch_descriptors(rows: np.ndarray, lengths: np.ndarray, durations: np.ndarray | None = None) -> dict:
    """Return descriptor name -> ``(n,)`` array for ``n`` sketches of at least one row each."""
    n = len(lengths)
    if n == 0:
        return {name: np.zeros(0, dtype=np.float32) for name in DESCRIPTORS}
    starts = segment_starts(lengths)
    sketch_of = np.repeat(np.arange(n), lengths)
    moves = rows[:, :2].astype(np.float64)
    absolute = np.cumsum(moves, axis=0)
    absolute -= (absolute[starts] - moves[starts])[sketch_of]  # each sketch from its own origin
    width = np.maximum.reduceat(absolute[:, 0], starts) - np.minimum.reduceat(absolute[:, 0], starts)
    height = np.maximum.reduceat(absolute[:, 1], starts) - np.minimum.reduceat(absolute[:, 1], starts)
    pen = rows[:, 2] > 0.5
    strokes = np.maximum(np.bincount(sketch_of, weights=pen, minlength=n), 1)
    travel = np.hypot(moves[:, 0], moves[:, 1])
    travel[starts] = 0.0  # the first row places the pen: no travel on the page
    lifted = np.zeros(len(rows), dtype=bool)
    lifted[1:] = pen[:-1]  # a move after a lift is made with the pen up
    lifted[starts] = False
    total = np.bincount(sketch_of, weights=travel, minlength=n)
    up = np.bincount(sketch_of, weights=travel * lifted, minlength=n)
    extent = width + height
    return {
        "points": lengths.astype(np.float32),
        "strokes": strokes.astype(np.float32),
        "width": width.astype(np.float32),
        "height": height.astype(np.float32),
        "aspect": np.divide(width, extent, out=np.full(n, 0.5), where=extent > 0).astype(np.float32),
        "pen_up_share": np.divide(up, total, out=np.zeros(n), where=total > 0).astype(np.float32),
        "duration_s": (np.full(n, np.nan) if durations is None else durations).astype(np.float32),
    }
