"""Experiment tracking with MLflow: experiments, runs, params, metrics, artifacts and dataset inputs.

Every function takes the :class:`~mlflow.MlflowClient` of one store (:func:`client_for`) and addresses
runs by id, so each Prefect task (in any thread) can reopen the run it is handed, and two flows in one
process can write to two stores. Nothing here sets MLflow's process-wide tracking URI or active run.
The model registry is :mod:`pipeline.registry`.
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import DatasetInput, InputTag, Metric, Param

# MLflow's limits (mlflow.utils.validation): longer values are refused, so long content goes to artifacts
MAX_INPUT_TAG_VALUE = 500
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000


class TrackingStoreUnavailableError(RuntimeError):
    """The MLflow tracking server does not answer."""


def check_store(tracking_uri: str, timeout: float = 10.0) -> None:
    """Raise :class:`TrackingStoreUnavailableError` if an http(s) tracking server does not answer its health check."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=timeout).raise_for_status()
    except requests.RequestException as exc:
        raise TrackingStoreUnavailableError(
            f"MLflow tracking server {tracking_uri} is unreachable ({exc.__class__.__name__})"
        ) from exc


STORE_LOCK_WAIT_SECONDS = 300.0  # how long a call waits for a locked SQLite store before it fails


def store_is_locked(error: BaseException) -> bool:
    """Return whether an error says that a SQLite store was locked by another writer (it can pass)."""
    text = str(error).lower()
    return "database is locked" in text or "database table is locked" in text


class PatientClient(mlflow.MlflowClient):
    """An :class:`~mlflow.MlflowClient` whose calls wait for a locked SQLite store instead of failing.

    SQLite lets one writer in at a time and gives up after its busy timeout (seconds): another
    process holding the store (a long migration, a backup, a second pipeline) would otherwise cost
    a run its params or an epoch's metrics. Every public call is retried with backoff while the
    store says it is locked, for up to :data:`STORE_LOCK_WAIT_SECONDS`; then the error is raised, and
    the run fails rather than finish with data missing. A locked store commits nothing, so a retried
    call cannot apply twice.
    """

    def __getattribute__(self, name: str):
        attribute = super().__getattribute__(name)
        if name.startswith("_") or not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def patiently(*args, **kwargs):
            deadline = time.monotonic() + STORE_LOCK_WAIT_SECONDS
            delay = 0.25
            while True:
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if not store_is_locked(exc) or time.monotonic() + delay > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 5.0)

        return patiently


@functools.cache
def client_for(tracking_uri: str) -> mlflow.MlflowClient:
    """Return the client of one store, for its runs and its model registry (a :class:`PatientClient`).

    One client per store and process: a client holds its store's connection pool. A SQLite store's
    folder is created, and a new store's schema is created under a file lock beside it, so that two
    processes starting on a fresh store do not race on MLflow's migrations.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return PatientClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    from filelock import FileLock

    path = Path(tracking_uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # the client opens the store: creates or migrates its schema
        client = PatientClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.search_experiments(max_results=1)
    return client


# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, an assistant); with
# it, in the runs table that compares trained models
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def ensure_experiment(client: mlflow.MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """Return the id of the experiment ``name``, creating it (with its artifact location) if needed.

    The experiment is marked as a model-training one, so the MLflow UI opens on its runs; an
    experiment already marked otherwise keeps its mark.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(
                name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
            )
        except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(name)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment.experiment_id


def git_commit() -> str:
    """Return the current git commit of the working folder, or ``"unknown"`` outside a repository."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent_run(
    client: mlflow.MlflowClient, experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]
) -> str:
    """Create the flow-level run that the architecture runs nest under; return its id (left RUNNING)."""
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    log_params(client, run.info.run_id, params)
    return run.info.run_id


def start_child_run(
    client: mlflow.MlflowClient, experiment_id: str, parent_run_id: str, run_name: str, tags: dict[str, str]
) -> str:
    """Create a run nested under ``parent_run_id`` (one per architecture); return its id."""
    run = client.create_run(experiment_id, run_name=run_name, tags={"mlflow.parentRunId": parent_run_id, **tags})
    return run.info.run_id


def find_child_run(client: mlflow.MlflowClient, parent_run_id: str, run_name: str) -> str | None:
    """Return the id of the run named ``run_name`` nested under ``parent_run_id``, or ``None``."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.run_name = '{run_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def reopen_run(client: mlflow.MlflowClient, run_id: str) -> None:
    """Mark a run RUNNING again, e.g. when a killed pipeline run is resumed."""
    client.update_run(run_id, status="RUNNING")


def end_run(client: mlflow.MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run as ended with ``status`` (FINISHED, FAILED or KILLED)."""
    client.set_terminated(run_id, status)


def class_list_value(classes: list[str], limit: int = MAX_INPUT_TAG_VALUE) -> str:
    """Return the class list as one param or tag value: all names when they fit in ``limit`` characters,
    else the count, the first names and where the whole list is (``dataset/classes.txt``)."""
    joined = ",".join(classes)
    if len(joined) <= limit:
        return joined
    head = f"{len(classes)} classes (all in the dataset/classes.txt artifact): "
    shown: list[str] = []
    for name in classes:
        if len(head) + len(",".join([*shown, name])) + len(",...") > limit:
            break
        shown.append(name)
    return head + ",".join(shown) + ",..."


def log_dataset_input(
    client: mlflow.MlflowClient,
    run_id: str,
    name: str,
    path: str,
    digest: str,
    profile: dict[str, Any],
    classes: list[str],
) -> None:
    """Record a dataset folder as the run's input: name, location, content digest and a short profile.

    MLflow caps a dataset input's tags at 500 characters, so the input carries totals and the whole
    profile (counts per split and class, rejected and skipped records) and the class list are run
    artifacts under ``dataset/``.
    """
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    counts = profile.get("counts", {})
    summary = {
        "classes": len(classes),
        "sketches": {split: sum(per_class.values()) for split, per_class in counts.items()},
        "rejected": sum(profile.get("rejected", {}).values()),
        "skipped": sum(profile.get("skipped", {}).values()),
        "profile": "dataset/profile.json",
    }
    with warnings.catch_warnings():  # MLflow registers its local artifact source twice and says so on every call
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(str(Path(path).resolve()))
    dataset = MetaDataset(source, name=name, digest=digest[:20])
    tags = [InputTag(key="mlflow.data.context", value="training"), InputTag(key="profile", value=json.dumps(summary))]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])
    client.log_dict(run_id, profile, "dataset/profile.json")
    client.log_text(run_id, "\n".join(classes) + "\n", "dataset/classes.txt")


def log_params(client: mlflow.MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log params to a run, in one request."""
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])


def log_metrics(client: mlflow.MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log scalar metrics to a run, in one request."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()])


def log_table(client: mlflow.MlflowClient, run_id: str, columns: dict[str, list], artifact_file: str) -> None:
    """Log a table (column name -> values) as an MLflow table artifact, which the UI shows as a table."""
    import pandas as pd

    client.log_table(run_id, pd.DataFrame(columns), artifact_file)


def log_dict(client: mlflow.MlflowClient, run_id: str, data: dict, artifact_file: str) -> None:
    """Log a JSON-serialisable mapping as a run artifact."""
    client.log_dict(run_id, data, artifact_file)


def log_artifacts(client: mlflow.MlflowClient, run_id: str, folder: Path, artifact_path: str) -> None:
    """Log every file of a folder as artifacts of a run."""
    client.log_artifacts(run_id, str(folder), artifact_path)


def log_images(client: mlflow.MlflowClient, run_id: str, images: dict[str, Path]) -> None:
    """Log PNG files as MLflow images, one key each (the chart view's image grid compares them across runs)."""
    from PIL import Image

    for key, path in images.items():
        with Image.open(path) as image:
            client.log_image(run_id, image.convert("RGB"), key=key, step=0)


def epoch_logger(client: mlflow.MlflowClient, run_id: str):
    """Return a Keras callback that logs every epoch's metrics to the run ``run_id``, synchronously.

    Synchronous, so a run killed right after an epoch keeps that epoch's metrics; by run id through
    ``client``, so it needs no active run. The unstepped ``validation_*`` copies of the ``val_*``
    metrics that Keras also reports are not logged.
    """
    import keras

    class EpochLogger(keras.callbacks.Callback):
        async_safe = True  # it has no batch hooks: training need not wait for it

        def on_epoch_end(self, epoch, logs=None):
            if logs:
                log_metrics(client, run_id, {k: float(v) for k, v in logs.items()}, step=epoch)

    return EpochLogger()


def metric_histories(client: mlflow.MlflowClient, run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Return each metric's values by step (the last value logged for a step wins)."""
    histories = {}
    for key in keys:
        by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
        histories[key] = [by_step[step] for step in sorted(by_step)]
    return histories


def load_array_artifact(client: mlflow.MlflowClient, run_id: str, artifact_path: str) -> np.ndarray | None:
    """Return a ``.npy`` artifact of a run as an array (never unpickled), or ``None`` if the run has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, artifact_path, tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return np.load(local, allow_pickle=False)
