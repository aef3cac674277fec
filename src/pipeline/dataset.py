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
sketch, or of a contiguous range of sketches, at a time), and so does the writer: it takes batches of
sketches as flat arrays (:class:`SketchBatch`; single records are batched), checks and appends each
batch with a few numpy calls, and writes the ``.npy`` headers once the counts are known, so memory
does not grow with the number of sketches and no Python runs per sketch on the sketch-rnn path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from pipeline.files import move_into_place, staging_dir
from pipeline.strokes import SPLITS

_CHUNK = 1 << 20  # bytes / 16 of ids read at once when turning ids.txt into ids.npy


@dataclasses.dataclass(frozen=True)
class SketchRecord:
    """One sketch on its way into a dataset."""

    split: str
    label: int
    record_id: str
    strokes: np.ndarray


@dataclasses.dataclass(frozen=True)
class SketchBatch:
    """Many sketches of one split on their way into a dataset, as flat arrays (no object per sketch).

    Sketch ``i`` is ``strokes[sum(lengths[:i]) : sum(lengths[:i + 1])]``.
    """

    split: str
    labels: np.ndarray  # int32 (n,)
    record_ids: list[str]
    strokes: np.ndarray  # (total_points, 3)
    lengths: np.ndarray  # int64 (n,)

    def __len__(self) -> int:
        return len(self.labels)


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

    Every array is memory-mapped (nothing is read until used); :meth:`sketch` reads one sketch, and
    the ``*_range`` methods and :meth:`rows` a contiguous range, with positioned reads instead, so a
    whole-split scan in chunks keeps only a chunk resident (mapped pages count towards RSS).
    """

    def __init__(self, folder: Path):
        self.strokes = np.load(folder / "strokes.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy", mmap_mode="r")
        self.ids = np.load(folder / "ids.npy", mmap_mode="r")
        self._path = folder / "strokes.npy"
        self._ids_path = folder / "ids.npy"
        self._offsets_path = folder / "offsets.npy"
        self._labels_path = folder / "labels.npy"
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

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Return the rows of sketches ``start:stop`` and their offsets into those rows (from 0).

        One positioned read of a contiguous range: a whole-split scan in chunks keeps only a chunk
        resident, where slicing the memory map would keep every page it touched.
        """
        offsets = self.offset_range(start, stop)
        first, last = int(offsets[0]), int(offsets[-1])
        rows = _read_range(self._path, self._data_start, np.dtype((np.float32, (3,))), first, last)
        return rows, offsets - first

    def offset_range(self, start: int, stop: int) -> np.ndarray:
        """Return ``offsets[start : stop + 1]``, read from the file."""
        return _read_range(self._offsets_path, self.offsets.offset, self.offsets.dtype, start, stop + 1)

    def label_range(self, start: int, stop: int) -> np.ndarray:
        """Return ``labels[start:stop]``, read from the file."""
        return _read_range(self._labels_path, self.labels.offset, self.labels.dtype, start, stop)

    def id_of(self, index: int) -> str:
        """Return the record id of sketch ``index`` (a positioned read: indexing the memory map would
        map the kernel's whole read-ahead window, ~100 KB, into the process for each lookup)."""
        return str(self.id_range(index, index + 1)[0])

    def id_range(self, start: int, stop: int) -> np.ndarray:
        """Return the record ids of sketches ``start:stop``, read from the file (nothing stays mapped)."""
        return _read_range(self._ids_path, self.ids.offset, self.ids.dtype, start, stop)


def _read_range(path: Path, data_start: int, dtype: np.dtype, start: int, stop: int) -> np.ndarray:
    """Return elements ``start:stop`` of a ``.npy`` file's array, with positioned reads into a new array."""
    out = np.empty(max(stop - start, 0), dtype=dtype)
    view = memoryview(out.view(np.uint8).reshape(-1))
    with open(path, "rb") as handle:
        done = 0
        while done < len(view):  # a read may return less than asked for
            got = os.preadv(handle.fileno(), [view[done:]], data_start + start * dtype.itemsize + done)
            if got == 0:
                raise OSError(f"{path}: ends before element {stop}")
            done += got
    return out


def read_info(dataset_dir: Path) -> DatasetInfo:
    """Return the metadata of a dataset folder."""
    return DatasetInfo(**json.loads((Path(dataset_dir) / "dataset.json").read_text()))


def open_split(dataset_dir: Path, split: str) -> SplitArrays:
    """Return memory-mapped arrays of one split of a dataset folder."""
    return SplitArrays(Path(dataset_dir) / split)


def batched_records(
    records: Iterable[SketchRecord | Rejection], size: int = 10_000
) -> Iterator[SketchBatch | Rejection]:
    """Yield ``records`` with their sketches gathered per split into flat :class:`SketchBatch` es of at
    most ``size`` (each yielded when full, the rest at the end); rejections pass through as they come.
    The same records give the same sequence, however they were read (one reader or several)."""
    pending: dict[str, list[SketchRecord]] = {split: [] for split in SPLITS}

    def flat(records: list[SketchRecord]) -> SketchBatch:
        parts = [np.asarray(r.strokes, dtype=np.float32).reshape(-1, 3) for r in records]
        return SketchBatch(
            records[0].split,
            np.fromiter((r.label for r in records), dtype=np.int32, count=len(records)),
            [r.record_id for r in records],
            np.concatenate(parts),
            np.fromiter((len(part) for part in parts), dtype=np.int64, count=len(parts)),
        )

    for record in records:
        if isinstance(record, Rejection):
            yield record
            continue
        bucket = pending[record.split]
        bucket.append(record)
        if len(bucket) >= size:
            yield flat(bucket)
            pending[record.split] = []
    for bucket in pending.values():
        if bucket:
            yield flat(bucket)


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
            if isinstance(record, SketchBatch):
                flush(record.split)  # keep the order records came in
                noop_points += _write_rows(writers[record.split], record, digest, quarantine, rejected)
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
    """Write a list of one split's sketches (see :func:`_write_rows`); return how many rows were dropped."""
    if not batch:
        return 0
    [rows] = batched_records(batch, size=len(batch))
    return _write_rows(writer, rows, digest, quarantine, rejected)


def _write_rows(writer: _SplitWriter, batch: SketchBatch, digest, quarantine, rejected: Counter) -> int:
    """Write a batch of one split's sketches without their ``(0, 0, 0)`` rows; return how many rows were dropped.

    See :func:`~pipeline.strokes.drop_noop_points`; a sketch left with no row is quarantined as "no
    movement". Vectorised over the batch's rows: no numpy call per sketch.
    """
    if not len(batch):
        return 0
    lengths = np.asarray(batch.lengths, dtype=np.int64)
    flat = np.ascontiguousarray(np.asarray(batch.strokes, dtype=np.float32).reshape(-1, 3))
    labels = np.asarray(batch.labels, dtype=np.int32)
    ids = batch.record_ids
    moving = (flat[:, 0] != 0) | (flat[:, 1] != 0) | (flat[:, 2] != 0)  # 5x faster than any(axis=1)
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
            record_id = ids[int(index)]
            rejection = Rejection(record_id.split(":")[0], record_id, "no movement", "")
            rejected[rejection.reason] += 1
            quarantine.write(json.dumps(dataclasses.asdict(rejection)) + "\n")
            digest.update(f"no movement|{record_id}".encode())
        keep = kept > 0
        ids = [record_id for record_id, ok in zip(ids, keep.tolist(), strict=True) if ok]
        labels = labels[keep]
        kept = kept[keep]
        if not ids:  # every sketch of the batch was quarantined
            return dropped
    joined = "\n".join(ids)
    if joined.count("\n") != len(ids) - 1:  # an id holds a line break: one id per line in ids.txt
        ids = [record_id.replace("\n", " ") for record_id in ids]
        joined = "\n".join(ids)
    writer.add_batch(labels, joined, max(map(len, ids)), flat, kept)
    digest.update(batch.split.encode())
    digest.update(labels.tobytes())
    digest.update(kept.tobytes())
    digest.update(joined.encode())
    digest.update(flat.data)
    return dropped


class _SplitWriter:
    """Appends one split's records to ``.npy`` files whose headers are written last (ids go through a
    text file first: their width is known only at the end)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.strokes = open(folder / "strokes.npy", "wb")  # noqa: SIM115 - closed in close()
        self.strokes.write(npy_header(np.float32, (0, 3)))  # rewritten with the row count in close()
        self.rows = 0
        self.offsets = open(folder / "offsets.npy", "wb")  # noqa: SIM115
        self.offsets.write(npy_header(np.int64, (0,)) + np.int64(0).tobytes())
        self.labels = open(folder / "labels.npy", "wb")  # noqa: SIM115
        self.labels.write(npy_header(np.int32, (0,)))
        self.ids = open(folder / "ids.txt", "w")  # noqa: SIM115
        self.count = 0
        self.id_width = 1
        self.per_label: Counter[int] = Counter()

    def add_batch(self, labels: np.ndarray, ids: str, id_width: int, strokes: np.ndarray, lengths: np.ndarray) -> None:
        """Append sketches: labels, ids (joined by line breaks; ``id_width`` the longest), rows, row counts."""
        strokes = np.ascontiguousarray(strokes, dtype=np.float32)
        self.strokes.write(strokes.data)
        self.offsets.write((self.rows + np.cumsum(lengths, dtype=np.int64)).tobytes())
        self.rows += len(strokes)
        self.labels.write(np.asarray(labels, dtype=np.int32).tobytes())
        self.ids.write(ids + "\n")
        self.id_width = max(self.id_width, id_width)
        self.per_label.update(dict(enumerate(np.bincount(labels[labels >= 0]).tolist())))
        self.per_label.update(labels[labels < 0].tolist())
        self.count += len(labels)

    def close(self, classes: list[str]) -> dict[str, int]:
        for handle, dtype, shape in (
            (self.strokes, np.float32, (self.rows, 3)),
            (self.offsets, np.int64, (self.count + 1,)),
            (self.labels, np.int32, (self.count,)),
        ):
            handle.seek(0)
            handle.write(npy_header(dtype, shape))
            handle.close()
        self.ids.close()
        raw = self.folder
        if self.count:
            dtype = np.dtype(f"<U{self.id_width}")
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (self.count,)}
            with open(raw / "ids.txt") as lines, open(raw / "ids.npy", "wb") as sink:
                np.lib.format.write_array_header_1_0(sink, header)
                while chunk := lines.readlines(_CHUNK * 16):  # about half a million ids at a time
                    sink.write(np.array([line[:-1] for line in chunk], dtype=dtype).tobytes())
        else:
            np.save(raw / "ids.npy", np.zeros(0, dtype="<U1"))
        (raw / "ids.txt").unlink()
        counts = {name: self.per_label.get(i, 0) for i, name in enumerate(classes)}
        unknown = self.count - sum(counts.values())
        if unknown:  # left for validation to quarantine, but counted
            counts["<unknown>"] = unknown
        return counts


_HEADER_BYTES = 128  # a fixed-size .npy header, so that it can be rewritten once the row count is known


def npy_header(dtype, shape: tuple[int, ...]) -> bytes:
    """Return a version 1.0 ``.npy`` header of exactly :data:`_HEADER_BYTES` bytes (padded with spaces)."""
    description = repr(
        {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    )
    prefix = np.lib.format.magic(1, 0)
    length = _HEADER_BYTES - len(prefix) - 2
    return prefix + length.to_bytes(2, "little") + description.ljust(length - 1).encode("latin1") + b"\n"


def write_npy_from_chunks(
    path: Path, chunks: Iterable[np.ndarray], dtype: np.dtype, row_shape: tuple[int, ...], rows: int | None = None
) -> None:
    """Write a ``.npy`` array from chunks of rows, with plain writes (nothing mapped or held beyond one
    chunk); the header is written last when ``rows`` is not given.

    Raises:
        ValueError: the chunks do not hold ``rows`` rows.
    """
    written = 0
    with open(path, "wb") as sink:
        sink.write(npy_header(dtype, (rows or 0, *row_shape)))
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            sink.write(chunk.data)
            written += len(chunk)
        if rows is None:
            sink.seek(0)
            sink.write(npy_header(dtype, (written, *row_shape)))
    if rows is not None and written != rows:
        raise ValueError(f"{path}: wrote {written} rows, expected {rows}")
