"""ndjson and TFRecord readers: round trips, and every kind of bad record quarantined with its reason."""

import itertools
import json
import re

import numpy as np
import pytest

from pipeline.config import ConfigError, load_settings
from pipeline.dataset import Rejection, SketchRecord, read_info
from pipeline.ingest import ingest
from pipeline.quickdraw_formats import (
    class_files,
    iter_ndjson_records,
    iter_tfrecord_records,
    split_of,
    write_ndjson,
    write_tfrecord,
)
from pipeline.strokes import StrokeFormatError, polylines_to_stroke3
from pipeline.synthetic import draw_sketch
from pipeline.validation import validate_dataset


def _sketches(name: str, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [draw_sketch(name, rng) for _ in range(count)]


def _records(stream):
    items = list(stream)
    return [r for r in items if isinstance(r, SketchRecord)], [r for r in items if isinstance(r, Rejection)]


def test_split_is_a_stable_function_of_the_key():
    assert split_of("5012345678") == split_of("5012345678")
    shares = [split_of(str(k)) for k in range(20000)]
    assert 0.04 < shares.count("test") / 20000 < 0.06 and 0.04 < shares.count("valid") / 20000 < 0.06


def test_simplified_ndjson_round_trips_exactly(tmp_path):
    sketches = _sketches("house", 30)
    path = write_ndjson(tmp_path / "full_simplified_house.ndjson", "house", sketches)
    records, rejections = _records(iter_ndjson_records({"house": path}, ["house"]))
    assert not rejections and len(records) == 30
    by_key = {r.record_id.rsplit(":", 1)[1]: r for r in records}
    for offset, sketch in enumerate(sketches):
        record = by_key[str(1 + offset)]
        np.testing.assert_array_equal(record.strokes, sketch)
        assert record.split == split_of(str(1 + offset))


def test_raw_ndjson_is_aligned_scaled_and_simplified(tmp_path):
    # device coordinates: a square and a triangle drawn large and off-origin, densely sampled
    square = np.array([[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]], float)
    dense = np.concatenate(
        [np.linspace(a, b, 40, endpoint=False) for a, b in itertools.pairwise(square)] + [square[-1:]]
    )
    triangle = np.array([[300, 500], [700, 500], [500, 300]], float)
    raw = polylines_to_stroke3([dense, triangle])
    path = write_ndjson(tmp_path / "full_raw_box.ndjson", "box", [raw], raw=True)
    line = json.loads(path.read_text())
    assert len(line["drawing"][0]) == 3  # xs, ys, ts
    (record,), _ = _records(iter_ndjson_records({"box": path}, ["box"]))
    expected = polylines_to_stroke3(
        [
            np.array([[0, 0], [255, 0], [255, 255], [0, 255], [0, 0]], float),
            np.rint(np.array([[63.75, 127.5], [191.25, 127.5], [127.5, 63.75]])),
        ]
    )
    np.testing.assert_allclose(record.strokes, expected, atol=1.0)


def test_tfrecord_round_trips_within_float32(tmp_path):
    rng = np.random.default_rng(0)
    sketches = [
        np.column_stack([rng.uniform(-0.3, 0.3, (n, 2)), rng.integers(0, 2, n)]).astype(np.float32) for n in (3, 9, 21)
    ]
    write_tfrecord(tmp_path / "eval.tfrecord-00000-of-00001", sketches, [1, 0, 1])
    records, rejections = _records(
        iter_tfrecord_records([tmp_path / "eval.tfrecord-00000-of-00001"], ["a", "b"], ["a", "b"])
    )
    assert not rejections and [r.split for r in records] == ["test"] * 3
    assert [r.label for r in records] == [1, 0, 1]
    for record, sketch in zip(records, sketches, strict=True):
        np.testing.assert_array_equal(record.strokes, sketch)


def test_bad_ndjson_lines_are_quarantined_with_file_line_and_reason(tmp_path):
    good = write_ndjson(tmp_path / "cat.ndjson", "cat", _sketches("circle", 40))
    good_lines = good.read_text().splitlines()
    bad_lines = [
        "{not json",
        json.dumps({"word": "cat", "key_id": "bad-1"}),
        json.dumps({"drawing": [[[1, 2], [3, 4]]], "key_id": "bad-2"}),
        json.dumps({"word": "cat", "drawing": [], "key_id": "bad-3"}),
        json.dumps({"word": "cat", "drawing": [[[1, 2, 3], [4, 5]]], "key_id": "bad-4"}),
        '{"word": "cat", "drawing": [[[1, NaN], [4, 5]]], "key_id": "bad-5"}',
        json.dumps({"word": "dog", "drawing": [[[1, 2], [4, 5]]], "key_id": "bad-6"}),
        json.dumps({"word": "cat", "drawing": [[[1, 2], [4, 5]]], "key_id": "bad-7", "recognized": False}),
        json.dumps({"word": "cat", "drawing": [[[0, 90000], [0, 5]]], "key_id": "bad-8"}),
    ]
    good.write_text("\n".join(good_lines + bad_lines) + "\n")
    records, rejections = _records(iter_ndjson_records({"cat": good}, ["cat"]))
    reasons = {(r.record, r.reason) for r in rejections}
    first_bad = len(good_lines) + 1
    assert reasons == {
        (f"line {first_bad}", "not JSON"),
        (f"line {first_bad + 1}", "no 'drawing' field"),
        (f"line {first_bad + 2}", "no 'word' field"),
        (f"line {first_bad + 3}", "empty drawing"),
        (f"line {first_bad + 4}", "stroke 0 has 3/2 xs/ys values"),
        (f"line {first_bad + 5}", "non-finite coordinate"),
        (f"line {first_bad + 6}", "unknown class"),
        (f"line {first_bad + 7}", "not recognized"),
    }
    assert all(r.source == "cat.ndjson" for r in rejections)
    assert [r.skipped for r in rejections if r.reason == "not recognized"] == [True]
    assert len(records) == 41  # the 40 good ones and the huge one, which validation catches


def test_ingest_and_validate_account_for_every_ndjson_line(tmp_path):
    data = tmp_path / "ndjson"
    for name in ("circle", "square"):
        write_ndjson(data / f"full_simplified_{name}.ndjson", name, _sketches(name, 60))
    path = data / "full_simplified_circle.ndjson"
    path.write_text(
        path.read_text()
        + "{broken\n"
        + json.dumps({"word": "circle", "drawing": [[[0, 50000], [0, 1]]], "key_id": "x"})
        + "\n"
    )
    settings = load_settings(
        overrides={"source": "ndjson", "data_dir": str(data), "num_classes": 2, "work_dir": str(tmp_path / "w")},
        environ={},
    )
    dataset = ingest(settings)
    info = read_info(dataset)
    assert info.classes == ["circle", "square"] and info.rejected == {"not JSON": 1}
    report = validate_dataset(dataset, tmp_path / "v")
    assert report.records_in == 122 and report.quarantined == 2 and report.accepted == 120
    lines = [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]
    assert {(q["stage"], q.get("reason") or q.get("expectation")) for q in lines} == {
        ("ingest", "not JSON"),
        ("validate", "expect_column_values_to_be_between"),
    }


def test_tfrecord_with_a_wrong_shape_is_quarantined(tmp_path):
    import tensorflow as tf

    path = write_tfrecord(tmp_path / "training.tfrecord-00000-of-00001", [np.zeros((4, 3), np.float32)], [0])
    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "ink": tf.train.Feature(float_list=tf.train.FloatList(value=[0.0] * 12)),
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=[5, 3])),
                "class_index": tf.train.Feature(int64_list=tf.train.Int64List(value=[0])),
            }
        )
    )
    with tf.io.TFRecordWriter(str(tmp_path / "training.tfrecord-00001-of-00002")) as writer:
        writer.write(example.SerializeToString())
    records, rejections = _records(iter_tfrecord_records(sorted(tmp_path.glob("training*")), ["a"], ["a"]))
    assert len(records) == 1
    assert [(r.source, r.record, r.reason) for r in rejections] == [
        ("training.tfrecord-00001-of-00002", "record 0", "ink does not match its shape")
    ]
    assert path.exists()


def test_tfrecord_source_through_ingest(tmp_path):
    data = tmp_path / "tf"
    write_tfrecord(data / "training.tfrecord-00000-of-00001", [np.ones((3, 3), np.float32)] * 6, [0, 1, 2, 0, 1, 2])
    write_tfrecord(data / "eval.tfrecord-00000-of-00001", [np.ones((2, 3), np.float32)] * 3, [0, 1, 2])
    (data / "training.tfrecord.classes").write_text("ant\nbee\ncat\n")
    settings = load_settings(
        overrides={"source": "tfrecord", "data_dir": str(data), "classes": "ant,cat", "work_dir": str(tmp_path / "w")},
        environ={},
    )
    info = read_info(ingest(settings))
    assert info.classes == ["ant", "cat"]
    assert info.counts["test"] == {"ant": 1, "cat": 1}
    assert sum(info.counts["train"].values()) + sum(info.counts["valid"].values()) == 4
    assert info.skipped == {"class not selected": 3}


def test_empty_folder_and_a_class_named_twice_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(StrokeFormatError, match=r"empty: holds no \*\.ndjson files"):
        class_files(tmp_path / "empty", "*.ndjson")
    write_ndjson(tmp_path / "twice" / "cat.ndjson", "cat", [])
    write_ndjson(tmp_path / "twice" / "full_simplified_cat.ndjson", "cat", [])
    with pytest.raises(
        StrokeFormatError, match=re.escape("class 'cat' is named twice: cat.ndjson and full_simplified_cat.ndjson")
    ):
        class_files(tmp_path / "twice", "*.ndjson", ("full_simplified_",))
    with pytest.raises(ConfigError, match="named twice"):
        load_settings(overrides={"classes": "cat,dog,cat"}, environ={})


def test_a_classes_file_that_names_a_class_twice_is_refused_by_name(tmp_path):
    from pipeline.quickdraw_formats import tfrecord_classes, write_tfrecord
    from pipeline.strokes import StrokeFormatError

    write_tfrecord(tmp_path / "train.tfrecord-00000-of-00001", [np.array([[1, 2, 1]])], [0])
    (tmp_path / "training.tfrecord.classes").write_text("cat\ndog\ncat\n")
    with pytest.raises(StrokeFormatError, match=r"training\.tfrecord\.classes: lists 'cat' more than once"):
        tfrecord_classes(tmp_path)
