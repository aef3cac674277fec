"""Scoring without a registered model: readers of every format, descriptors, cleaning, padding, parts."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from pipeline.dataset import Rejection
from pipeline.features import pad_batch, padded
from pipeline.quickdraw_formats import write_ndjson, write_tfrecord
from pipeline.scoring.descriptors import sketch_descriptors
from pipeline.scoring.engine import clean, merge_parts, partition, quarantine_path
from pipeline.scoring.readers import SketchChunk, iter_chunks, ndjson_kind, score_files
from pipeline.strokes import StrokeFormatError, drop_noop_points, write_sketchrnn_npz
from pipeline.synthetic import draw_sketch

SQUARE = np.array([[5, 5, 0], [10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1]], dtype=np.float32)
TWO_STROKES = np.array([[0, 0, 0], [4, 0, 1], [0, 3, 0], [0, 5, 1]], dtype=np.float32)


def _chunk(sketches: list[np.ndarray], durations=None) -> SketchChunk:
    n = len(sketches)
    return SketchChunk(
        ["s"] * n, [f"[{i}]" for i in range(n)], [None] * n, [None] * n, ["simplified"] * n,
        np.concatenate(sketches).astype(np.float32) if n else np.zeros((0, 3), np.float32),
        np.array([len(s) for s in sketches], dtype=np.int64),
        np.full(n, np.nan) if durations is None else np.asarray(durations, dtype=np.float64),
    )  # fmt: skip


def test_descriptors_of_known_sketches():
    chunk = _chunk([SQUARE, TWO_STROKES])
    d = sketch_descriptors(chunk.rows, chunk.lengths, chunk.durations)
    np.testing.assert_array_equal(d["points"], [5, 4])
    np.testing.assert_array_equal(d["strokes"], [1, 2])
    np.testing.assert_array_equal(d["width"], [10, 4])
    np.testing.assert_array_equal(d["height"], [10, 8])
    np.testing.assert_allclose(d["aspect"], [0.5, 4 / 12])
    # the square never lifts its pen; the second sketch travels 4 down, 3 up (pen up), 5 down
    np.testing.assert_allclose(d["pen_up_share"], [0.0, 3 / 12])
    assert np.isnan(d["duration_s"]).all()


def test_descriptors_of_a_chunk_equal_those_of_each_sketch_alone():
    rng = np.random.default_rng(3)
    sketches = [draw_sketch(name, rng).astype(np.float32) for name in ("circle", "star", "house", "arrow") * 5]
    together = sketch_descriptors(*_flat(sketches))
    for i, sketch in enumerate(sketches):
        alone = sketch_descriptors(*_flat([sketch]))
        for name, values in alone.items():
            np.testing.assert_allclose(together[name][i], values[0], rtol=1e-6, equal_nan=True)


def test_a_quarter_turn_swaps_width_and_height_and_mirrors_the_aspect():
    rng = np.random.default_rng(0)
    sketch = draw_sketch("arrow", rng).astype(np.float32)
    turned = np.column_stack([-sketch[:, 1], sketch[:, 0], sketch[:, 2]])
    d = sketch_descriptors(*_flat([sketch, turned]))
    assert d["width"][1] == pytest.approx(d["height"][0]) and d["height"][1] == pytest.approx(d["width"][0])
    assert d["aspect"][1] == pytest.approx(1 - d["aspect"][0], abs=1e-6)


def _flat(sketches):
    return np.concatenate(sketches), np.array([len(s) for s in sketches]), np.full(len(sketches), np.nan)


def test_clean_quarantines_what_a_model_cannot_read_and_drops_noop_rows():
    bad_pen = SQUARE.copy()
    bad_pen[2, 2] = 2
    not_finite = SQUARE.copy()
    not_finite[1, 0] = np.nan
    far = SQUARE.copy()
    far[1, 0] = 5000
    still = np.zeros((3, 3), np.float32)
    chunk = _chunk([TWO_STROKES, bad_pen, not_finite, still, far, SQUARE])
    rows, lengths, kept, refused = clean(chunk, max_abs_delta=1000.0)
    assert kept.tolist() == [0, 5]
    assert dict(refused) == {
        1: "pen value other than 0 or 1",
        2: "a value is not finite",
        3: "no movement (every row is 0, 0, 0)",
        4: "moves further than training allowed",
    }
    assert lengths.tolist() == [3, 5]  # TWO_STROKES' first row is (0, 0, 0)
    np.testing.assert_array_equal(rows[:3], drop_noop_points(TWO_STROKES))


def test_padded_equals_pad_batch_of_the_cropped_sketches():
    rng = np.random.default_rng(1)
    sketches = [rng.integers(-9, 9, (n, 3)).astype(np.float32) for n in (7, 1, 30, 12)]
    rows, lengths, _ = _flat(sketches)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pick = np.array([2, 0, 3])
    np.testing.assert_array_equal(
        padded(rows, starts[pick], lengths[pick], max_len=20), pad_batch([sketches[i][:20] for i in pick])
    )


def test_ndjson_reader_takes_mixed_words_raw_and_simplified_and_names_every_bad_line(tmp_path):
    path = write_ndjson(tmp_path / "mixed.ndjson", "cat", [SQUARE, TWO_STROKES])
    raw = write_ndjson(tmp_path / "raw.ndjson", "dog", [SQUARE * np.array([3, 3, 1], np.float32)], raw=True)
    with open(path, "a", encoding="utf-8") as sink:
        sink.write(raw.read_text())
        sink.write("not json\n\n")
        sink.write(json.dumps({"word": "cat"}) + "\n")
        sink.write(json.dumps({"drawing": [[[1, 2], [3]]]}) + "\n")
        sink.write(json.dumps({"drawing": [[[0, 5], [0, 5]]], "key_id": 77}) + "\n")  # no word: still scored
    items = list(iter_chunks(path, size=2))
    chunks = [i for i in items if isinstance(i, SketchChunk)]
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert [len(c) for c in chunks] == [2, 2]  # chunks of at most 2
    records = [r for c in chunks for r in c.records]
    assert records == ["line 1", "line 2", "line 3", "line 8"]
    assert [w for c in chunks for w in c.words] == ["cat", "cat", "dog", None]
    assert [f for c in chunks for f in c.formats] == ["simplified", "simplified", "raw", "simplified"]
    assert [k for c in chunks for k in c.key_ids] == ["1", "2", "1", "77"]
    durations = np.concatenate([c.durations for c in chunks])
    assert np.isnan(durations[[0, 1, 3]]).all() and durations[2] == pytest.approx(0.04)  # 5 points, 10 ms apart
    assert [(r.record, r.reason) for r in rejections] == [
        ("line 4", "not JSON"),
        ("line 6", "no 'drawing' field"),
        ("line 7", "stroke 0 has 2/1 xs/ys values"),
    ]
    assert ndjson_kind(tmp_path) == "simplified"
    (tmp_path / "mixed.ndjson").unlink()
    assert ndjson_kind(tmp_path) == "raw"


def test_gzip_npz_tfrecord_and_json_files_are_read(tmp_path):
    ndjson = write_ndjson(tmp_path / "a.ndjson", "cat", [SQUARE])
    gz = tmp_path / "b.ndjson.gz"
    gz.write_bytes(gzip.compress(ndjson.read_bytes()))
    write_sketchrnn_npz(
        tmp_path / "c.npz", {"train": [SQUARE.astype(np.int16)], "test": [TWO_STROKES.astype(np.int16)]}
    )
    write_tfrecord(tmp_path / "d.tfrecord", [SQUARE, TWO_STROKES], [0, 1])
    (tmp_path / "e.json").write_text(json.dumps([SQUARE.tolist(), TWO_STROKES.tolist()]))
    files = score_files([str(tmp_path)])
    assert [f.name for f in files] == ["a.ndjson", "b.ndjson.gz", "c.npz", "d.tfrecord", "e.json"]
    read = {f.name: [i for i in iter_chunks(f)] for f in files}
    assert all(isinstance(i, SketchChunk) for items in read.values() for i in items)
    assert read["b.ndjson.gz"][0].records == ["line 1"]
    assert read["c.npz"][0].records == ["train[0]", "test[0]"]
    assert read["d.tfrecord"][0].formats == ["tfrecord", "tfrecord"]
    np.testing.assert_array_equal(read["e.json"][0].rows, np.concatenate([SQUARE, TWO_STROKES]))


def test_unreadable_files_are_one_rejection_and_paths_are_checked(tmp_path):
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "broken.json").write_text("{")
    for name in ("broken.npz", "broken.json"):
        (item,) = iter_chunks(tmp_path / name)
        assert isinstance(item, Rejection) and item.record == "whole file"
    with pytest.raises(StrokeFormatError, match=r"(?i)no such file"):
        score_files([str(tmp_path / "missing.ndjson")])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(StrokeFormatError, match="not a sketch file"):
        score_files([str(tmp_path / "notes.txt")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StrokeFormatError, match="a folder with no"):
        score_files([str(empty)])


def test_partition_keeps_order_and_balances_bytes(tmp_path):
    files = []
    for i, size in enumerate([100, 100, 100, 100, 400, 10]):
        path = tmp_path / f"{i}.ndjson"
        path.write_bytes(b"x" * size)
        files.append(path)
    parts = partition(files, 3)
    assert [f for part in parts for f in part] == files
    assert len(parts) == 3 and parts[-1][-1] == files[-1]
    assert partition(files[:1], 4) == [files[:1]]


def test_merge_parts_keeps_rows_in_order_and_gathers_quarantine(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = []
    for i in range(3):
        part = tmp_path / f"part-{i}.parquet"
        if i != 1:  # a part whose every record was quarantined writes no table
            pq.write_table(pa.table({"record": [f"{i}-a", f"{i}-b"], "confidence": [0.5, 0.25]}), part)
        quarantine_path(part).write_text(f"source,record,reason,value,count\nf{i},line 1,not JSON,,1\n")
        parts.append(part)
    out = tmp_path / "scores.parquet"
    assert merge_parts(parts, out) == 4
    assert pq.read_table(out).column("record").to_pylist() == ["0-a", "0-b", "2-a", "2-b"]
    assert quarantine_path(out).read_text().splitlines()[1:] == [f"f{i},line 1,not JSON,,1" for i in range(3)]


def test_a_line_too_long_is_skipped_without_being_held(tmp_path):
    from pipeline.quickdraw_formats import MAX_RECORD_BYTES

    path = write_ndjson(tmp_path / "long.ndjson", "cat", [SQUARE])
    with open(path, "ab") as sink:
        sink.write(b'{"drawing": "' + b"x" * (3 * MAX_RECORD_BYTES) + b'"}\n')
    write_ndjson(tmp_path / "tail.ndjson", "cat", [TWO_STROKES])
    with open(path, "ab") as sink:
        sink.write((tmp_path / "tail.ndjson").read_bytes())
    items = list(iter_chunks(path))
    rejections = [i for i in items if isinstance(i, Rejection)]
    assert [(r.record, r.reason) for r in rejections] == [("line 2", "record too long")]
    assert [r for i in items if isinstance(i, SketchChunk) for r in i.records] == ["line 1", "line 3"]


def test_a_gzip_bomb_is_stopped_where_it_expands(tmp_path):
    from pipeline.scoring import readers

    first = write_ndjson(tmp_path / "a.ndjson", "cat", [SQUARE]).read_bytes()
    bomb = tmp_path / "bomb.ndjson.gz"
    with gzip.open(bomb, "wb") as sink:
        sink.write(first)
        block = b"\n" * (1 << 20)
        for _ in range(readers.EXPANSION_CHECKED_FROM // len(block) + 8):
            sink.write(block)
    assert bomb.stat().st_size * readers.MAX_EXPANSION < readers.EXPANSION_CHECKED_FROM
    items = list(iter_chunks(bomb))
    chunks = [i for i in items if isinstance(i, SketchChunk)]
    (stopped,) = [i for i in items if isinstance(i, Rejection)]
    assert [c.records for c in chunks] == [["line 1"]]  # what came before stays
    assert stopped.reason == "compressed file broken here" and "times its size" in stopped.value
