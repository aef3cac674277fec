"""The canonical dataset on disk: what ingest writes and every later stage reads.

Layout of a dataset folder::

    dataset.json                name, source, classes, counts per split and class, rejected and
                                skipped records by reason, content fingerprint
    ingest_quarantine.jsonl     records the readers could not use: file, record, reason, value
    <split>/strokes.npy         float32 (total_points, 3) stroke-3 rows of all sketches, concatenated
    <split>/offsets.npy         int64 (n + 1,): sketch i is strokes[offsets[i]:offsets[i + 1]]
    <split>/labels.npy          int32 (n,) index into ``classes``
    <split>/ids.npy             str (n,) "file:split[index]", "file:line" or key_id: the source record

No pickles: every array loads with ``allow_pickle=False``. Readers stream (positioned reads of one
sketch at a time), and so does the writer: rows are appended to files as they come and copied into
``.npy`` files in chunks, so memory does not grow with the number of sketches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.files import move_into_place, staging_dir
from pipeline.strokes import SPLITS

_CHUNK = 1 << 20  # rows per copy when turning the append-only files into .npy arrays


@dataclasses.dataclass(frozen=True)
class SketchRecord:
    """One sketch on its way into a dataset."""

    split: str
    label: int
    record_id: str
    strokes: np.ndarray


@dataclasses.dataclass(frozen=True)
class Rejection:
    """A source record that could not become a sketch, and why (it goes to the ingest quarantine)."""

    source: str
    record: str
    reason: str
    value: str = ""
    skipped: bool = False  # excluded on purpose (e.g. not recognized), not broken
    count: int = 1  # records it stands for (a cap can leave out a whole range at once)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What ``dataset.json`` says about a dataset folder."""

    name: str
    source: str
    classes: list[str]
    counts: dict[str, dict[str, int]]
    fingerprint: str
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)
    noop_points_dropped: int = 0  # (0, 0, 0) rows removed from accepted sketches (see drop_noop_points)

    @property
    def num_sketches(self) -> int:
        """Return the number of sketches over all splits."""
        return sum(sum(per_class.values()) for per_class in self.counts.values())

    @property
    def num_rejected(self) -> int:
        """Return the number of source records the readers quarantined."""
        return sum(self.rejected.values())


class SplitArrays:
    """Access to one split of a dataset folder.

    ``strokes`` and ``ids`` are memory-mapped for whole-split scans; :meth:`sketch` reads one
    sketch with a positioned read instead, so that visiting every sketch does not keep the whole
    stroke file resident (mapped pages count towards a process's RSS).
    """

    def __init__(self, folder: Path):
        self.strokes = np.load(folder / "strokes.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.labels = np.load(folder / "labels.npy")
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self._path = folder / "strokes.npy"
        self._data_start = self.strokes.offset
        self._file = None

    def __len__(self) -> int:
        return len(self.labels)

    def sketch(self, index: int) -> np.ndarray:
        """Return sketch ``index`` as a float32 ``(n, 3)`` array."""
        if self._file is None:
            self._file = open(self._path, "rb")  # noqa: SIM115 - kept for the object's lifetime
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        row = 3 * np.dtype(np.float32).itemsize
        data = os.pread(self._file.fileno(), (stop - start) * row, self._data_start + start * row)
        return np.frombuffer(data, dtype=np.float32).reshape(-1, 3).copy()

    def __del__(self):
        if self._file is not None:
            self._file.close()

    def lengths(self) -> np.ndarray:
        """Return the point count of every sketch."""
        return np.diff(self.offsets)


def read_info(dataset_dir: Path) -> DatasetInfo:
    """Return the metadata of a dataset folder."""
    return DatasetInfo(**json.loads((Path(dataset_dir) / "dataset.json").read_text()))


def open_split(dataset_dir: Path, split: str) -> SplitArrays:
    """Return memory-mapped arrays of one split of a dataset folder."""
    return SplitArrays(Path(dataset_dir) / split)


def write_dataset(
    out_root: Path, name: str, source: str, classes: list[str], records: Iterable[SketchRecord | Rejection]
) -> Path:
    """Write records into a new dataset folder named after its content fingerprint; return the folder.

    Rejections go to ``ingest_quarantine.jsonl`` and are counted by reason. The fingerprint hashes
    the class list, every record (split, label, id, strokes) and every rejection, so the same content
    always lands in the same folder and a changed byte gives a new one.
    """
    out_root = Path(out_root)
    staging = staging_dir(out_root, name)  # private to this writer: concurrent ingests never mix files
    try:
        return _write_dataset(staging, out_root, name, source, classes, records)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


_BATCH = 4096  # sketches of one split checked and written at once, vectorised


def _write_dataset(
    staging: Path,
    out_root: Path,
    name: str,
    source: str,
    classes: list[str],
    records: Iterable[SketchRecord | Rejection],
) -> Path:
    digest = hashlib.sha256(json.dumps(classes).encode())
    writers = {split: _SplitWriter(staging / split) for split in SPLITS}
    pending: dict[str, list[SketchRecord]] = {split: [] for split in SPLITS}
    rejected: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    noop_points = 0
    with open(staging / "ingest_quarantine.jsonl", "w") as quarantine:

        def flush(split: str) -> None:
            nonlocal noop_points
            noop_points += _write_batch(writers[split], pending[split], digest, quarantine, rejected)
            pending[split] = []

        for record in records:
            if isinstance(record, Rejection):
                line = json.dumps(dataclasses.asdict(record))
                digest.update(line.encode())
                if record.skipped:  # excluded on purpose: counted, not listed (there can be millions)
                    skipped[record.reason] += record.count
                else:
                    rejected[record.reason] += record.count
                    quarantine.write(line + "\n")
                continue
            pending[record.split].append(record)
            if len(pending[record.split]) >= _BATCH:
                flush(record.split)
        for split in SPLITS:
            flush(split)
    counts = {split: writer.close(classes) for split, writer in writers.items()}
    fingerprint = digest.hexdigest()
    info = DatasetInfo(name, source, classes, counts, fingerprint, dict(rejected), dict(skipped), noop_points)
    (staging / "dataset.json").write_text(json.dumps(dataclasses.asdict(info), indent=2))
    final = out_root / f"{name}-{fingerprint[:12]}"
    move_into_place(staging, final, replace=False)  # named after its content: one already there is the same
    return final


def _write_batch(writer: _SplitWriter, batch: list[SketchRecord], digest, quarantine, rejected: Counter) -> int:
    """Write a batch of one split's sketches without their ``(0, 0, 0)`` rows; return how many rows were dropped.

    See :func:`~pipeline.strokes.drop_noop_points`; a sketch left with no row is quarantined as "no
    movement". One vectorised pass over the batch's rows, not a numpy call per sketch.
    """
    if not batch:
        return 0
    parts = [np.asarray(r.strokes, dtype=np.float32).reshape(-1, 3) for r in batch]
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    flat = np.concatenate(parts)
    moving = flat.any(axis=1)
    if moving.all():
        kept = lengths
    else:
        flat = flat[moving]
        ends = np.cumsum(lengths)
        moved = np.concatenate([[0], np.cumsum(moving, dtype=np.int64)])
        kept = moved[ends] - moved[ends - lengths]
    dropped = int(lengths.sum() - kept.sum())
    if not kept.all():
        for index in np.flatnonzero(kept == 0):
            record_id = batch[int(index)].record_id
            rejection = Rejection(record_id.split(":")[0], record_id, "no movement", "")
            rejected[rejection.reason] += 1
            quarantine.write(json.dumps(dataclasses.asdict(rejection)) + "\n")
            digest.update(f"no movement|{record_id}".encode())
        keep = kept > 0
        batch = [record for record, ok in zip(batch, keep, strict=True) if ok]
        kept = kept[keep]
    labels = np.fromiter((r.label for r in batch), dtype=np.int32, count=len(batch))
    ids = [r.record_id.replace("\n", " ") for r in batch]
    writer.add_batch(labels, ids, flat, kept)
    digest.update("\n".join(f"{r.split}|{r.label}|{i}|{n}" for r, i, n in zip(batch, ids, kept, strict=True)).encode())
    digest.update(flat.tobytes())
    return dropped


class _SplitWriter:
    """Appends one split's records to raw files, then turns them into ``.npy`` arrays in chunks."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.strokes = open(folder / "strokes.raw", "wb")  # noqa: SIM115 - closed in close()
        self.lengths = open(folder / "lengths.raw", "wb")  # noqa: SIM115
        self.labels = open(folder / "labels.raw", "wb")  # noqa: SIM115
        self.ids = open(folder / "ids.txt", "w")  # noqa: SIM115
        self.count = 0
        self.id_width = 1
        self.per_label: Counter[int] = Counter()

    def add_batch(self, labels: np.ndarray, ids: list[str], strokes: np.ndarray, lengths: np.ndarray) -> None:
        """Append sketches: their labels, ids (one line each), concatenated rows and row counts."""
        self.strokes.write(np.ascontiguousarray(strokes, dtype=np.float32).tobytes())
        self.lengths.write(np.asarray(lengths, dtype=np.int64).tobytes())
        self.labels.write(labels.tobytes())
        self.ids.write("".join(f"{record_id}\n" for record_id in ids))
        self.id_width = max(self.id_width, max(map(len, ids)))
        self.per_label.update(labels.tolist())
        self.count += len(labels)

    def close(self, classes: list[str]) -> dict[str, int]:
        for handle in (self.strokes, self.lengths, self.labels, self.ids):
            handle.close()
        raw = self.folder
        _raw_to_npy(raw / "strokes.raw", raw / "strokes.npy", np.float32, (3,))
        lengths = np.fromfile(raw / "lengths.raw", np.int64)
        np.save(raw / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
        np.save(raw / "labels.npy", np.fromfile(raw / "labels.raw", np.int32))
        if self.count:
            ids = np.lib.format.open_memmap(raw / "ids.npy", "w+", np.dtype(f"<U{self.id_width}"), (self.count,))
            with open(raw / "ids.txt") as lines:
                for index, line in enumerate(lines):
                    ids[index] = line.rstrip("\n")
            ids.flush()
            del ids
        else:
            np.save(raw / "ids.npy", np.zeros(0, dtype="<U1"))
        for name in ("strokes.raw", "lengths.raw", "labels.raw", "ids.txt"):
            (raw / name).unlink()
        counts = {name: self.per_label.get(i, 0) for i, name in enumerate(classes)}
        unknown = self.count - sum(counts.values())
        if unknown:  # left for validation to quarantine, but counted
            counts["<unknown>"] = unknown
        return counts


def _raw_to_npy(raw: Path, path: Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
    """Turn an append-only file of rows into a ``.npy`` file, copying in chunks with plain reads and writes."""
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    rows = raw.stat().st_size // row_bytes
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": (rows, *row_shape),
    }
    with open(raw, "rb") as source, open(path, "wb") as sink:
        np.lib.format.write_array_header_1_0(sink, header)
        while chunk := source.read(_CHUNK * row_bytes):
            sink.write(chunk)
