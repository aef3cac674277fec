"""The pipeline against a real ``mlflow server`` process on 127.0.0.1, started by ``sketchpipe ui``."""

import os
import shutil
import subprocess
import sys

import mlflow
import pytest

from flows.cli import main
from pipeline import registry, tracking
from tests.integration.conftest import free_port, wait_until_answering, write_config


@pytest.fixture
def tracking_server(tmp_path, mlflow_template):
    """An ``mlflow server`` over a fresh SQLite store and artifact folder; yields its URL, then stops it."""
    shutil.copy(mlflow_template, tmp_path / "server.db")
    port = free_port()
    command = [sys.executable, "-m", "flows.cli", "ui", "--port", str(port),
               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
               "--artifacts-destination", (tmp_path / "server-artifacts").as_uri()]  # fmt: skip
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=dict(os.environ))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(f"{url}/health", server, (tmp_path / "server.log"))
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
    said = (tmp_path / "server.log").read_text().splitlines()
    # quiet by default: our line, MLflow's two notes; no worker start-up lines, no library deprecations
    assert len(said) <= 4 and not any("Deprecat" in line or "Started server process" in line for line in said), said


def test_pipeline_over_http_registers_and_promotes(tracking_server, tmp_path, capsys):
    config = write_config(tmp_path, tracking_uri=tracking_server, architectures=("lstm", "gru"))
    main(["run", "--config", config])
    assert "promoted: test-sketch-classifier version" in capsys.readouterr().out
    client = tracking.client_for(tracking_server)
    experiment = client.get_experiment_by_name("tests")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.data.tags.get("architecture", "parent") for r in runs) == ["gru", "lstm", "parent"]
    versions = client.search_model_versions("name = 'test-sketch-classifier'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    champion = registry.alias_version(client, "test-sketch-classifier", "champion")
    assert champion in {"1", "2"}
    local = registry.download_model(client, "models:/test-sketch-classifier@champion", tmp_path / "champion")
    assert mlflow.models.Model.load(str(local / "MLmodel")).metadata["classes"]
    assert (tmp_path / "server-artifacts").is_dir()  # artifacts went through the server's proxy


def test_unreachable_server_fails_fast_with_one_line_and_registers_nothing(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, tracking_uri=url, io_retries=1, retry_backoff_seconds=0.1)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", config])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"sketchpipe: error: MLflow tracking server {url} is unreachable (ConnectionError)"
    assert not list((tmp_path / "work").glob("models/*"))  # nothing was trained
