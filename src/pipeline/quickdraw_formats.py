"""Readers (and writers, for tests and exports) of the Quick, Draw! ndjson files and the TensorFlow
tutorial's TFRecord shards.

Readers yield :class:`~pipeline.dataset.SketchRecord` for usable sketches and
:class:`~pipeline.dataset.Rejection` for every other record, naming the file and the record.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import json
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.dataset import Rejection, SketchRecord
from pipeline.files import check_source_file
from pipeline.strokes import StrokeFormatError, polylines_to_stroke3, simplify_rdp, stroke3_to_polylines

NDJSON_PREFIXES = ("full_simplified_", "full_raw_", "simplified_", "raw_")


def split_of(key: str, valid_share: float = 0.05, test_share: float = 0.05) -> str:
    """Return the split a record belongs to, from a hash of its key: stable across runs and machines."""
    position = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32
    if position < test_share:
        return "test"
    if position < test_share + valid_share:
        return "valid"
    return "train"


def class_files(data_dir: Path, pattern: str, prefixes: Sequence[str] = ()) -> dict[str, Path]:
    """Return class name -> file, sorted by class name, for a folder with one file per class.

    The class name is the file name without its extension and any of ``prefixes``.

    Raises:
        StrokeFormatError: the folder is missing or empty, two files name the same class, or a file is not a
            regular file inside the folder (see :func:`pipeline.files.check_source_file`).
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise StrokeFormatError(f"{data_dir}: no such folder")
    files: dict[str, Path] = {}
    for path in sorted(data_dir.glob(pattern)):
        check_source_file(path, data_dir)
        name = path.name.split(".")[0]
        for prefix in prefixes:
            name = name.removeprefix(prefix)
        if name in files:
            raise StrokeFormatError(f"{data_dir}: class {name!r} is named twice: {files[name].name} and {path.name}")
        files[name] = path
    if not files:
        raise StrokeFormatError(f"{data_dir}: holds no {pattern} files")
    return dict(sorted(files.items()))


# ndjson ---------------------------------------------------------------------------------------


def simplify_raw_strokes(strokes: list[np.ndarray], epsilon: float = 2.0) -> list[np.ndarray]:
    """Return raw device-coordinate strokes the way Quick, Draw! simplified them.

    Align to the top-left corner, scale uniformly so the longer side spans 0-255, resample every
    stroke at 1-pixel spacing, simplify with Ramer-Douglas-Peucker (``epsilon``), round to pixels.
    """
    points = np.concatenate(strokes)
    low = points.min(axis=0)
    extent = float((points.max(axis=0) - low).max()) or 1.0
    out = []
    for stroke in strokes:
        scaled = (stroke - low) * (255.0 / extent)
        steps = np.hypot(*np.diff(scaled, axis=0).T) if len(scaled) > 1 else np.zeros(0)
        distance = np.concatenate([[0.0], np.cumsum(steps)])
        if distance[-1] > 0:
            samples = np.linspace(0.0, distance[-1], int(np.ceil(distance[-1])) + 1)
            scaled = np.column_stack([np.interp(samples, distance, scaled[:, i]) for i in range(2)])
        out.append(np.rint(simplify_rdp(scaled, epsilon)))
    return out


def _parse_drawing(drawing) -> tuple[list[np.ndarray], bool]:
    """Return the strokes of an ndjson ``drawing`` as ``(k, 2)`` arrays and whether it is raw (has times)."""
    if not isinstance(drawing, list):
        raise ValueError("drawing is not a list of strokes")
    if not drawing:
        raise ValueError("empty drawing")
    strokes, raw = [], False
    if (
        sum(len(stroke[0]) for stroke in drawing if isinstance(stroke, list) and stroke and isinstance(stroke[0], list))
        > MAX_RAW_POINTS
    ):
        raise ValueError(f"more than {MAX_RAW_POINTS:,} points")
    for index, stroke in enumerate(drawing):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3) or not all(isinstance(c, list) for c in stroke):
            raise ValueError(f"stroke {index} is not [xs, ys] or [xs, ys, ts]")
        if len({len(c) for c in stroke}) != 1:
            counts, names = "/".join(str(len(c)) for c in stroke), "/".join(("xs", "ys", "ts")[: len(stroke)])
            raise ValueError(f"stroke {index} has {counts} {names} values")
        if not stroke[0]:
            raise ValueError(f"stroke {index} is empty")
        raw = raw or len(stroke) == 3
        strokes.append(_numeric_stroke(stroke, index)[:2].T)
    if not all(np.isfinite(s).all() for s in strokes):
        raise ValueError("non-finite coordinate")
    return strokes, raw


_NUMBERS = frozenset({int, float})


def _numeric_stroke(stroke: list, index: int) -> np.ndarray:
    """Return one stroke's ``[xs, ys(, ts)]`` as a float array, or raise saying why it is not one.

    Only JSON numbers count (checked by type, at C speed): numpy would read ``"12"`` as 12, ``true`` as
    1 and a list nested one level deeper as a 3-d array, where a real drawing has none of these. An
    integer too large for a float raises ``OverflowError``.
    """
    if not all(set(map(type, axis)) <= _NUMBERS for axis in stroke):
        raise ValueError(f"stroke {index} has a non-numeric coordinate")
    return np.array(stroke, dtype=np.float64)


def drawing_to_stroke3(drawing) -> np.ndarray:
    """Return an ndjson ``drawing`` (simplified, or raw with times) as a stroke-3 sketch.

    Raw drawings are simplified the way the published data was (:func:`simplify_raw_strokes`).
    Raises ``ValueError`` saying what is wrong with it.
    """
    return _to_stroke3(*_parse_drawing(drawing))


def _to_stroke3(strokes: list[np.ndarray], raw: bool) -> np.ndarray:
    return polylines_to_stroke3(simplify_raw_strokes(strokes) if raw else strokes)


MAX_RECORD_BYTES = 1_000_000  # an ndjson line; real drawings, raw ones included, are under 100 KB
MAX_KEY_ID_CHARS = 64  # real key_ids have 16 digits
MAX_RAW_POINTS = 50_000  # points of one drawing before simplification (resampling costs memory per point)


def iter_ndjson_records(
    files: dict[str, Path],
    classes: list[str],
    recognized_only: bool = True,
    max_per_class: int | None = None,
    valid_share: float = 0.05,
    test_share: float = 0.05,
) -> Iterator[SketchRecord | Rejection]:
    """Yield the sketches of Quick, Draw! ndjson files (simplified or raw), one class per file.

    The class comes from each line's ``word``; the split from a hash of its ``key_id`` (``valid_share``
    and ``test_share`` of the keys go to valid and test). Raw drawings are simplified as the
    published data was (see :func:`simplify_raw_strokes`).

    Every non-blank line comes out as a sketch or a :class:`Rejection`: broken ones (not UTF-8, not
    JSON, over :data:`MAX_RECORD_BYTES`, a ``key_id`` seen before in the file, a field of the wrong
    type, a coordinate out of range) with their reason, and those left out on purpose (not
    recognized, over ``max_per_class``) marked skipped. Limits are checked before the work they guard.
    A gzip-compressed file is read through gzip; where it breaks off, the rest is one rejection.
    Each file is read on its own (``max_per_class`` and repeated ``key_id`` s count within it), so files
    read in separate processes give the same records (:func:`pipeline.ingest.iter_ndjson_parallel`).
    """
    label_of = {name: i for i, name in enumerate(classes)}
    for path in files.values():
        taken: Counter[tuple[str, str]] = Counter()
        seen_keys: set[str] = set()  # validation finds a drawing repeated in another file
        with open_ndjson(path) as lines:
            for number, raw_line in _numbered_lines(lines, path.name):
                if isinstance(raw_line, Rejection):
                    yield raw_line
                    break
                if number == 1:
                    raw_line = raw_line.removeprefix(codecs.BOM_UTF8)  # a file saved by an editor that marks UTF-8
                if not raw_line.strip():
                    continue
                outcome = _ndjson_record(path.name, number, raw_line, label_of, recognized_only, seen_keys)
                if isinstance(outcome, Rejection):
                    yield outcome
                    continue
                word, key_id, strokes, raw = outcome
                split = split_of(key_id, valid_share, test_share)
                if max_per_class is not None and taken[word, split] >= max_per_class:
                    yield Rejection(path.name, f"line {number}", f"over max_per_class in {split}", skipped=True)
                    continue
                try:
                    sketch = _to_stroke3(strokes, raw)
                except (ValueError, OverflowError, MemoryError) as exc:
                    yield Rejection(path.name, f"line {number}", "cannot simplify the drawing", str(exc)[:80])
                    continue
                taken[word, split] += 1
                yield SketchRecord(split, label_of[word], f"{path.name}:{number}:{key_id}", sketch)


def ndjson_key_starts(record_ids: np.ndarray) -> np.ndarray:
    """Return where the ``key_id`` begins in each ndjson record id (``<file>.ndjson:<line>:<key_id>``).

    A Quick, Draw! ``key_id`` names one drawing wherever it appears, so two records with the same one
    are the same drawing, even in two class files. (A line without a ``key_id`` has ``<file>:<line>``.)
    """
    ids = np.asarray(record_ids).astype(str)
    return np.strings.find(ids, ":", np.strings.find(ids, ".ndjson:") + len(".ndjson:")) + 1


GZIP_MAGIC = b"\x1f\x8b"


def open_ndjson(path: Path):
    """Open an ndjson file for reading bytes, through gzip when it is gzip-compressed (whatever its name)."""
    with open(path, "rb") as head:
        compressed = head.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _numbered_lines(lines, source: str) -> Iterator[tuple[int, bytes | Rejection]]:
    """Yield ``(number, line)`` from 1; a compressed file that breaks off ends with a :class:`Rejection`
    for the rest of it (what was read before stays)."""
    number = 0
    try:
        for number, raw_line in enumerate(lines, start=1):
            yield number, raw_line
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        yield number + 1, Rejection(source, f"line {number + 1}", "compressed file broken here", str(exc)[:80])


EXCERPT_CHARS = 32


def _excerpt(value) -> str:
    """Return a short, escaped excerpt of a value from a source file, for the quarantine and the output.

    Never more: a class file may be anything (a link to a system file, say), and what the pipeline
    echoes of it must not reproduce it.
    """
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:EXCERPT_CHARS]) + ("..." if len(text) > EXCERPT_CHARS else "")


def _ndjson_record(
    source: str, number: int, raw_line: bytes, label_of: dict[str, int], recognized_only: bool, seen_keys: set[str]
) -> tuple[str, str, list[np.ndarray], bool] | Rejection:
    """Return ``(word, key_id, strokes, raw)`` of one ndjson line, or the :class:`Rejection` saying why not."""
    record = f"line {number}"
    if len(raw_line) > MAX_RECORD_BYTES:
        return Rejection(source, record, "record too long", f"{len(raw_line):,} bytes > {MAX_RECORD_BYTES:,}")
    try:
        line = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejection(source, record, "not UTF-8", f"byte {exc.start}: {raw_line[exc.start : exc.start + 4]!r}")
    try:
        item = json.loads(line)
    except json.JSONDecodeError as exc:
        return Rejection(source, record, "not JSON", f"{exc.msg}: {_excerpt(line)}")
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        return Rejection(source, record, "not JSON", str(exc)[:80])
    except RecursionError:
        return Rejection(source, record, "not JSON", "nested too deeply")
    if not isinstance(item, dict) or "drawing" not in item or "word" not in item:
        missing = "drawing" if not isinstance(item, dict) or "drawing" not in item else "word"
        return Rejection(source, record, f"no {missing!r} field")
    word = item["word"]
    if not isinstance(word, str) or word not in label_of:
        return Rejection(source, record, "unknown class", _excerpt(word))
    recognized = item.get("recognized")
    if recognized is not None and not isinstance(recognized, bool):
        return Rejection(source, record, "recognized is not true or false", _excerpt(recognized))
    if recognized_only and recognized is False:
        return Rejection(source, record, "not recognized", word, skipped=True)
    key_id = item.get("key_id")
    if key_id is None or key_id == "":
        key_id = f"{source}:{number}"
    elif not isinstance(key_id, str | int) or isinstance(key_id, bool):
        return Rejection(source, record, "key_id is not a string or number", _excerpt(key_id))
    key_id = str(key_id)
    if len(key_id) > MAX_KEY_ID_CHARS:
        return Rejection(source, record, "key_id too long", f"{len(key_id):,} characters > {MAX_KEY_ID_CHARS}")
    if key_id in seen_keys:
        return Rejection(source, record, "duplicate key_id", key_id)
    seen_keys.add(key_id)
    try:
        strokes, raw = _parse_drawing(item["drawing"])
    except OverflowError:
        return Rejection(source, record, "coordinate out of range")
    except ValueError as exc:
        return Rejection(source, record, str(exc))
    return word, key_id, strokes, raw


def write_ndjson(path: Path, word: str, sketches: Sequence[np.ndarray], raw: bool = False, first_key: int = 1) -> Path:
    """Write stroke-3 sketches as Quick, Draw! ndjson lines (``raw`` adds a time list per stroke)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as sink:
        for offset, sketch in enumerate(sketches):
            drawing = []
            clock = 0
            for stroke in stroke3_to_polylines(sketch):
                entry = [stroke[:, 0].tolist(), stroke[:, 1].tolist()]
                if raw:
                    entry.append(list(range(clock, clock + 10 * len(stroke), 10)))
                    clock += 10 * len(stroke) + 100
                drawing.append(entry)
            line = {"word": word, "countrycode": "GB", "timestamp": "2017-03-01 00:00:00.00000 UTC",
                    "recognized": True, "key_id": str(first_key + offset), "drawing": drawing}  # fmt: skip
            sink.write(json.dumps(line) + "\n")
    return path


# TFRecord ------------------------------------------------------------------------------------


def tfrecord_classes(data_dir: Path) -> tuple[list[str], list[Path]]:
    """Return the class names (from the ``*.classes`` file) and the shard files of a tutorial folder."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise StrokeFormatError(f"{data_dir}: no such folder")
    lists = sorted(data_dir.glob("*.classes"))
    shards = sorted(p for p in data_dir.glob("*.tfrecord*") if p.suffix != ".classes")
    for path in [*lists, *shards]:
        check_source_file(path, data_dir)
    if not shards:
        raise StrokeFormatError(f"{data_dir}: holds no .tfrecord shards")
    if not lists:
        raise StrokeFormatError(f"{data_dir}: no .classes file lists the class names")
    names = [line.strip() for line in lists[0].read_text().splitlines() if line.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # a class index would mean two classes
        raise StrokeFormatError(f"{lists[0]}: lists {_excerpt(repeated[0])} more than once")
    for other in lists[1:]:
        if [line.strip() for line in other.read_text().splitlines() if line.strip()] != names:
            raise StrokeFormatError(f"{data_dir}: {lists[0].name} and {other.name} list different classes")
    return names, shards


def iter_tfrecord_records(
    shards: list[Path],
    all_classes: list[str],
    classes: list[str],
    max_per_class: int | None = None,
    valid_share: float = 0.05,
    test_share: float = 0.05,
) -> Iterator[SketchRecord | Rejection]:
    """Yield the sketches of TensorFlow quickdraw tutorial shards (``ink``, ``shape``, ``class_index``).

    Shards whose name starts with ``eval`` are the test split, and the others are split into train
    and valid (``valid_share``) by a hash of the record's place. Without eval shards, ``test_share``
    of the records go to test the same way.
    """
    if any(path.name.startswith("eval") for path in shards):
        test_share = 0.0
    import tensorflow as tf

    label_of = {name: i for i, name in enumerate(classes)}
    taken: Counter[tuple[str, str]] = Counter()
    for path in shards:
        for index, raw_record in enumerate(_readable_records(path)):
            record = f"record {index}"
            if isinstance(raw_record, Rejection):
                yield raw_record
                break
            try:
                features = tf.train.Example.FromString(raw_record).features.feature
                ink = np.asarray(features["ink"].float_list.value, dtype=np.float32)
                shape = list(features["shape"].int64_list.value)
                class_index = int(features["class_index"].int64_list.value[0])
            except Exception as exc:  # a corrupt record: protobuf raises its own errors
                yield Rejection(path.name, record, "not a quickdraw example", str(exc)[:120])
                continue
            if len(shape) != 2 or shape[1] != 3 or shape[0] * 3 != len(ink) or shape[0] < 1:
                yield Rejection(path.name, record, "ink does not match its shape", f"shape {shape}, {len(ink)} values")
                continue
            if not 0 <= class_index < len(all_classes):
                yield Rejection(path.name, record, "unknown class", str(class_index))
                continue
            name = all_classes[class_index]
            if name not in label_of:
                yield Rejection(path.name, record, "class not selected", name, skipped=True)
                continue
            split = (
                "test" if path.name.startswith("eval") else split_of(f"{path.name}:{index}", valid_share, test_share)
            )
            if max_per_class is not None and taken[name, split] >= max_per_class:
                yield Rejection(path.name, record, f"over max_per_class in {split}", skipped=True)
                continue
            taken[name, split] += 1
            yield SketchRecord(split, label_of[name], f"{path.name}:{index}", ink.reshape(shape))


def _readable_records(path: Path) -> Iterator[bytes | Rejection]:
    """Yield a shard's serialized records; where it is truncated or corrupt, one :class:`Rejection` and stop.

    The records before the damage are kept: a shard cut short loses its tail, not its whole content.
    """
    import tensorflow as tf

    records = tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    index = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            return
        except tf.errors.DataLossError as exc:
            detail = str(exc).splitlines()[0][:120] if str(exc) else "DataLossError"
            yield Rejection(
                path.name, f"record {index}", "truncated or corrupt shard; later records unreadable", detail
            )
            return
        index += 1
        yield record


def write_tfrecord(path: Path, sketches: Sequence[np.ndarray], class_indices: Sequence[int]) -> Path:
    """Write sketches as a tutorial-format TFRecord shard."""
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for sketch, class_index in zip(sketches, class_indices, strict=True):
            sketch = np.asarray(sketch, dtype=np.float32)
            feature = {
                "ink": tf.train.Feature(float_list=tf.train.FloatList(value=sketch.ravel())),
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(sketch.shape))),
                "class_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(class_index)])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return path
