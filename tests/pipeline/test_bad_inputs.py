"""A corpus of bad inputs and faults, in every format: each ends in quarantine with its reason, in a
count of records skipped on purpose, or in one error line naming the file, record or flag.

Every case checks that nothing is lost: records in = accepted + quarantined + skipped.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest

from pipeline.dataset import read_info
from pipeline.ingest import ingest
from pipeline.quickdraw_formats import MAX_RAW_POINTS, MAX_RECORD_BYTES, write_tfrecord
from pipeline.stages.data import validate
from pipeline.strokes import StrokeFormatError, write_sketchrnn_npz
from tests.conftest import tiny_settings

GOOD = {"word": "cat", "countrycode": "GB", "recognized": True, "drawing": [[[0, 10, 20], [0, 5, 0]]]}


def _line(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def _raw_line(key_id: str, first_x: str) -> bytes:
    """A line whose first x coordinate is the JSON number ``first_x`` as written (json.dumps cannot)."""
    return b'{"word": "cat", "key_id": "%s", "drawing": [[[%s, 2], [1, 2]]]}' % (key_id.encode(), first_x.encode())


_POINTS = MAX_RAW_POINTS + 1


_NON_NUMERIC = "stroke 0 has a non-numeric coordinate"

# name -> (the bad line, the reason it must be quarantined with)
NDJSON_CASES = {
    "word is a list": (_line(word=["cat"], key_id="1"), "unknown class"),
    "word is another class": (_line(word="dog", key_id="2"), "unknown class"),
    "coordinate of 400 digits": (_raw_line("3", "1" + "0" * 400), "coordinate out of range"),
    "coordinate of 5000 digits": (_raw_line("4", "1" + "0" * 5000), "not JSON"),
    "invalid UTF-8": (_line(key_id="5").replace(b"GB", b"G\xff"), "not UTF-8"),
    "not JSON": (b'{"word": "cat", "drawing": [[[1, 2], [1, 2]]', "not JSON"),
    "a JSON list": (b"[1, 2, 3]", "no 'drawing' field"),
    "no word": (json.dumps({"drawing": GOOD["drawing"], "key_id": "8"}).encode(), "no 'word' field"),
    "empty drawing": (_line(drawing=[], key_id="9"), "empty drawing"),
    "xs and ys differ": (_line(drawing=[[[0, 1, 2], [0, 1]]], key_id="10"), "stroke 0 has 3/2 xs/ys values"),
    "raw times short": (_line(drawing=[[[0, 1], [0, 1], [0]]], key_id="25"), "stroke 0 has 2/2/1 xs/ys/ts values"),
    "a text coordinate": (_line(drawing=[[["a", 1], [0, 1]]], key_id="11"), "stroke 0 has a non-numeric coordinate"),
    "an infinite coordinate": (_raw_line("12", "1e400"), "non-finite coordinate"),
    "a numeric text coordinate": (_line(drawing=[[["1", "2"], [0, 1]]], key_id="18"), _NON_NUMERIC),
    "true and false as coordinates": (_line(drawing=[[[True, False], [0, 1]]], key_id="19"), _NON_NUMERIC),
    "coordinates one list deeper": (_line(drawing=[[[[1], [2]], [[3], [4]]]], key_id="20"), _NON_NUMERIC),
    "a null coordinate": (_line(drawing=[[[None, 2], [0, 1]]], key_id="21"), _NON_NUMERIC),
    "text times in a raw stroke": (_line(drawing=[[[0, 9], [0, 1], ["a", "b"]]], key_id="22"), _NON_NUMERIC),
    "a drawing that is text": (_line(drawing="[[[0, 9], [0, 1]]]", key_id="23"), "drawing is not a list of strokes"),
    "a stroke that is a number": (_line(drawing=[5], key_id="13"), "stroke 0 is not [xs, ys] or [xs, ys, ts]"),
    "key_id of 100 characters": (_line(key_id="k" * 100), "key_id too long"),
    "key_id that is an object": (_line(key_id={"a": 1}), "key_id is not a string or number"),
    "duplicate key_id": (_line(key_id="good-1"), "duplicate key_id"),
    "a record over the size limit": (_line(key_id="15", pad="x" * MAX_RECORD_BYTES), "record too long"),
    "too many raw points": (
        _line(key_id="16", drawing=[[[0] * _POINTS, [0] * _POINTS, list(range(_POINTS))]]),
        f"more than {MAX_RAW_POINTS:,} points",
    ),
    "only a point that does not move": (_line(key_id="17", drawing=[[[0, 0], [0, 0]]]), None),  # kept: a pen lift
    "nested 100,000 lists deep": (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # Python's parser recurses
    "a drawing nested deeply": (b'{"word": "cat", "drawing": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", "not JSON"),
    "recognized as text": (_line(key_id="24", recognized="false"), "recognized is not true or false"),
}  # fmt: skip


def _settings(tmp_path, source: str, **changes):
    return tiny_settings(tmp_path / "work", tmp_path / "unused.db").replace(
        source=source, data_dir=str(tmp_path / "data"), num_classes=None, **changes
    )


def _accounted(info, lines: int) -> None:
    assert info.num_sketches + info.num_rejected + sum(info.skipped.values()) == lines


def _quarantine(dataset_dir) -> list[dict]:
    return [json.loads(line) for line in (dataset_dir / "ingest_quarantine.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", [c for c in NDJSON_CASES if NDJSON_CASES[c][1]])
def test_a_bad_ndjson_record_is_quarantined_with_its_reason_and_the_rest_kept(tmp_path, case):
    bad, reason = NDJSON_CASES[case]
    (tmp_path / "data").mkdir()
    good = [_line(key_id=f"good-{i}") for i in range(3)]
    (tmp_path / "data" / "cat.ndjson").write_bytes(b"\n".join([good[0], good[1], bad, b"", good[2]]) + b"\n")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dataset = ingest(_settings(tmp_path, "ndjson"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KB: no record costs gigabytes
    info = read_info(dataset)
    assert info.num_sketches == 3
    [quarantined] = _quarantine(dataset)
    assert (quarantined["source"], quarantined["record"]) == ("cat.ndjson", "line 3")
    assert quarantined["reason"] == reason
    assert len(quarantined["value"]) <= 120  # a short excerpt at most, never the raw record
    _accounted(info, lines=4)


def test_a_file_saved_with_a_utf8_byte_order_mark_and_windows_line_ends_reads_in_full(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [_line(key_id=f"good-{i}") for i in range(3)]
    (tmp_path / "data" / "cat.ndjson").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    info = read_info(ingest(_settings(tmp_path, "ndjson")))
    assert (info.num_sketches, info.num_rejected) == (3, 0)
    _accounted(info, lines=3)


def test_a_gzip_compressed_ndjson_file_reads_as_the_plain_one_and_a_broken_one_keeps_what_came_before(tmp_path):
    import gzip

    (tmp_path / "data").mkdir()
    lines = b"".join(
        _line(key_id=f"good-{i}", drawing=[[[0, 10 + i % 50, 20], [0, 5, i % 7]]]) + b"\n" for i in range(400)
    )
    path = tmp_path / "data" / "cat.ndjson"  # compressed under the plain name, as `gzip -c x > x.ndjson` leaves it
    path.write_bytes(gzip.compress(lines))
    info = read_info(ingest(_settings(tmp_path, "ndjson")))
    assert (info.num_sketches, info.num_rejected) == (400, 0)

    compressed = gzip.compress(lines)
    path.write_bytes(compressed[: len(compressed) // 2])  # a download that stopped half-way
    dataset = ingest(_settings(tmp_path, "ndjson", work_dir=str(tmp_path / "work2")))
    info = read_info(dataset)
    [quarantined] = _quarantine(dataset)
    assert 100 < info.num_sketches < 400 and quarantined["reason"] == "compressed file broken here"
    assert quarantined["record"] == f"line {info.num_sketches + 1}"  # the first line it could not read


def test_points_that_do_not_move_are_dropped_and_a_sketch_of_nothing_is_quarantined(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [
        _line(key_id="a", drawing=[[[1, 1, 5], [1, 1, 5]]]),  # a repeated point in the middle of a stroke
        NDJSON_CASES["only a point that does not move"][0],
        _line(key_id="b"),
    ]
    (tmp_path / "data" / "cat.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    dataset = ingest(_settings(tmp_path, "ndjson"))
    info = read_info(dataset)
    # the repeated point, and the first point of each drawing that starts at the origin (its offset is 0)
    assert info.noop_points_dropped == 3
    from pipeline.dataset import open_split

    sketches = [
        s.sketch(i) for s in (open_split(dataset, split) for split in ("train", "valid", "test")) for i in range(len(s))
    ]
    assert all(np.any(sketch != 0, axis=1).all() for sketch in sketches)  # no row looks like padding
    assert sorted(len(s) for s in sketches) == [1, 2, 2]
    _accounted(info, lines=3)


def test_a_straight_line_drawn_in_one_stroke_is_a_sketch_not_a_bad_record(tmp_path):
    # as in the real raw `line` file: one stroke, left to right, that simplifies to its two ends; its
    # first point is the origin (a no-op row), so one offset is all it has after ingest
    (tmp_path / "data").mkdir()
    xs, ys = [302, 336, 430, 668, 802, 893], [288.87, 288.87, 290.87, 290.87, 289.87, 288.87]
    lines = [
        _line(word="line", key_id=f"{i}", drawing=[[xs, [y + i for y in ys], list(range(0, 600, 100))]])
        for i in range(4)
    ]
    (tmp_path / "data" / "line.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    settings = _settings(tmp_path, "ndjson")
    report = validate(settings, ingest(settings))
    assert (report.records_in, report.accepted, report.quarantined) == (4, 4, 0)
    from pipeline.dataset import open_split

    dataset = Path(report.dataset_dir)
    sketches = [
        s.sketch(i) for s in (open_split(dataset, split) for split in ("train", "valid", "test")) for i in range(len(s))
    ]
    assert [sketch.tolist() for sketch in sketches] == [[[255, 0, 1]]] * 4


@pytest.mark.parametrize("chunk", [None, 3])  # the strokes are read only for chunks that hold a repeated key_id
def test_one_drawing_copied_into_two_class_files_is_kept_once_and_the_copy_quarantined_naming_the_first(
    tmp_path, monkeypatch, chunk
):
    import pipeline.validation as validation

    if chunk:
        monkeypatch.setattr(validation, "CHUNK_SKETCHES", chunk)
    (tmp_path / "data").mkdir()
    copied = {"drawing": [[[0, 30, 60], [0, 25, 0]]], "key_id": "5066291916341248"}
    # files numbering their own key_ids from 0 (as home-made exports do): other drawings, not copies
    cats = [_line(key_id=f"{i}", drawing=[[[0, 10 + i, 20], [0, 5, 0]]]) for i in range(3)] + [_line(**copied)]
    dogs = [_line(word="dog", **copied)] + [
        _line(word="dog", key_id=f"{i}", drawing=[[[0, 9], [0, 9 + i]]]) for i in range(3)
    ]
    dogs.append(_line(word="dog", drawing=[[[0, 9], [0, 9]]]))  # lines without a key_id are other drawings
    cats.append(_line(drawing=[[[0, 9], [0, 9]]]))
    (tmp_path / "data" / "cat.ndjson").write_bytes(b"\n".join(cats) + b"\n")
    (tmp_path / "data" / "dog.ndjson").write_bytes(b"\n".join(dogs) + b"\n")
    settings = _settings(tmp_path, "ndjson", valid_share=0.0, test_share=0.0, max_invalid_fraction=0.5)
    report = validate(settings, ingest(settings))
    [quarantined] = [json.loads(line) for line in Path(report.quarantine_path).read_text().splitlines()]
    assert quarantined["id"] == "dog.ndjson:1:5066291916341248" and quarantined["column"] == "duplicate_of"
    assert quarantined["value"].startswith("train[") and quarantined["value"].endswith(" cat.ndjson:4:5066291916341248")
    assert (report.records_in, report.accepted, report.quarantined) == (10, 9, 1)


def test_a_sketch_of_only_padding_like_rows_is_quarantined(tmp_path):
    splits = {"train": [np.zeros((4, 3), np.int16), np.array([[3, 4, 0], [0, 0, 0], [1, 1, 1]], np.int16)]}
    write_sketchrnn_npz(tmp_path / "data" / "cat.npz", splits)
    dataset = ingest(_settings(tmp_path, "sketchrnn"))
    info = read_info(dataset)
    assert info.num_sketches == 1 and info.noop_points_dropped == 5
    [quarantined] = _quarantine(dataset)
    assert (quarantined["record"], quarantined["reason"]) == ("cat.npz:train[0]", "no movement")
    _accounted(info, lines=2)


def test_a_class_file_whose_every_sketch_is_empty_is_quarantined_whole_and_the_rest_kept(tmp_path):
    # every sketch of a batch quarantined left the writer a batch of none (it stopped on max() of nothing)
    empty = {split: [np.zeros((0, 3), np.int16), np.zeros((2, 3), np.int16)] for split in ("train", "test")}
    write_sketchrnn_npz(tmp_path / "data" / "cat.npz", empty)
    write_sketchrnn_npz(tmp_path / "data" / "dog.npz", {"train": [np.array([[3, 4, 0], [1, 1, 1]], np.int16)]})
    dataset = ingest(_settings(tmp_path, "sketchrnn"))
    info = read_info(dataset)
    assert info.num_sketches == 1 and info.counts["train"] == {"cat": 0, "dog": 1}
    assert [(q["record"], q["reason"]) for q in _quarantine(dataset)] == [
        (f"cat.npz:{split}[{i}]", "no movement") for split in ("train", "test") for i in range(2)
    ]
    _accounted(info, lines=5)


def test_records_over_max_per_class_and_unrecognised_ones_are_counted_as_skipped(tmp_path):
    (tmp_path / "data").mkdir()
    lines = [_line(key_id=str(i)) for i in range(40)] + [_line(key_id="x", recognized=False)]
    (tmp_path / "data" / "cat.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    info = read_info(ingest(_settings(tmp_path, "ndjson", max_per_class=5)))
    assert info.skipped["not recognized"] == 1
    assert sum(n for reason, n in info.skipped.items() if reason.startswith("over max_per_class")) > 0
    _accounted(info, lines=41)


def test_a_truncated_tfrecord_shard_keeps_its_readable_records(tmp_path):
    rng = np.random.default_rng(0)
    shard = write_tfrecord(
        tmp_path / "data" / "train.tfrecord-00000", [rng.integers(-9, 9, (6, 3)) for _ in range(20)], [0, 1] * 10
    )
    (tmp_path / "data" / "training.tfrecord.classes").write_text("cat\ndog\n")
    shard.write_bytes(shard.read_bytes()[: int(shard.stat().st_size * 0.6) + 50])  # cut inside a record
    dataset = ingest(_settings(tmp_path, "tfrecord"))
    info = read_info(dataset)
    assert 5 <= info.num_sketches < 20
    [quarantined] = _quarantine(dataset)
    assert quarantined["reason"] == "truncated or corrupt shard; later records unreadable"
    assert quarantined["record"] == f"record {info.num_sketches}"


@pytest.mark.parametrize(
    ("ink", "shape", "class_index", "reason"),
    [
        (np.zeros(9, np.float32), [4, 3], 0, "ink does not match its shape"),
        (np.ones(9, np.float32), [3, 3], 7, "unknown class"),
    ],
)
def test_a_bad_tfrecord_example_is_quarantined(tmp_path, ink, shape, class_index, reason):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    path = write_tfrecord(
        tmp_path / "data" / "train.tfrecord", [rng.integers(1, 9, (5, 3)) for _ in range(3)], [0, 1, 0]
    )
    (tmp_path / "data" / "train.tfrecord.classes").write_text("cat\ndog\n")
    good = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    feature = {
        "ink": tf.train.Feature(float_list=tf.train.FloatList(value=ink)),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=shape)),
        "class_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[class_index])),
    }
    bad = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in [good[0], bad, b"not a protobuf at all", *good[1:]]:
            writer.write(record)
    dataset = ingest(_settings(tmp_path, "tfrecord"))
    info = read_info(dataset)
    assert info.num_sketches == 3
    reasons = {q["record"]: q["reason"] for q in _quarantine(dataset)}
    assert reasons == {"record 1": reason, "record 2": "not a quickdraw example"}
    _accounted(info, lines=5)


def test_sketchrnn_sketches_over_max_per_class_are_counted_as_skipped(tmp_path):
    rng = np.random.default_rng(2)
    splits = {
        s: [rng.integers(1, 9, (4, 3)).astype(np.int16) for _ in range(n)]
        for s, n in (("train", 9), ("valid", 3), ("test", 3))
    }
    write_sketchrnn_npz(tmp_path / "data" / "cat.npz", splits)
    info = read_info(ingest(_settings(tmp_path, "sketchrnn", max_per_class=2)))
    assert info.num_sketches == 6
    assert info.skipped == {
        "over max_per_class in train": 7,
        "over max_per_class in valid": 1,
        "over max_per_class in test": 1,
    }
    _accounted(info, lines=15)


def test_a_class_file_that_is_not_a_drawing_file_is_never_echoed_beyond_a_short_excerpt(tmp_path):
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    lines = [f"user{i}:x:{1000 + i}:{1000 + i}:A Person,,,:/home/user{i}:/bin/bash" for i in range(5)]
    secret.write_text("\n".join(lines) + "\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cat.ndjson").write_text("\n".join(lines) + "\n")  # such a file in the data folder
    dataset = ingest(_settings(tmp_path, "ndjson"))
    quarantined = _quarantine(dataset)
    assert [q["reason"] for q in quarantined] == ["not JSON"] * 5
    text = (dataset / "ingest_quarantine.jsonl").read_text()
    assert not any(line[:40] in text for line in lines)  # at most the first 32 characters of a line
    assert all(len(q["value"]) < 80 for q in quarantined)
    _accounted(read_info(dataset), lines=5)
    (tmp_path / "data" / "cat.ndjson").unlink()
    (tmp_path / "data" / "cat.ndjson").symlink_to(secret)  # a link out of the data folder is not read at all
    with pytest.raises(StrokeFormatError, match=r"cat\.ndjson: a link to .*outside/passwd, outside the data folder"):
        ingest(_settings(tmp_path, "ndjson"))


def test_an_npz_bomb_is_refused_from_its_zip_header_before_it_is_unpacked(tmp_path):
    import zipfile

    bomb = tmp_path / "data" / "cat.npz"
    bomb.parent.mkdir()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train.npy", bytes(200 << 20))  # 200 MiB of zeros, about 200 KB packed
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(StrokeFormatError, match=r"cat\.npz: member train\.npy would unpack .* to 209,715,200"):
        ingest(_settings(tmp_path, "sketchrnn"))  # refused from the header: the member is never read


@pytest.mark.parametrize("source", ["sketchrnn", "ndjson", "tfrecord"])
def test_a_class_file_that_is_a_fifo_is_refused_by_name_not_read(tmp_path, source):
    """A FIFO would block the first read forever (``zipfile`` waits for a writer that never comes)."""
    import os

    data = tmp_path / "data"
    data.mkdir()
    good = [np.array([[1, 2, 0], [3, 4, 1]], np.int16)] * 4
    write_sketchrnn_npz(data / "cat.npz", {"train": good, "valid": good, "test": good})
    (data / "cat.ndjson").write_bytes(_line() + b"\n")
    (data / "q.classes").write_text("cat\nfish\n")
    name = {"sketchrnn": "fish.npz", "ndjson": "fish.ndjson", "tfrecord": "fish.tfrecord"}[source]
    os.mkfifo(data / name)
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db", source=source, data_dir=str(data),
                             num_classes=None)  # fmt: skip
    with pytest.raises(StrokeFormatError, match=r"fish\.[a-z]+: not a regular file \(a FIFO, device or folder\)"):
        ingest(settings)


def test_a_class_file_linked_outside_the_data_folder_is_refused_by_name(tmp_path):
    outside = tmp_path / "secret.ndjson"
    outside.write_bytes(_line(word="secret") + b"\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "cat.ndjson").write_bytes(_line() + b"\n")
    (data / "fish.ndjson").symlink_to(outside)
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db", source="ndjson", data_dir=str(data),
                             num_classes=None)  # fmt: skip
    with pytest.raises(StrokeFormatError, match=r"fish\.ndjson: a link to .*secret\.ndjson, outside the data folder"):
        ingest(settings)
    (data / "fish.ndjson").unlink()
    (data / "fish.ndjson").symlink_to(data / "cat.ndjson")  # a link that stays inside is read
    from pipeline.quickdraw_formats import class_files

    assert list(class_files(data, "*.ndjson")) == ["cat", "fish"]


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_predict_refuses_a_fifo_or_device_at_once(tmp_path, special):
    import os

    from pipeline.serving import read_sketch_files

    path = tmp_path / "s.json"
    if special == "fifo":
        os.mkfifo(path)
    else:
        path = Path(special)
    with pytest.raises(StrokeFormatError, match="not a regular file"):
        read_sketch_files([str(path)])
