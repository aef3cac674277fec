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


def test_the_export_check_accepts_the_served_model_and_refuses_a_wrong_preprocessing(tiny_features):
    import keras

    from pipeline import stages
    from pipeline.dataset import open_split
    from pipeline.evaluation import compiled_inference, predict_split
    from pipeline.features import pad_batch, read_spec, record_indices
    from pipeline.models import build_model

    keras.utils.set_random_seed(0)
    model = build_model("lstm", 4, {"units": 8, "num_layers": 1})
    spec = read_spec(tiny_features)
    evaluated, _ = predict_split(compiled_inference(model), tiny_features, "test")  # as evaluation does
    test = open_split(spec.dataset_dir, "test")
    raw = pad_batch([test.sketch(int(i))[: spec.max_len] for i in record_indices(tiny_features, "test")[:16]])

    stages.verify_export(stages.export_model(model, spec.scale), raw, evaluated[:16])
    with pytest.raises(RuntimeError, match="disagrees with the evaluated model"):
        stages.verify_export(stages.export_model(model, spec.scale / 4), raw, evaluated[:16])
    with pytest.raises(RuntimeError, match="probabilities"):
        stages.verify_export(stages.export_model(model, spec.scale), raw, evaluated[:15])
