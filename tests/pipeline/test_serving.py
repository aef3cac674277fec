"""Reading sketches for prediction, and ``sketchpipe predict`` on a registered champion."""

import io
import json

import numpy as np
import pytest

from pipeline.serving import read_sketch_files
from pipeline.strokes import StrokeFormatError, write_sketchrnn_npz


def test_reads_json_npz_and_stdin(tmp_path, monkeypatch):
    one = [[1, 2, 0], [3, 4, 1]]
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "many.json").write_text(json.dumps([one, one[:1]]))
    write_sketchrnn_npz(tmp_path / "cat.npz", {"test": [np.array(one, np.int16)]})
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(one)))
    sketches = read_sketch_files(
        [str(tmp_path / "one.json"), str(tmp_path / "many.json"), str(tmp_path / "cat.npz"), "-"]
    )
    assert list(sketches) == [
        f"{tmp_path / 'one.json'}[0]",
        f"{tmp_path / 'many.json'}[0]",
        f"{tmp_path / 'many.json'}[1]",
        f"{tmp_path / 'cat.npz'}:test[0]",
        "stdin[0]",
    ]
    np.testing.assert_array_equal(sketches["stdin[0]"], np.array(one, np.float32))


def test_bad_json_names_the_file_and_sketch(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([[[1, 2]]]))
    with pytest.raises(StrokeFormatError, match=r"bad\.json: sketch 0"):
        read_sketch_files([str(tmp_path / "bad.json")])


def test_reads_quick_draw_ndjson_simplified_and_raw_like_ingest(tmp_path):
    from pipeline.quickdraw_formats import class_files, iter_ndjson_records, write_ndjson
    from pipeline.synthetic import draw_sketch

    rng = np.random.default_rng(1)
    sketches = [draw_sketch("square", rng) for _ in range(3)]
    simplified = write_ndjson(tmp_path / "square.ndjson", "square", sketches)
    raw = write_ndjson(
        tmp_path / "raw" / "square.ndjson", "square", [s * np.array([3, 3, 1]) for s in sketches], raw=True
    )
    for path in (simplified, raw):
        read = read_sketch_files([str(path)])
        assert list(read) == [f"{path}:{n}" for n in (1, 2, 3)]
        # the same stroke-3 that training's ingest makes of the same lines
        ingested = iter_ndjson_records(class_files(path.parent, "*.ndjson"), ["square"], recognized_only=False)
        for got, record in zip(read.values(), ingested, strict=True):
            np.testing.assert_array_equal(got, record.strokes.astype(np.float32))
    np.testing.assert_array_equal(read_sketch_files([str(simplified)])[f"{simplified}:1"], sketches[0])


def test_bad_ndjson_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.ndjson"
    path.write_text('{"word": "cat", "drawing": [[[0, 10], [0, 5]]]}\n\n{"word": "cat"}\n')
    with pytest.raises(StrokeFormatError, match=r"bad\.ndjson: line 3: no 'drawing' field"):
        read_sketch_files([str(path)])
    path.write_text('{"drawing": [[[0, 10], [0]]]}\n')
    with pytest.raises(StrokeFormatError, match=r"bad\.ndjson: line 1: stroke 0 has 2/1"):
        read_sketch_files([str(path)])
    path.write_text('{"drawing": [[["0", "10"], [0, 5]]]}\n')  # numpy alone would read the text as numbers
    with pytest.raises(StrokeFormatError, match=r"bad\.ndjson: line 1: stroke 0 has a non-numeric coordinate"):
        read_sketch_files([str(path)])
    path.write_text('{"drawing": [[[0, 1%s], [0, 5]]]}\n' % ("0" * 400))  # an integer no float holds
    with pytest.raises(StrokeFormatError, match=r"bad\.ndjson: line 1: .*too large"):
        read_sketch_files([str(path)])
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")  # deeper than Python's JSON parser recurses
    with pytest.raises(StrokeFormatError, match=r"bad\.ndjson: line 1: not JSON \(nested too deeply\)"):
        read_sketch_files([str(path)])
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(StrokeFormatError, match=r"deep\.json: not JSON \(nested too deeply\)"):
        read_sketch_files([str(tmp_path / "deep.json")])


def test_gzip_compressed_ndjson_reads_as_the_plain_file_and_a_broken_one_names_the_line(tmp_path):
    import gzip

    lines = "".join(f'{{"drawing": [[[0, {10 + i % 50}], [0, {i % 7}]]]}}\n' for i in range(2000)).encode()
    (tmp_path / "plain.ndjson").write_bytes(lines)
    (tmp_path / "packed.ndjson").write_bytes(gzip.compress(lines))
    plain = read_sketch_files([str(tmp_path / "plain.ndjson")])
    packed = read_sketch_files([str(tmp_path / "packed.ndjson")])
    assert len(packed) == 2000 and all(
        np.array_equal(a, b) for a, b in zip(plain.values(), packed.values(), strict=True)
    )
    compressed = gzip.compress(lines)
    (tmp_path / "cut.ndjson").write_bytes(compressed[: len(compressed) // 2])  # a download that stopped half-way
    with pytest.raises(StrokeFormatError, match=r"cut\.ndjson: line \d+: compressed file broken here"):
        read_sketch_files([str(tmp_path / "cut.ndjson")])


@pytest.mark.parametrize(
    ("sketch", "message"),
    [
        ([[1, 2, 0], [3, float("nan"), 1]], "row 1 has a value that is not finite"),
        ([[1, 2, 0], [3, 4, 2]], r"row 1 has pen value 2 \(expected 0 or 1\)"),
        ([[0, 0, 0], [0, 0, 0]], r"no movement"),
        ([[1, 2, 0], ["3", "4", "1"]], r"a value is not a number"),  # numpy alone reads the text as numbers
        ([[True, False, True]], r"a value is not a number"),
        ([[1, None, 0]], r"a value is not a number"),
    ],
)
def test_a_sketch_no_model_can_read_is_refused_by_name_not_scored(tmp_path, sketch, message):
    from pipeline.pyfunc import sketches_of

    (tmp_path / "bad.json").write_text(json.dumps(sketch))  # NaN as JSON's extension, as json.dumps writes it
    with pytest.raises(StrokeFormatError, match=r"bad\.json: sketch 0: " + message):
        read_sketch_files([str(tmp_path / "bad.json")])
    with pytest.raises(StrokeFormatError, match="sketch 1: " + message):  # the served model's request path
        sketches_of({"strokes": [[[1, 1, 1]], sketch]})
    np.testing.assert_array_equal(sketches_of({"strokes": [[[1, 1, 1]]]})[0], [[1, 1, 1]])


def test_files_with_a_byte_order_mark_read_and_bytes_that_are_not_utf8_are_named(tmp_path):
    line = b'{"word": "cat", "drawing": [[[0, 10], [0, 5]]]}\n'
    (tmp_path / "bom.ndjson").write_bytes(b"\xef\xbb\xbf" + line + line)
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf[[1, 2, 1]]")
    read = read_sketch_files([str(tmp_path / "bom.ndjson"), str(tmp_path / "bom.json")])
    assert len(read) == 3 and len({v.tobytes() for k, v in read.items() if "ndjson" in k}) == 1
    (tmp_path / "latin.ndjson").write_bytes(line + b'{"word": "caf\xe9"}\n')
    with pytest.raises(StrokeFormatError, match=r"latin\.ndjson: line 2: not UTF-8 \(byte 13"):
        read_sketch_files([str(tmp_path / "latin.ndjson")])
    (tmp_path / "latin.json").write_bytes(b"[[1, 2, 1]] \xe9")
    with pytest.raises(StrokeFormatError, match=r"latin\.json: not UTF-8 \(byte 12"):
        read_sketch_files([str(tmp_path / "latin.json")])


def test_a_value_beyond_float32_is_refused_by_name_without_a_numpy_warning(tmp_path):
    import warnings

    (tmp_path / "huge.json").write_text(json.dumps([[1e300, 2, 0], [3, 4, 1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "overflow encountered in cast" was a second stderr line
        with pytest.raises(StrokeFormatError, match=r"huge\.json: sketch 0: row 0 has a value that is not finite"):
            read_sketch_files([str(tmp_path / "huge.json")])


def test_a_move_beyond_what_training_allowed_is_refused_by_name_and_row():
    from pipeline.serving import Classifier

    classifier = Classifier.from_metadata(None, {"classes": ["a", "b"], "max_len": 9, "max_abs_delta": 1000})
    fine = np.array([[1000, -1000, 0], [3, 4, 1]], np.float32)  # at the limit: as training allowed
    far = np.array([[1, 2, 0], [3, -1e30, 0], [5, 6, 1]], np.float32)
    classifier.check_range([fine, fine])
    with pytest.raises(StrokeFormatError, match=r"^sketch 1: row 1 moves 1e\+30, more than the model was trained on "):
        classifier.check_range([fine, far])
    with pytest.raises(StrokeFormatError, match=r"^s\.json\[2\]: row 1 moves 1e\+30, .*\(max_abs_delta 1000\)$"):
        classifier.check_range([fine, fine, far], ["s.json[0]", "s.json[1]", "s.json[2]"])
    # a model logged before the limit was recorded answers as it did
    Classifier.from_metadata(None, {"classes": ["a", "b"], "max_len": 9}).check_range([far])


def test_a_convolutional_model_converts_for_litert_and_answers_as_keras_does():
    import keras

    from pipeline.features import pad_batch
    from pipeline.models import build_model
    from pipeline.serving import LiteModel, export_model, lite_flatbuffer

    keras.utils.set_random_seed(0)
    params = {"filters": 8, "dilation_rates": [1, 1], "halve_after": [1], "positions": True, "raster_size": 8}
    model = export_model(build_model("wavenet", 5, params), 10.0)
    flatbuffer = lite_flatbuffer(model, max_len=60)
    assert flatbuffer is not None
    lite = LiteModel(flatbuffer)
    rng = np.random.default_rng(1)
    sketches = [
        np.column_stack([rng.integers(-9, 9, (n, 2)), np.arange(n) == n - 1]).astype(np.float32) for n in (2, 9, 31)
    ]
    for batch in (pad_batch(sketches), pad_batch(sketches[:1], 50)):  # batch and length change between calls
        np.testing.assert_allclose(lite(batch), model(batch, training=False), atol=1e-5)


def test_a_recurrent_model_converts_at_a_fixed_shape_and_takes_any_batch():
    import keras

    from pipeline.features import pad_batch
    from pipeline.models import build_model
    from pipeline.serving import LITE_BATCH, LiteModel, export_model, lite_flatbuffer

    keras.utils.set_random_seed(0)
    model = export_model(build_model("lstm", 3, {"units": 4, "num_layers": 2, "bidirectional": True}), 10.0)
    flatbuffer = lite_flatbuffer(model, max_len=30)
    assert flatbuffer is not None
    rng = np.random.default_rng(2)
    sketches = [
        np.column_stack([rng.integers(-9, 9, (n, 2)), np.arange(n) == n - 1]).astype(np.float32)
        for n in rng.integers(1, 31, LITE_BATCH + 5)  # more than one call's worth, of every length
    ]
    batch = pad_batch(sketches)
    np.testing.assert_allclose(LiteModel(flatbuffer)(batch), model(batch, training=False), atol=1e-5)
    with pytest.raises(ValueError, match="this model takes at most 30"):
        LiteModel(flatbuffer)(pad_batch(sketches, 31))


def test_predict_formats_hold_the_same_answers():
    from pipeline.serving import format_predictions

    names = ["a.json[0]", "b.ndjson:3"]
    top = [[("cat", 0.9), ("dog", 0.06), ("owl", 0.01)], [("owl", 0.5), ("cat", 0.25), ("dog", 0.125)]]
    assert format_predictions(names, top, "text").splitlines() == [
        "a.json[0]: cat 0.900, dog 0.060, owl 0.010",
        "b.ndjson:3: owl 0.500, cat 0.250, dog 0.125",
    ]
    rows = [json.loads(line) for line in format_predictions(names, top, "json").splitlines()]
    assert rows[1] == {"sketch": "b.ndjson:3", "class": "owl", "probability": 0.5,
                       "top_classes": ["owl", "cat", "dog"], "top_probabilities": [0.5, 0.25, 0.125]}  # fmt: skip
    import csv

    table = list(csv.DictReader(io.StringIO(format_predictions(names, top, "csv"))))
    assert [row["class_1"] for row in table] == ["cat", "owl"] and table[1]["probability_3"] == "0.125000"


def test_a_folder_and_request_shaped_json_read_like_their_files(tmp_path):
    one, two = [[1, 2, 0], [3, 4, 1]], [[5, 5, 1]]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.json").write_text(json.dumps({"dataframe_records": [{"strokes": one}, {"strokes": two}]}))
    (tmp_path / "d" / "a.json").write_text(json.dumps({"strokes": one}))
    (tmp_path / "d" / "notes.txt").write_text("not a sketch")
    sketches = read_sketch_files([str(tmp_path / "d")])
    assert list(sketches) == [f"{tmp_path / 'd' / 'a.json'}[0]", f"{tmp_path / 'd' / 'b.json'}[0]",
                              f"{tmp_path / 'd' / 'b.json'}[1]"]  # fmt: skip
    np.testing.assert_array_equal(sketches[f"{tmp_path / 'd' / 'b.json'}[1]"], np.array(two, np.float32))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StrokeFormatError, match=r"empty: a folder with no \.npz, \.ndjson, \.json file"):
        read_sketch_files([str(tmp_path / "empty")])
    (tmp_path / "bad.json").write_text(json.dumps({"rows": one}))
    with pytest.raises(StrokeFormatError, match=r"bad\.json: expected dataframe_records, dataframe_split"):
        read_sketch_files([str(tmp_path / "bad.json")])
