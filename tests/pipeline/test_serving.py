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
