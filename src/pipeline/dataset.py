"""The canonical dataset on disk: what ingest writes and every later stage reads.

Layout of a dataset folder::

    dataset.json            name, source, classes, counts per split and class, content fingerprint
    <split>/strokes.npy     float32 (total_points, 3) stroke-3 rows of all sketches, concatenated
    <split>/offsets.npy     int64 (n + 1,): sketch i is strokes[offsets[i]:offsets[i + 1]]
    <split>/labels.npy      int32 (n,) index into ``classes``
    <split>/ids.npy         str (n,) "file:split[index]" or key_id, naming the source record

No pickles: every array loads with ``allow_pickle=False`` and memory-maps, so readers stream.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.strokes import SPLITS


@dataclasses.dataclass(frozen=True)
class SketchRecord:
    """One sketch on its way into a dataset."""

    split: str
    label: int
    record_id: str
    strokes: np.ndarray


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a dataset folder."""

    name: str
    source: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    fingerprint: str

    @property
    def num_sketches(self) -> int:
        """Return the number of sketches over all splits."""
        return sum(sum(per_class.values()) for per_class in self.counts.values())


class SplitArrays:
    """Memory-mapped access to one split of a dataset folder."""

    def __init__(self, folder: Path):
        self.strokes = np.load(folder / "strokes.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self.labels)

    def sketch(self, index: int) -> np.ndarray:
        """Return sketch ``index`` as a float32 ``(n, 3)`` array."""
        return np.asarray(self.strokes[self.offsets[index] : self.offsets[index + 1]])

    def lengths(self) -> np.ndarray:
        """Return the point count of every sketch."""
        return np.diff(self.offsets)


def read_info(dataset_dir: Path) -> DatasetInfo:
    """Return the metadata of a dataset folder."""
    return DatasetInfo(**json.loads((Path(dataset_dir) / "dataset.json").read_text()))


def open_split(dataset_dir: Path, split: str) -> SplitArrays:
    """Return memory-mapped arrays of one split of a dataset folder."""
    return SplitArrays(Path(dataset_dir) / split)


def write_dataset(out_root: Path, name: str, source: str, classes: list[str], records: Iterable[SketchRecord]) -> Path:
    """Write records into a new dataset folder named after its content fingerprint; return the folder.

    The fingerprint hashes the class list and every record (split, label, id, strokes), so the same
    content always lands in the same folder and a changed byte gives a new one.
    """
    out_root = Path(out_root)
    staging = out_root / f".{name}.partial"
    _remove_tree(staging)  # left behind by an interrupted ingest
    digest = hashlib.sha256(json.dumps(classes).encode())
    writers = {split: _SplitWriter(staging / split) for split in SPLITS}
    for record in records:
        strokes = np.ascontiguousarray(record.strokes, dtype=np.float32)
        writers[record.split].add(record.label, record.record_id, strokes)
        digest.update(f"{record.split}|{record.label}|{record.record_id}|{strokes.shape[0]}".encode())
        digest.update(strokes.tobytes())
    counts = {split: writer.close(classes) for split, writer in writers.items()}
    fingerprint = digest.hexdigest()
    info = DatasetInfo(name=name, source=source, classes=classes, counts=counts, fingerprint=fingerprint)
    (staging / "dataset.json").write_text(json.dumps(dataclasses.asdict(info), indent=2))
    final = out_root / f"{name}-{fingerprint[:12]}"
    if final.exists():  # same content already ingested
        _remove_tree(staging)
    else:
        staging.rename(final)
    return final


class _SplitWriter:
    """Accumulates one split's records and writes its arrays."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.chunks: list[np.ndarray] = []
        self.lengths: list[int] = []
        self.labels: list[int] = []
        self.ids: list[str] = []

    def add(self, label: int, record_id: str, strokes: np.ndarray) -> None:
        self.chunks.append(strokes)
        self.lengths.append(len(strokes))
        self.labels.append(label)
        self.ids.append(record_id)

    def close(self, classes: list[str]) -> dict[str, int]:
        strokes = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 3), np.float32)
        np.save(self.folder / "strokes.npy", strokes.astype(np.float32))
        np.save(self.folder / "offsets.npy", np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64))
        np.save(self.folder / "labels.npy", np.asarray(self.labels, dtype=np.int32))
        np.save(self.folder / "ids.npy", np.asarray(self.ids, dtype=str))
        labels = np.asarray(self.labels, dtype=np.int64)
        known = (labels >= 0) & (labels < len(classes))
        counts = {
            name: int(n) for name, n in zip(classes, np.bincount(labels[known], minlength=len(classes)), strict=True)
        }
        if not known.all():  # left for validation to quarantine, but counted
            counts["<unknown>"] = int((~known).sum())
        return counts


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def iter_split(dataset_dir: Path, split: str, indices: Iterable[int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(label, strokes)`` for the given sketch indices of a split (all of them by default)."""
    arrays = open_split(dataset_dir, split)
    for index in range(len(arrays)) if indices is None else indices:
        yield int(arrays.labels[index]), arrays.sketch(int(index))
