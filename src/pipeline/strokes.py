"""Stroke-3 sketches: conversion from polylines and the sketch-rnn ``.npz`` class-file format.

A stroke-3 sketch is an ``(n, 3)`` array of ``(dx, dy, pen_lifted)`` rows: the offset from the
previous point and 1 when the pen is lifted after this point (the last point of each stroke).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")


class StrokeFormatError(ValueError):
    """A file or record that cannot be read as stroke data; the message names both."""


def polylines_to_stroke3(strokes: Sequence[np.ndarray]) -> np.ndarray:
    """Return the stroke-3 array for a drawing given as absolute-coordinate polylines.

    Args:
        strokes: one ``(k, 2)`` array of absolute ``x, y`` points per pen-down stroke.

    Returns:
        ``(n, 3)`` float64 array of deltas; the first row is the offset from the origin.
    """
    points = []
    pen = []
    for stroke in strokes:
        stroke = np.asarray(stroke, dtype=np.float64).reshape(-1, 2)
        if len(stroke) == 0:
            continue
        points.append(stroke)
        lifted = np.zeros(len(stroke))
        lifted[-1] = 1.0
        pen.append(lifted)
    if not points:
        return np.zeros((0, 3))
    absolute = np.concatenate(points)
    deltas = np.diff(absolute, axis=0, prepend=np.zeros((1, 2)))
    return np.column_stack([deltas, np.concatenate(pen)])


def stroke3_sketches(items, where: str = "") -> list[np.ndarray]:
    """Return each item (a list of ``[dx, dy, pen]`` rows, or an array of them) as a float32 ``(n, 3)`` sketch.

    Raises:
        StrokeFormatError: ``where`` + which sketch is not a non-empty list of ``[dx, dy, pen]`` rows.
    """
    sketches = []
    for index, item in enumerate(items):
        rows = item.tolist() if isinstance(item, np.ndarray) and item.dtype == object else item
        try:
            values = np.asarray(rows)
            if values.dtype == object:  # rows that are arrays themselves (a DataFrame cell), or mixed values
                values = np.asarray([np.asarray(row) for row in rows])
        except (TypeError, ValueError) as exc:
            raise StrokeFormatError(f"{where}sketch {index} is not a list of [dx, dy, pen] rows") from exc
        if values.dtype.kind not in "iuf":  # numpy would read "12" as 12 and true as 1
            raise StrokeFormatError(f"{where}sketch {index}: a value is not a number (text, true/false or null)")
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below by name
            sketch = values.astype(np.float32)
        if sketch.ndim != 2 or sketch.shape[1] != 3 or len(sketch) == 0:
            raise StrokeFormatError(f"{where}sketch {index} is not a non-empty list of [dx, dy, pen] rows")
        check_stroke3(sketch, f"{where}sketch {index}")
        sketches.append(sketch)
    return sketches


def check_stroke3(sketch: np.ndarray, name: str) -> None:
    """Raise a :class:`StrokeFormatError` naming ``name`` and the row if a stroke-3 sketch is not one a
    model can read: a value that is not finite, a pen value other than 0 or 1, or no movement at all
    (every row ``0, 0, 0``, which reads as padding). Training validation rejects the same sketches."""
    finite = np.isfinite(sketch).all(axis=1)
    if not finite.all():
        raise StrokeFormatError(f"{name}: row {int(np.argmin(finite))} has a value that is not finite")
    pen_ok = (sketch[:, 2] == 0) | (sketch[:, 2] == 1)
    if not pen_ok.all():
        row = int(np.argmin(pen_ok))
        raise StrokeFormatError(f"{name}: row {row} has pen value {sketch[row, 2]:g} (expected 0 or 1)")
    if not sketch.any():
        raise StrokeFormatError(f"{name}: no movement (every row is 0, 0, 0, which reads as padding)")


def drop_noop_points(sketch: np.ndarray) -> np.ndarray:
    """Return a stroke-3 sketch without its ``(0, 0, 0)`` rows: pen-down points that do not move.

    They carry no geometry (removing one moves no other point), but the models take an all-zero row
    for padding: masked in the middle of a sequence, it breaks cuDNN's right-padded mask on a GPU.
    """
    sketch = np.asarray(sketch)
    keep = np.any(sketch != 0, axis=1)
    return sketch if keep.all() else sketch[keep]


def stroke3_to_polylines(sketch: np.ndarray) -> list[np.ndarray]:
    """Return the absolute-coordinate polylines (one ``(k, 2)`` array per stroke) of a stroke-3 sketch."""
    sketch = np.asarray(sketch, dtype=np.float64)
    absolute = np.cumsum(sketch[:, :2], axis=0)
    ends = np.flatnonzero(sketch[:, 2] > 0.5) + 1
    return [part for part in np.split(absolute, ends) if len(part)]


def quantize_stroke3(sketch: np.ndarray) -> np.ndarray:
    """Return an int16 stroke-3 array whose cumulative sum tracks the float one without drift."""
    sketch = np.asarray(sketch, dtype=np.float64)
    absolute = np.rint(np.cumsum(sketch[:, :2], axis=0))
    deltas = np.diff(absolute, axis=0, prepend=np.zeros((1, 2)))
    return np.column_stack([deltas, sketch[:, 2]]).astype(np.int16)


def write_sketchrnn_npz(path: Path, splits: dict[str, Iterable[np.ndarray]]) -> None:
    """Write a sketch-rnn class file: one object array of int16 stroke-3 sketches per split."""
    arrays = {}
    for split, sketches in splits.items():
        items = [np.asarray(s, dtype=np.int16) for s in sketches]
        column = np.empty(len(items), dtype=object)
        column[:] = items
        arrays[split] = column
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


# The only globals a sketch-rnn object array needs: ndarray reconstruction and dtypes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy array reconstruction and refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        if module == "numpy.core.multiarray":  # files pickled by numpy 1.x
            module = "numpy._core.multiarray"
        return super().find_class(module, name)


def _read_npy_member(data: bytes) -> np.ndarray:
    """Return the array in one ``.npy`` member, unpickling object arrays with the restricted unpickler."""
    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(stream)
    else:
        _, _, dtype = np.lib.format.read_array_header_2_0(stream)
    if dtype.hasobject:
        array = _NumpyOnlyUnpickler(stream, encoding="latin1").load()
        if not isinstance(array, np.ndarray):
            raise pickle.UnpicklingError(f"expected an ndarray, found {type(array).__name__}")
        return array
    stream.seek(0)
    return np.load(stream, allow_pickle=False)


# A zip member is read into memory whole: its size, from the zip header, is checked first. Stroke data
# compresses about 3:1, so a member that claims far more than that is a decompression bomb. (The
# header bounds the read too: zipfile stops at the declared size.)
MAX_NPZ_EXPANSION = 50
NPZ_EXPANSION_CHECKED_FROM = 16 << 20  # bytes unpacked; smaller members are cheap whatever they hold


def _check_member_size(path: Path, info: zipfile.ZipInfo) -> None:
    if info.file_size > NPZ_EXPANSION_CHECKED_FROM and info.file_size > MAX_NPZ_EXPANSION * max(info.compress_size, 1):
        raise StrokeFormatError(
            f"{path}: member {info.filename} would unpack {info.compress_size:,} bytes to {info.file_size:,} "
            f"(over {MAX_NPZ_EXPANSION}x): refused unread"
        )


def load_sketchrnn_npz(path: Path) -> dict[str, list[np.ndarray]]:
    """Read a sketch-rnn class file without trusting its pickles.

    Args:
        path: a ``NAME.npz`` file with ``train``/``valid``/``test`` arrays of stroke-3 sketches.

    Returns:
        Split name -> list of ``(n, 3)`` int16 arrays, for the splits the file holds.

    Raises:
        StrokeFormatError: the file is not a readable npz, carries a pickled object other than a
            numpy array (nothing from it is executed), has a member that would unpack to over
            :data:`MAX_NPZ_EXPANSION` times its packed size, or a record is not an ``(n, 3)`` array.
    """
    return {split: _records_of(path, split, array) for split, array in _read_splits(Path(path)).items()}


def load_sketchrnn_flat(path: Path, limit: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Read a sketch-rnn class file as flat arrays: split -> (rows, lengths, sketches in the file).

    ``rows`` is every stroke-3 row of the split's first ``limit`` sketches, concatenated; sketch ``i``
    has ``lengths[i]`` rows. One numpy call over the split, not one per sketch (the records are
    checked one by one only when that call finds something wrong, to name the bad one). Raises as
    :func:`load_sketchrnn_npz` does.
    """
    result = {}
    for split, array in _read_splits(Path(path)).items():
        total = len(array)
        array = array[:limit]
        if len(array) == 0:
            result[split] = (np.zeros((0, 3), dtype=np.int16), np.zeros(0, dtype=np.int64), total)
            continue
        try:  # an object array of sketches, or (sketches, points, 3) when they all have the same length
            rows = np.concatenate(array) if array.dtype == object or array.ndim == 3 else None
        except (ValueError, TypeError):
            rows = None
        if rows is None or rows.ndim != 2 or rows.shape[1] != 3 or not np.issubdtype(rows.dtype, np.number):
            _records_of(path, split, array)  # names the first bad record
            raise StrokeFormatError(f"{path}: {split} is not an array of (n, 3) numeric sketches")
        lengths = np.fromiter(map(len, array), dtype=np.int64, count=len(array))
        result[split] = (rows, lengths, total)
    return result


def _read_splits(path: Path) -> dict[str, np.ndarray]:
    """Return the object array of each split the file holds; see :func:`load_sketchrnn_npz`."""
    result: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {Path(n).stem: n for n in archive.namelist() if n.endswith(".npy")}
            unknown = sorted(set(members) - set(SPLITS))
            if unknown:  # its sketches would be left out unseen and uncounted
                names = ", ".join(repr(name[:32]) for name in unknown[:3])
                raise StrokeFormatError(f"{path}: holds {names}, not one of the splits {', '.join(SPLITS)}")
            for split in SPLITS:
                if split in members:
                    _check_member_size(path, archive.getinfo(members[split]))
                    array = _read_npy_member(archive.read(members[split]))
                    if array.ndim == 0:
                        raise StrokeFormatError(f"{path}: {split} is a single value, not a list of sketches")
                    result[split] = array
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        if isinstance(exc, StrokeFormatError):
            raise
        raise StrokeFormatError(f"{path}: not a readable sketch-rnn npz file ({exc})") from exc
    if not result:
        raise StrokeFormatError(f"{path}: holds none of the splits {', '.join(SPLITS)}")
    return result


def _records_of(path: Path, split: str, array: np.ndarray) -> list[np.ndarray]:
    """Return the sketches of one split as ``(n, 3)`` arrays, naming the first bad record."""
    records = []
    for index, item in enumerate(array):
        sketch = np.asarray(item)
        if sketch.ndim != 2 or sketch.shape[1] != 3 or not np.issubdtype(sketch.dtype, np.number):
            raise StrokeFormatError(
                f"{path}: record {split}[{index}] is not an (n, 3) numeric array "
                f"(shape {sketch.shape}, dtype {sketch.dtype})"
            )
        records.append(sketch)
    return records


def simplify_rdp(points: np.ndarray, epsilon: float) -> np.ndarray:
    """Return the Ramer-Douglas-Peucker simplification of one polyline (its end points always kept)."""
    points = np.asarray(points, dtype=np.float64)
    if len(points) < 3:
        return points
    keep = np.zeros(len(points), dtype=bool)
    keep[0] = keep[-1] = True
    pending = [(0, len(points) - 1)]
    while pending:
        first, last = pending.pop()
        if last - first < 2:
            continue
        start, end = points[first], points[last]
        segment = end - start
        inner = points[first + 1 : last] - start
        length = np.hypot(*segment)
        if length == 0.0:
            distances = np.hypot(inner[:, 0], inner[:, 1])
        else:
            distances = np.abs(segment[0] * inner[:, 1] - segment[1] * inner[:, 0]) / length
        farthest = int(np.argmax(distances))
        if distances[farthest] > epsilon:
            split = first + 1 + farthest
            keep[split] = True
            pending.extend([(first, split), (split, last)])
    return points[keep]
