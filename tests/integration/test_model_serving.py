"""The registered champion serves through ``sketchpipe serve-model`` (a real ``mlflow models serve`` on 127.0.0.1)."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.serving import champion_uri
from tests.integration.conftest import free_port, wait_until_answering


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


RAGGED = [
    [[12, 3, 0], [5, -8, 0], [-7, 2, 1], [30, 30, 0], [4, 1, 1]],
    [[1.5, 2.25, 0], [3, 4, 1]],  # floats and ints alike
    [[0, 5, 0], [5, 0, 0], [0, -5, 0], [-5, 0, 1], [2, 2, 0], [1, 1, 0], [3, -1, 1]],
]


def _expected(settings, model, k: int) -> list[list[tuple[str, float]]]:
    from pipeline.serving import Classifier

    classes = read_spec_classes(settings)
    classifier = Classifier(model=model, classes=classes, max_len=60)
    return classifier.top_k([np.asarray(s, np.float32) for s in RAGGED], k)


def read_spec_classes(settings) -> list[str]:
    from mlflow.models import Model

    from pipeline import registry, tracking

    client = tracking.client_for(settings.resolved_tracking_uri)
    local = registry.download_model(client, champion_uri(settings), Path(settings.work_dir) / "dl-classes")
    return list(Model.load(str(local / "MLmodel")).metadata["classes"])


def test_serve_model_answers_a_ragged_batch_with_class_names(champion_store, tmp_path):
    """``sketchpipe serve-model`` (a real ``mlflow models serve`` on 127.0.0.1): sketches of three lengths
    in one request, the top-k class names and probabilities back, in request order."""
    settings, model = champion_store
    port = free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"registered_model_name: {settings.registered_model_name}\n")
    log_path = tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SKETCHPIPE_"))}
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "serve-model", "--config", str(config), "--tracking-uri",
             settings.resolved_tracking_uri, "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        try:
            wait_until_answering(f"http://127.0.0.1:{port}/ping", server, log_path)
            url = f"http://127.0.0.1:{port}/invocations"
            answer = _post(url, {"dataframe_records": [{"strokes": s} for s in RAGGED], "params": {"k": 2}})
            rows = answer["predictions"]
            expected = _expected(settings, model, 2)
            assert [row["top_classes"] for row in rows] == [[name for name, _ in top] for top in expected]
            for row, top in zip(rows, expected, strict=True):
                assert row["class"] == top[0][0]
                np.testing.assert_allclose(row["top_probabilities"], [p for _, p in top], atol=1e-5)
                np.testing.assert_allclose(row["probability"], top[0][1], atol=1e-5)
            default_k = _post(url, {"inputs": {"strokes": RAGGED}})["predictions"]  # the other request form
            assert [len(row["top_classes"]) for row in default_k] == [3, 3, 3]
            assert [row["class"] for row in default_k] == [row["class"] for row in rows]
            with pytest.raises(urllib.error.HTTPError) as refused:
                _post(url, {"dataframe_records": [{"strokes": [[1, 2]]}]})
            assert refused.value.code == 400
            # the reason is the answer's message, not only somewhere in its stack trace
            message = json.loads(refused.value.read())["message"]
            assert message.endswith("Error: sketch 0 is not a non-empty list of [dx, dy, pen] rows"), message
            with pytest.raises(urllib.error.HTTPError) as refused:
                _post(url, {"dataframe_records": [{"strokes": [[1, 2, 0], [3, 4, 5]]}]})
            assert refused.value.code == 400
            message = json.loads(refused.value.read())["message"]
            assert message.endswith("Error: sketch 0: row 1 has pen value 5 (expected 0 or 1)"), message
            with pytest.raises(urllib.error.HTTPError) as refused:  # a move no training sketch had
                _post(url, {"dataframe_records": [{"strokes": RAGGED[0]}, {"strokes": [[1, 2, 0], [3e30, 4, 1]]}]})
            assert refused.value.code == 400
            message = json.loads(refused.value.read())["message"]
            assert message.endswith(
                f"Error: sketch 1: row 1 moves 3e+30, more than the model was trained on "
                f"(max_abs_delta {settings.max_abs_delta:g})"
            ), message
        finally:
            server.terminate()
            server.wait(timeout=30)
