"""Fixtures for integration tests: a registered champion in a fresh store, free loopback ports."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import pytest

from pipeline import registry, tracking
from pipeline.features import read_spec
from pipeline.models import build_model
from pipeline.serving import export_model, model_metadata
from tests.conftest import tiny_settings, write_settings_file


def write_config(tmp_path: Path, **changes) -> str:
    """Write tiny settings (work folder under ``tmp_path``) as a YAML config file; return its path."""
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db", **changes)
    return write_settings_file(settings, tmp_path / "settings.yaml")


def run_sketchpipe(argv: list[str], cwd: Path, timeout: float = 300, wait: bool = True, env: dict | None = None):
    """Run ``sketchpipe ARGV`` in its own process from ``cwd``, as a user would: no Prefect server
    configured, no SKETCHPIPE_* overrides, no TensorFlow log level (plus ``env``); return the finished
    process (output captured as text), or with ``wait=False`` the running one (a ``Popen``, output
    piped as text)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SKETCHPIPE_", "TF_CPP_"))},
        **(env or {}),
    }
    if not wait:
        command = [sys.executable, "-m", "flows.cli", *argv]
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(url: str, process: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    """Return once ``url`` answers; fail with the server's log if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"{url} did not answer within {timeout:.0f} s"
            time.sleep(1)


@pytest.fixture(scope="module")
def champion_store(tmp_path_factory, mlflow_template, tiny_features):
    """Settings whose store holds one registered version (an untrained serving model) as champion."""
    root = tmp_path_factory.mktemp("serving")
    shutil.copy(mlflow_template, root / "mlflow.db")
    settings = tiny_settings(root / "work", root / "mlflow.db")
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, settings.experiment_name, settings.artifact_location)
    parent = tracking.start_parent_run(client, experiment_id, "p", {}, {})
    run_id = tracking.start_child_run(client, experiment_id, parent, "gru", {})
    spec = read_spec(tiny_features)
    keras.utils.set_random_seed(0)
    model = export_model(build_model("gru", 4, {"units": 6, "num_layers": 1}), spec.scale)
    version = registry.log_and_register_model(
        client,
        run_id,
        model,
        settings.registered_model_name,
        metadata=model_metadata(spec, settings.max_abs_delta),
        tags={"architecture": "gru", "test_accuracy": "0.5"},
    )
    registry.set_champion(client, settings.registered_model_name, version.version)
    return settings, model


@pytest.fixture(autouse=True)
def _on_prefect_server(prefect_server):
    """Every integration test runs against the session's Prefect test server."""
