"""The registered champion serves through ``sketchpipe serve-model`` (a real ``mlflow models serve`` on 127.0.0.1)."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline import registry, tracking
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


def _start(command: list[str], tmp_path: Path, name: str, env: dict | None = None) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - the process writes it until stopped
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SKETCHPIPE_"))}
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])  # uvicorn, by name
    return subprocess.Popen(command, env={**base, "PATH": path, **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                            cwd=tmp_path)  # fmt: skip


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=30)


def _serve_model(settings, tmp_path: Path, port: int, *flags: str) -> subprocess.Popen:
    config = tmp_path / "c.yaml"
    config.write_text(f"registered_model_name: {settings.registered_model_name}\n")
    command = [sys.executable, "-m", "flows.cli", "serve-model", "--config", str(config), "--tracking-uri",
               settings.resolved_tracking_uri, "--port", str(port), *flags]  # fmt: skip
    server = _start(command, tmp_path, "serve")
    wait_until_answering(f"http://127.0.0.1:{port}/ping", server, tmp_path / "serve.log")
    return server


def _check_scoring_contract(url: str, settings, model, prefix: str = "") -> None:
    """The answers and refusals of MLflow's scoring contract (``prefix``: what MLflow puts before a reason)."""
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
    refusals = [
        ({"dataframe_records": [{"strokes": [[1, 2]]}]}, "sketch 0 is not a non-empty list of [dx, dy, pen] rows"),
        ({"dataframe_records": [{"strokes": [[1, 2, 0], [3, 4, 5]]}]},
         "sketch 0: row 1 has pen value 5 (expected 0 or 1)"),
        ({"dataframe_records": [{"strokes": RAGGED[0]}, {"strokes": [[1, 2, 0], [3e30, 4, 1]]}]},
         f"sketch 1: row 1 moves 3e+30, more than the model was trained on (max_abs_delta {settings.max_abs_delta:g})"),
    ]  # fmt: skip
    for payload, reason in refusals:
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(url, payload)
        assert refused.value.code == 400
        message = json.loads(refused.value.read())["message"]  # the reason, not only in a stack trace
        assert message.endswith(prefix + reason), message


def test_serve_model_answers_a_ragged_batch_with_class_names(champion_store, tmp_path):
    """``sketchpipe serve-model``: sketches of three lengths in one request, the top-k class names and
    probabilities back in request order; a bad sketch is a 400 naming it; it says what it serves."""
    settings, model = champion_store
    port = free_port()
    server = _serve_model(settings, tmp_path, port)
    try:
        _check_scoring_contract(f"http://127.0.0.1:{port}/invocations", settings, model)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=10) as response:
            served = json.loads(response.read())
        assert served["name"] == settings.registered_model_name and served["version"] == "1"
        assert (served["alias"], served["num_classes"]) == ("champion", 4)
        assert served["load_seconds"] > 0
        log = (tmp_path / "serve.log").read_text()
        assert f"serving {settings.registered_model_name} version 1 (models:/" in log
    finally:
        _stop(server)


def test_serve_model_bounds_what_it_reads(champion_store, tmp_path):
    """A body over the limit is refused unread (413), one nested past the parser's depth is a 400, and
    neither is echoed back."""
    settings, _ = champion_store
    port = free_port()
    server = _serve_model(settings, tmp_path, port)
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.putrequest("POST", "/invocations")
        connection.putheader("Content-Length", str(9 << 20))  # announced, never sent: the answer comes first
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == 413 and len(answer.read()) < 200
        connection.close()
        deep = ("[" * 100_000 + "]" * 100_000).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, deep), timeout=30)
        assert refused.value.code == 400
        assert json.loads(refused.value.read())["message"] == "the body is not JSON (nested too deeply)"
        assert _post(url, {"strokes": RAGGED[1]})["predictions"][0]["class"]  # and it still answers
    finally:
        _stop(server)


def test_serve_model_batches_concurrent_requests_and_follows_the_champion(champion_store, tmp_path):
    """Requests from 16 clients at once all get their own answers while ``champion`` moves to another
    version: the server loads it beside the old one and switches; no request fails across the swap."""
    from concurrent.futures import ThreadPoolExecutor

    settings, model = champion_store
    client = tracking.client_for(settings.resolved_tracking_uri)
    name = settings.registered_model_name
    first = registry.alias_version(client, name, "champion")
    champion = client.get_model_version(name, first)
    other = client.create_model_version(name, champion.source, run_id=champion.run_id, tags=champion.tags)
    port = free_port()
    server = _serve_model(settings, tmp_path, port, "--poll-seconds", "0.5", "--max-wait-ms", "20")
    url = f"http://127.0.0.1:{port}/invocations"
    expected = [top[0][0] for top in _expected(settings, model, 1)]

    def ask(index: int) -> tuple[str, list[str]]:
        sketch = RAGGED[index % 3]
        request = urllib.request.Request(url, json.dumps({"inputs": {"strokes": [sketch]}}).encode())
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())["predictions"]
            return response.headers["X-Model-Version"], [row["class"] for row in answer]

    try:
        with ThreadPoolExecutor(16) as pool:
            before = list(pool.map(ask, range(64)))
            assert all(classes == [expected[i % 3]] for i, (_, classes) in enumerate(before))
            assert {version for version, _ in before} == {first}
            registry.set_champion(client, name, str(other.version))
            moved = time.monotonic()
            answers = []
            while time.monotonic() - moved < 20:
                answers += list(pool.map(ask, range(32)))  # any failure raises here
                if answers[-1][0] == str(other.version):
                    break
        assert answers[-1][0] == str(other.version), "the server did not follow the champion within 20 s"
        assert all(classes == [expected[i % 3]] for i, (_, classes) in enumerate(answers[-32:]))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=10) as response:
            assert json.loads(response.read())["version"] == str(other.version)
        assert (
            f"now serving {name} version {other.version} @champion (was {first})"
            in (tmp_path / "serve.log").read_text()
        )
    finally:
        registry.set_champion(client, name, first)
        _stop(server)


@pytest.mark.slow  # another server start: the contract on plain MLflow serving runs with the slow tests
def test_mlflow_models_serve_answers_the_same(champion_store, tmp_path):
    """Plain ``mlflow models serve`` on the same version: the registered model's pyfunc flavour."""
    settings, model = champion_store
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", champion_uri(settings), "--env-manager",
               "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    server = _start(command, tmp_path, "mlflow", env={"MLFLOW_TRACKING_URI": settings.resolved_tracking_uri})
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, tmp_path / "mlflow.log")
        _check_scoring_contract(f"http://127.0.0.1:{port}/invocations", settings, model, prefix="Error: ")
    finally:
        _stop(server)
