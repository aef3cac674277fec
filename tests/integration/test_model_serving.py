"""The registered champion serves through ``mlflow models serve`` (a real process on 127.0.0.1)."""

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np

from pipeline.features import pad_batch
from pipeline.serving import champion_uri
from tests.integration.conftest import free_port, wait_until_answering


def _post(url: str, payload: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(payload).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_mlflow_models_serve_answers_with_the_champions_probabilities(champion_store, tmp_path):
    settings, model = champion_store
    port = free_port()
    # the scoring server execs `uvicorn` by name: the environment's bin/ must be on PATH
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri, "PATH": path}
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        _serve_and_check(settings, model, port, env, log, log_path)


def _serve_and_check(settings, model, port, env, log, log_path):
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", champion_uri(settings), "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server, log_path)
        sketch = [[12, 3, 0], [5, -8, 0], [-7, 2, 1], [30, 30, 0], [4, 1, 1]]
        answer = _post(f"http://127.0.0.1:{port}/invocations", {"inputs": [sketch]})
        served = np.asarray(answer["predictions"], dtype=np.float32)
        expected = model.predict(pad_batch([np.asarray(sketch, np.float32)]), verbose=0)
        assert served.shape == (1, 4)
        np.testing.assert_allclose(served, expected, atol=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)
