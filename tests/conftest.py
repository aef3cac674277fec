"""Shared fixtures: a tiny synthetic dataset built once per session, and a migrated MLflow store template."""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from pipeline.config import Settings, check_settings, configure_runtime

# Offline, telemetry off, before Prefect, MLflow, GX or TensorFlow is imported by a test module;
# Prefect's cached task results go to a temporary folder, not the repository's .prefect/.
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="sketchpipe-test-results-"))
configure_runtime()

TINY_MODELS = {
    "simple_rnn": {"units": 8, "num_layers": 1},
    "lstm": {"units": 8, "num_layers": 1},
    "gru": {"units": 8, "num_layers": 1},
    "conv_lstm": {"filters": [8], "kernel_size": 3, "units": 8, "num_layers": 1},
    "bilstm": {"units": 6, "num_layers": 1},
    "wavenet": {"filters": 8, "dilation_rates": [1, 2]},
    "transformer": {"dim": 8, "heads": 2, "num_layers": 1, "ff_dim": 16},
}


# enough training for a tiny model to beat chance clearly on the tiny set (0.4-0.5 test accuracy, where
# always answering one class gets 0.25), so the promotion gate makes its first model the champion
LEARNS = {"epochs": 3, "learning_rate": 0.03}


def tiny_settings(work_dir: Path, tracking_db: Path, **changes) -> Settings:
    """Return settings for a few hundred sketches and tiny models, writing only under the given paths."""
    base = Settings(
        num_classes=4,
        synthetic_per_split={"train": 60, "valid": 15, "test": 20},
        work_dir=str(work_dir),
        architectures=("lstm",),
        epochs=1,
        batch_size=32,
        max_len=60,
        tracking_uri=f"sqlite:///{tracking_db}",
        experiment_name="tests",
        registered_model_name="test-sketch-classifier",
        models=TINY_MODELS,
    )
    return check_settings(base.replace(**changes) if changes else base)


def settings_mapping(settings: Settings) -> dict:
    """Return settings as plain YAML/JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(settings).items()}


def write_settings_file(settings: Settings, path: Path) -> str:
    """Write settings as a YAML config file (what ``--config`` reads); return its path."""
    import yaml

    path.write_text(yaml.safe_dump(settings_mapping(settings)))
    return str(path)


@pytest.fixture(scope="session")
def prefect_server():
    """One Prefect test server for the whole session, started before any test captures output.

    One per process, not one per test folder: Prefect keeps process-wide services (concurrency
    slot acquisition among them) bound to the first server they talked to.
    """
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    @flow
    def configure_logging() -> None:
        """Prefect binds its console handler on the first flow run: do it outside any test's capture."""

    with prefect_test_harness(server_startup_timeout=180):
        configure_logging()
        yield


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="session")
def mlflow_template(session_dir) -> Path:
    """A SQLite tracking store with MLflow's migrations already applied (they take seconds)."""
    import mlflow

    path = session_dir / "template" / "mlflow.db"
    path.parent.mkdir()
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_db(tmp_path, mlflow_template) -> Path:
    """A fresh, migrated tracking store for one test."""
    path = tmp_path / "mlflow" / "mlflow.db"
    path.parent.mkdir()
    shutil.copy(mlflow_template, path)
    return path


@pytest.fixture(scope="session")
def dataset_settings(session_dir, mlflow_template) -> Settings:
    """Settings whose work_dir holds the session's tiny dataset."""
    return tiny_settings(session_dir / "work", session_dir / "unused.db")


@pytest.fixture(scope="session")
def tiny_dataset(dataset_settings) -> Path:
    """The tiny synthetic dataset folder (4 classes, 95 sketches each), ingested once."""
    from pipeline.ingest import ingest

    return ingest(dataset_settings)


@pytest.fixture(scope="session")
def tiny_report(dataset_settings, tiny_dataset):
    """The validation report of the tiny dataset."""
    from pipeline.stages import data

    return data.validate(dataset_settings, tiny_dataset)


@pytest.fixture(scope="session")
def tiny_features(dataset_settings, tiny_report) -> Path:
    """The features folder of the tiny dataset."""
    from pipeline.stages import data

    return data.preprocess(dataset_settings, tiny_report)


@pytest.fixture
def in_tmp_cwd(tmp_path, monkeypatch) -> Path:
    """Run the test from an empty working folder (no sketchpipe.yaml, relative paths land in tmp)."""
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("SKETCHPIPE_")]:
        monkeypatch.delenv(key)
    return tmp_path
