"""``sketchpipe predict`` against a registered champion."""

import json

import numpy as np
import pytest

from flows.cli import main
from pipeline.features import pad_batch


def test_predict_prints_top3_per_sketch(champion_store, tmp_path, capsys):
    settings, model = champion_store
    sketch = [[12, 3, 0], [5, -8, 0], [-7, 2, 1]]
    (tmp_path / "s.json").write_text(json.dumps([sketch, sketch[:2]]))
    main(
        [
            "predict",
            "--tracking-uri",
            settings.resolved_tracking_uri,
            "--config",
            _config(settings, tmp_path),
            str(tmp_path / "s.json"),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    expected = model.predict(pad_batch([np.asarray(sketch, np.float32)]), verbose=0)[0]
    name, scores = lines[0].split(": ", 1)
    assert name == f"{tmp_path / 's.json'}[0]"
    pairs = [item.rsplit(" ", 1) for item in scores.split(", ")]
    assert len(pairs) == 3
    classes = ["circle", "square", "triangle", "star"]
    assert [label for label, _ in pairs] == [classes[i] for i in np.argsort(-expected)[:3]]
    assert float(pairs[0][1]) == pytest.approx(expected.max(), abs=1e-3)


def test_predict_with_an_unknown_model_fails_in_one_line(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    (tmp_path / "s.json").write_text("[[1, 2, 1]]")
    with pytest.raises(SystemExit):
        main(
            [
                "predict",
                "--tracking-uri",
                settings.resolved_tracking_uri,
                "--model-uri",
                "models:/nope/7",
                str(tmp_path / "s.json"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model-uri" in err


def _config(settings, tmp_path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(f"registered_model_name: {settings.registered_model_name}\n")
    return str(path)
