"""Streaming readers for scoring: any sketch file, unlabelled, in chunks of flat arrays.

Ingest reads one class per file and needs each record's class; scoring takes whatever users send: a
Quick, Draw! ndjson file of mixed words (simplified or raw, gzip or not), sketch-rnn ``.npz`` class
files, tutorial TFRecord shards, or stroke-3 ``.json`` files. Every record comes out as part of a
:class:`SketchChunk` or as a :class:`~pipeline.dataset.Rejection` naming its file and record, so that
records in = scored + quarantined. Memory is bounded by the chunk size (an ``.npz`` file or a ``.json``
file is read whole: they are bounded by :data:`~pipeline.files.MAX_SKETCH_FILE_BYTES`).
"""

from __future__ import annotations

import codecs
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.dataset import Rejection
from pipeline.files import MAX_SKETCH_FILE_BYTES, check_source_file
from pipeline.quickdraw_formats import (
    MAX_KEY_ID_CHARS,
    MAX_RECORD_BYTES,
    _excerpt,
    _numbered_lines,
    _parse_drawing,
    _readable_records,
    _to_stroke3,
    open_ndjson,
)
from pipeline.strokes import StrokeFormatError, load_sketchrnn_npz

SCORE_SUFFIXES = (".ndjson", ".ndjson.gz", ".npz", ".tfrecord", ".json")
# the ``format`` column's values: the kind of drawing, not the file type (a sketch-rnn file holds simplified ones)
FORMATS = ("simplified", "raw", "tfrecord", "stroke3")


@dataclasses.dataclass
class SketchChunk:
    """Sketches as flat arrays: sketch ``i`` is ``rows[starts[i] : starts[i] + lengths[i]]``, from file
    ``sources[i]``."""

    sources: list[str]
    records: list[str]  # where in the file: "line 3", "train[12]", "record 7", "[0]"
    key_ids: list[str | None]  # the drawing's key_id where the format has one
    words: list[str | None]  # the class the file names (ndjson word), where it has one
    formats: list[str]
    rows: np.ndarray  # float32 (points, 3) stroke-3
    lengths: np.ndarray  # int64 (n,)
    durations: np.ndarray  # float64 (n,) seconds from first to last pen point; NaN without times

    def __len__(self) -> int:
        return len(self.lengths)


class _ChunkBuilder:
    """Collects sketches, of one file or of several, until ``size`` of them make a chunk."""

    def __init__(self, size: int):
        self.size = size
        self._reset()

    def _reset(self) -> None:
        self.sources, self.records, self.key_ids, self.words, self.formats = [], [], [], [], []
        self.sketches: list[np.ndarray] = []
        self.durations: list[float] = []

    def add(self, source: str, record: str, sketch: np.ndarray, fmt: str, key_id=None, word=None, duration=np.nan):
        self.sources.append(source)
        self.records.append(record)
        self.key_ids.append(key_id)
        self.words.append(word)
        self.formats.append(fmt)
        self.sketches.append(sketch)
        self.durations.append(duration)

    @property
    def full(self) -> bool:
        return len(self.records) >= self.size

    def take(self) -> SketchChunk | None:
        if not self.records:
            return None
        lengths = np.fromiter(map(len, self.sketches), dtype=np.int64, count=len(self.sketches))
        rows = np.concatenate(self.sketches).astype(np.float32, copy=False)
        chunk = SketchChunk(
            self.sources, self.records, self.key_ids, self.words, self.formats, rows, lengths,
            np.asarray(self.durations, dtype=np.float64),
        )  # fmt: skip
        self._reset()
        return chunk


def score_files(paths: list[str | Path]) -> list[Path]:
    """Return the files ``paths`` stand for (a folder: its sketch files, sorted), each checked to be a
    regular file.

    Raises:
        StrokeFormatError: naming a path that is missing, not a regular file, an empty folder, or of a
            kind that is not scored.
    """
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.name.endswith(SCORE_SUFFIXES) and not p.is_dir())
            if not inside:
                raise StrokeFormatError(f"{path}: a folder with no {', '.join(SCORE_SUFFIXES)} file")
            for item in inside:
                check_source_file(item, path)
            files += inside
            continue
        check_source_file(path)
        if not path.name.endswith(SCORE_SUFFIXES):
            raise StrokeFormatError(f"{path}: not a sketch file (expected {', '.join(SCORE_SUFFIXES)})")
        files.append(path)
    return files


CHUNK_SKETCHES = 8192  # sketches per chunk: sorted by length into batches, so larger chunks pad less


def iter_chunks(paths: Path | list[Path], size: int = CHUNK_SKETCHES) -> Iterator[SketchChunk | Rejection]:
    """Yield the sketches of the files, in order, in chunks of up to ``size`` (a chunk may span files), and
    a :class:`Rejection` for every record that is not a sketch (a file that cannot be read at all is one
    rejection)."""
    builder = _ChunkBuilder(size)
    for path in [paths] if isinstance(paths, str | Path) else paths:
        path = Path(path)
        for item in _records(path):
            if isinstance(item, Rejection):
                yield item
                continue
            builder.add(str(path), *item)
            if builder.full:
                yield builder.take()
    chunk = builder.take()
    if chunk is not None:
        yield chunk


def _records(path: Path) -> Iterator[tuple | Rejection]:
    """Yield ``(record, stroke-3, format, key_id, word, duration)`` per sketch of one file, or a Rejection."""
    name = path.name
    if name.endswith((".ndjson", ".ndjson.gz")):
        yield from _ndjson_records(path)
    elif name.endswith(".npz"):
        yield from _npz_records(path)
    elif name.endswith(".tfrecord"):
        yield from _tfrecord_records(path)
    else:
        yield from _json_records(path)


MAX_EXPANSION = 200  # a gzip file unpacking to more than this many times its size (past 8 MiB) is refused
EXPANSION_CHECKED_FROM = 8 << 20


class ExpansionError(OSError):
    """A compressed file that unpacks to far more than any real drawings would (a decompression bomb)."""


def _bounded_lines(stream, limit: int = MAX_RECORD_BYTES) -> Iterator[bytes | None]:
    """Yield the lines of a binary stream, each read up to ``limit`` + 1 bytes: a longer line is skipped
    unread in pieces and stands as ``None`` (one line of gigabytes must not be held in memory). A gzip
    stream that unpacks to over :data:`MAX_EXPANSION` times what it has read raises :class:`ExpansionError`
    (ended as a broken compressed file: the lines before it stay)."""
    packed = getattr(stream, "fileobj", None)
    unpacked = 0
    while True:
        line = stream.readline(limit + 1)
        unpacked += len(line)
        if packed is not None and unpacked > EXPANSION_CHECKED_FROM and unpacked > MAX_EXPANSION * packed.tell():
            raise ExpansionError(f"unpacks to over {MAX_EXPANSION} times its size")
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while line and not line.endswith(b"\n"):  # the rest of the long line
            line = stream.readline(1 << 20)
            unpacked += len(line)
            if packed is not None and unpacked > MAX_EXPANSION * max(packed.tell(), 1) > EXPANSION_CHECKED_FROM:
                raise ExpansionError(f"unpacks to over {MAX_EXPANSION} times its size")
        yield None


def _ndjson_records(path: Path) -> Iterator[tuple | Rejection]:
    with open_ndjson(path) as stream:
        for number, raw_line in _numbered_lines(_bounded_lines(stream), str(path)):
            if raw_line is None:
                yield Rejection(str(path), f"line {number}", "record too long", f"over {MAX_RECORD_BYTES:,} bytes")
                continue
            if isinstance(raw_line, Rejection):
                yield raw_line
                break
            if number == 1:
                raw_line = raw_line.removeprefix(codecs.BOM_UTF8)
            if not raw_line.strip():
                continue
            outcome = _ndjson_drawing(str(path), number, raw_line)
            yield outcome if isinstance(outcome, Rejection) else (f"line {number}", *outcome)


def _ndjson_drawing(source: str, number: int, raw_line: bytes):
    """Return ``(stroke-3, format, key_id, word, duration)`` of one ndjson line, or a :class:`Rejection`."""
    record = f"line {number}"
    if len(raw_line) > MAX_RECORD_BYTES:
        return Rejection(source, record, "record too long", f"{len(raw_line):,} bytes > {MAX_RECORD_BYTES:,}")
    try:
        item = json.loads(raw_line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejection(source, record, "not UTF-8", f"byte {exc.start}")
    except RecursionError:
        return Rejection(source, record, "not JSON", "nested too deeply")
    except ValueError as exc:  # json.JSONDecodeError, or an integer past Python's digit limit
        return Rejection(source, record, "not JSON", str(exc)[:80])
    if not isinstance(item, dict) or "drawing" not in item:
        return Rejection(source, record, "no 'drawing' field")
    key_id, word = item.get("key_id"), item.get("word")
    if key_id is not None and (not isinstance(key_id, str | int) or isinstance(key_id, bool)):
        return Rejection(source, record, "key_id is not a string or number", _excerpt(key_id))
    key_id = None if key_id in (None, "") else str(key_id)
    if key_id is not None and len(key_id) > MAX_KEY_ID_CHARS:
        return Rejection(source, record, "key_id too long", f"{len(key_id):,} characters > {MAX_KEY_ID_CHARS}")
    if word is not None and not isinstance(word, str):
        return Rejection(source, record, "word is not a string", _excerpt(word))
    try:
        strokes, raw = _parse_drawing(item["drawing"])
        sketch = _to_stroke3(strokes, raw)
    except OverflowError:
        return Rejection(source, record, "coordinate out of range")
    except (ValueError, MemoryError) as exc:
        return Rejection(source, record, str(exc)[:80])
    duration = np.nan
    if raw:  # times in milliseconds: [xs, ys, ts] per stroke (checked numeric by _parse_drawing)
        times = [t for stroke in item["drawing"] if len(stroke) == 3 for t in (stroke[2][0], stroke[2][-1])]
        duration = (max(times) - min(times)) / 1000.0
    return sketch, "raw" if raw else "simplified", key_id, (word[:MAX_KEY_ID_CHARS] if word else None), duration


def _npz_records(path: Path) -> Iterator[tuple | Rejection]:
    try:
        check_source_file(path, max_bytes=MAX_SKETCH_FILE_BYTES)
        splits = load_sketchrnn_npz(path)
    except StrokeFormatError as exc:
        yield Rejection(str(path), "whole file", "not a readable sketch-rnn npz file", str(exc)[-120:])
        return
    for split, sketches in splits.items():
        for index, sketch in enumerate(sketches):
            yield f"{split}[{index}]", sketch, "simplified"


def _tfrecord_records(path: Path) -> Iterator[tuple | Rejection]:
    import tensorflow as tf

    for index, raw_record in enumerate(_readable_records(path)):
        if isinstance(raw_record, Rejection):
            yield dataclasses.replace(raw_record, source=str(path))
            break
        record = f"record {index}"
        try:
            features = tf.train.Example.FromString(raw_record).features.feature
            ink = np.asarray(features["ink"].float_list.value, dtype=np.float32)
            shape = list(features["shape"].int64_list.value)
        except Exception as exc:  # protobuf raises its own errors for a corrupt record
            yield Rejection(str(path), record, "not a quickdraw example", str(exc)[:80])
            continue
        if len(shape) != 2 or shape[1] != 3 or shape[0] < 1 or shape[0] * 3 != len(ink):
            yield Rejection(str(path), record, "ink does not match its shape", f"shape {shape}, {len(ink)} values")
            continue
        yield record, ink.reshape(shape), "tfrecord"


def _json_records(path: Path) -> Iterator[tuple | Rejection]:
    from pipeline.serving import _decode, _parse_json_sketches

    try:
        check_source_file(path, max_bytes=MAX_SKETCH_FILE_BYTES)
        text = _decode(path.read_bytes().removeprefix(codecs.BOM_UTF8))
        sketches = _parse_json_sketches(text, str(path))
    except (StrokeFormatError, ValueError) as exc:
        yield Rejection(str(path), "whole file", "not a stroke-3 JSON file", str(exc)[-120:])
        return
    for index, sketch in enumerate(sketches):
        yield f"[{index}]", sketch, "stroke3"


def ndjson_kind(data_dir: Path) -> str:
    """Return ``raw`` if the first drawing of the first ndjson file in ``data_dir`` has times, else
    ``simplified`` (the official files hold one kind each)."""
    for path in sorted(Path(data_dir).glob("*.ndjson*")):
        check_source_file(path, data_dir)
        with open_ndjson(path) as lines:
            for raw_line in lines:
                if raw_line.strip():
                    try:
                        drawing = json.loads(raw_line[:MAX_RECORD_BYTES]).get("drawing") or [[]]
                    except (ValueError, AttributeError):
                        return "simplified"
                    return "raw" if isinstance(drawing[0], list) and len(drawing[0]) == 3 else "simplified"
    return "simplified"
