"""The embedded default dataset: procedurally drawn pen-stroke sketches of simple shape classes.

Each class is a template of pen-down polylines in a unit box. Every sketch applies human-like
variation (scale, aspect, rotation, wobble and jitter, start point and direction, stroke order, extra
pen lifts, abandoned drawings), is fitted into the 0-255 box and simplified with RDP (epsilon 2.0) as the
published Quick, Draw! data is, and is stored as int16 stroke-3 in sketch-rnn ``.npz`` class files.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.strokes import polylines_to_stroke3, quantize_stroke3, simplify_rdp, write_sketchrnn_npz

Polylines = list[np.ndarray]


def _arc(cx: float, cy: float, r: float, start: float, stop: float, n: int = 48) -> np.ndarray:
    t = np.linspace(start, stop, n)
    return np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])


def _polygon(corners: list[tuple[float, float]], closed: bool = True) -> np.ndarray:
    points = np.asarray(corners + corners[:1] if closed else corners, dtype=np.float64)
    return _densify(points)


def _densify(points: np.ndarray, step: float = 0.05) -> np.ndarray:
    """Resample a polyline at roughly uniform spacing so that wobble bends its edges."""
    out = [points[:1]]
    for a, b in itertools.pairwise(points):
        n = max(2, int(np.hypot(*(b - a)) / step) + 1)
        out.append(np.linspace(a, b, n)[1:])
    return np.concatenate(out)


def _circle(rng: np.random.Generator) -> Polylines:
    return [_arc(0, 0, 1, 0, 2 * np.pi + rng.uniform(0, 0.4), 64)]


def _square(rng: np.random.Generator) -> Polylines:
    return [_polygon([(-1, -1), (1, -1), (1, 1), (-1, 1)])]


def _triangle(rng: np.random.Generator) -> Polylines:
    return [_polygon([(-1, 0.8), (1, 0.8), (0, -1)])]


def _star(rng: np.random.Generator) -> Polylines:
    angles = -np.pi / 2 + np.arange(5) * 4 * np.pi / 5
    return [_polygon([(np.cos(a), np.sin(a)) for a in angles])]


def _spiral(rng: np.random.Generator) -> Polylines:
    turns = rng.uniform(2.0, 3.5)
    t = np.linspace(0, 2 * np.pi * turns, int(60 * turns))
    r = t / t[-1]
    return [np.column_stack([r * np.cos(t), r * np.sin(t)])]


def _zigzag(rng: np.random.Generator) -> Polylines:
    teeth = int(rng.integers(3, 7))
    xs = np.linspace(-1, 1, 2 * teeth + 1)
    ys = np.where(np.arange(len(xs)) % 2 == 0, 0.6, -0.6)
    return [_densify(np.column_stack([xs, ys]))]


def _arrow(rng: np.random.Generator) -> Polylines:
    shaft = _polygon([(-1, 0), (1, 0)], closed=False)
    head = _polygon([(0.4, -0.5), (1, 0), (0.4, 0.5)], closed=False)
    return [shaft, head]


def _house(rng: np.random.Generator) -> Polylines:
    body = _polygon([(-0.8, 1), (-0.8, -0.1), (0.8, -0.1), (0.8, 1)])
    roof = _polygon([(-1, -0.1), (0, -1), (1, -0.1)], closed=False)
    door = _polygon([(-0.2, 1), (-0.2, 0.4), (0.2, 0.4), (0.2, 1)], closed=False)
    return [body, roof, door] if rng.random() < 0.6 else [body, roof]


def _heart(rng: np.random.Generator) -> Polylines:
    t = np.linspace(0, 2 * np.pi, 72)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [np.column_stack([x, y]) / 17.0]


def _cross(rng: np.random.Generator) -> Polylines:
    return [_polygon([(-1, 0), (1, 0)], closed=False), _polygon([(0, -1), (0, 1)], closed=False)]


def _wave(rng: np.random.Generator) -> Polylines:
    periods = rng.uniform(1.5, 3.0)
    x = np.linspace(-1, 1, 80)
    return [np.column_stack([x, 0.5 * np.sin(x * np.pi * periods)])]


def _lightning(rng: np.random.Generator) -> Polylines:
    return [_polygon([(0.3, -1), (-0.4, 0.1), (0.3, 0.0), (-0.3, 1)], closed=False)]


SHAPES: dict[str, Callable[[np.random.Generator], Polylines]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "spiral": _spiral,
    "zigzag": _zigzag,
    "arrow": _arrow,
    "house": _house,
    "heart": _heart,
    "cross": _cross,
    "wave": _wave,
    "lightning": _lightning,
}

_CLOSED = {"circle", "square", "triangle", "star", "heart"}


def _vary(name: str, strokes: Polylines, rng: np.random.Generator) -> Polylines:
    """Return the template strokes as a person might draw them: reordered, restarted, wobbly, lifted."""
    strokes = [s.copy() for s in strokes]
    if len(strokes) > 1 and rng.random() < 0.5:
        strokes = [strokes[i] for i in rng.permutation(len(strokes))]
    varied = []
    for stroke in strokes:
        if name in _CLOSED and rng.random() < 0.7:
            stroke = np.roll(stroke[:-1], int(rng.integers(len(stroke) - 1)), axis=0)
            stroke = np.vstack([stroke, stroke[:1]])
        if rng.random() < 0.5:
            stroke = stroke[::-1]
        varied.append(stroke)

    # Abandoned drawings (the game's time limit) keep only a prefix of the points.
    if rng.random() < 0.25:
        total = sum(len(s) for s in varied)
        budget = int(total * rng.uniform(0.35, 0.8))
        kept = []
        for stroke in varied:
            if budget <= 1:
                break
            kept.append(stroke[:budget])
            budget -= len(stroke)
        varied = kept

    # Affine variation: scale, aspect, rotation, shear.
    angle = rng.normal(0, 0.35)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    aspect = np.exp(rng.normal(0, 0.25))
    shear = np.array([[1.0, rng.normal(0, 0.2)], [0.0, 1.0]])
    matrix = rotation @ shear @ np.diag([aspect, 1.0 / aspect])

    # Low-frequency wobble plus per-point tremor.
    phase = rng.uniform(0, 2 * np.pi, size=(2, 3))
    amp = rng.uniform(0.02, 0.12)
    out = []
    for stroke in varied:
        points = stroke @ matrix.T
        s = np.linspace(0, 1, len(points))[:, None]
        wobble = amp * np.column_stack(
            [np.sin(2 * np.pi * (k + 1) * s[:, 0] + phase[d, k]) / (k + 1) for d in range(2) for k in range(3)]
        ).reshape(len(points), 2, 3).sum(axis=2)
        points = points + wobble + rng.normal(0, 0.015, size=points.shape)
        out.append(points)

    # An extra pen lift: one stroke broken in two.
    if rng.random() < 0.2:
        i = int(rng.integers(len(out)))
        if len(out[i]) > 6:
            cut = int(rng.integers(3, len(out[i]) - 2))
            out[i : i + 1] = [out[i][:cut], out[i][cut:]]
    return out


def _fit_to_box(strokes: Polylines, rng: np.random.Generator, size: float = 255.0) -> Polylines:
    """Scale and shift the drawing so that its longer side spans most of the 0-255 box."""
    allpoints = np.concatenate(strokes)
    low, high = allpoints.min(axis=0), allpoints.max(axis=0)
    extent = max(float((high - low).max()), 1e-6)
    scale = size * rng.uniform(0.6, 1.0) / extent
    offset = rng.uniform(0, size - (high - low) * scale + 1e-9)
    return [(s - low) * scale + offset for s in strokes]


def draw_sketch(name: str, rng: np.random.Generator, epsilon: float = 2.0) -> np.ndarray:
    """Return one int16 stroke-3 sketch of the shape class ``name``, drawn with the given generator."""
    strokes = _fit_to_box(_vary(name, SHAPES[name](rng), rng), rng)
    simplified = [simplify_rdp(s, epsilon) for s in strokes]
    return quantize_stroke3(polylines_to_stroke3(simplified))


def class_names(num_classes: int) -> list[str]:
    """Return the first ``num_classes`` synthetic class names, in their fixed order."""
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"the synthetic set has 1 to {len(SHAPES)} classes, not {num_classes}")
    return list(SHAPES)[:num_classes]


def synthetic_split(name: str, split: str, count: int, seed: int) -> list[np.ndarray]:
    """Return ``count`` sketches of class ``name`` for one split: the same for the same arguments."""
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic class {name!r}; known: {', '.join(SHAPES)}")
    # a class draws the same sketches whatever else is selected
    rng = np.random.default_rng([seed, list(SHAPES).index(name), ("train", "valid", "test").index(split)])
    return [draw_sketch(name, rng) for _ in range(count)]


def write_synthetic_npz(out_dir: Path, classes: list[str], per_split: dict[str, int], seed: int) -> list[Path]:
    """Write one sketch-rnn ``NAME.npz`` per class and return their paths.

    Args:
        out_dir: folder for the class files.
        classes: shape names from ``SHAPES``.
        per_split: sketches per class in each split, e.g. ``{"train": 300, "valid": 50, "test": 50}``.
        seed: the same seed and arguments give byte-identical sketches.

    Returns:
        The written paths, in class order.
    """
    paths = []
    for name in classes:
        path = Path(out_dir) / f"{name}.npz"
        write_sketchrnn_npz(
            path, {split: synthetic_split(name, split, count, seed) for split, count in per_split.items()}
        )
        paths.append(path)
    return paths
