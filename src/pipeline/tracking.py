"""Experiment tracking and the model registry with MLflow: runs, model logging, versions and aliases.

Runs are addressed by id so that each Prefect task (in any thread) can reopen the run it is handed.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

# MLflow's limits (mlflow.utils.validation): longer values are refused, so long content goes to artifacts
MAX_INPUT_TAG_VALUE = 500
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "champion_history"


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


def use_store(tracking_uri: str) -> None:
    """Point MLflow's tracking and registry at ``tracking_uri``; create the SQLite store's folder."""
    import mlflow

    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)


def ensure_experiment(name: str, artifact_location: str | None = None) -> str:
    """Return the id of the experiment ``name``, creating it (with its artifact location) if needed."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow.create_experiment(name, artifact_location=artifact_location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a concurrent run
        return mlflow.get_experiment_by_name(name).experiment_id


def git_commit() -> str:
    """Return the current git commit of the working folder, or ``"unknown"`` outside a repository."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def start_parent_run(experiment_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Create the flow-level run that the architecture runs nest under; return its id (left RUNNING)."""
    import mlflow
    from mlflow.entities import Param

    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
    return run.info.run_id


def start_child_run(experiment_id: str, parent_run_id: str, run_name: str, tags: dict[str, str]) -> str:
    """Create a run nested under ``parent_run_id`` (one per architecture); return its id."""
    import mlflow

    run = mlflow.MlflowClient().create_run(
        experiment_id, run_name=run_name, tags={"mlflow.parentRunId": parent_run_id, **tags}
    )
    return run.info.run_id


def find_child_run(parent_run_id: str, run_name: str) -> str | None:
    """Return the id of the run named ``run_name`` nested under ``parent_run_id``, or ``None``."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.run_name = '{run_name}'",
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def reopen_run(run_id: str) -> None:
    """Mark a run RUNNING again, e.g. when a killed pipeline run is resumed."""
    import mlflow

    mlflow.MlflowClient().update_run(run_id, status="RUNNING")


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
    run_id: str, name: str, path: str, digest: str, profile: dict[str, Any], classes: list[str]
) -> None:
    """Record a dataset folder as the run's input: name, location, content digest and a short profile.

    MLflow caps a dataset input's tags at 500 characters, so the input carries totals and the whole
    profile (counts per split and class, rejected and skipped records) and the class list are run
    artifacts under ``dataset/``.
    """
    import json

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

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
    client = mlflow.MlflowClient()
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset._to_mlflow_entity(), tags=tags)])
    client.log_dict(run_id, profile, "dataset/profile.json")
    client.log_text(run_id, "\n".join(classes) + "\n", "dataset/classes.txt")


def end_run(run_id: str, status: str = "FINISHED") -> None:
    """Mark a run as ended with ``status`` (FINISHED, FAILED or KILLED)."""
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status)


def log_metrics(run_id: str, metrics: dict[str, float]) -> None:
    """Log scalar metrics to a run, in one request."""
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    mlflow.MlflowClient().log_batch(
        run_id, metrics=[Metric(key, float(value), now, 0) for key, value in metrics.items()]
    )


def log_table(run_id: str, columns: dict[str, list], artifact_file: str) -> None:
    """Log a table (column name -> values) as an MLflow table artifact, which the UI shows as a table."""
    import mlflow
    import pandas as pd

    mlflow.MlflowClient().log_table(run_id, pd.DataFrame(columns), artifact_file)


def log_dict(run_id: str, data: dict, artifact_file: str) -> None:
    """Log a JSON-serialisable mapping as a run artifact."""
    import mlflow

    mlflow.MlflowClient().log_dict(run_id, data, artifact_file)


def epoch_logger():
    """Return a Keras callback that logs every epoch's metrics to the active MLflow run.

    It is MLflow's ``MlflowCallback`` with two changes: epochs are logged synchronously, so a run
    killed right after an epoch keeps that epoch's metrics (the stock callback queues them), and the
    unstepped ``validation_*`` copies of the ``val_*`` metrics are not logged.
    """
    import mlflow
    import mlflow.keras

    class _EpochLogger(mlflow.keras.MlflowCallback):
        async_safe = True  # its batch hook logs nothing (no log_every_n_steps): training need not wait for it

        def on_epoch_end(self, epoch, logs=None):
            if logs:
                mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch, synchronous=True)

        def on_test_end(self, logs=None):
            pass

    return _EpochLogger()


_requirements_scan_lock = threading.Lock()
_requirements_scan: threading.Thread | None = None


def warm_model_logging() -> threading.Thread | None:
    """Start MLflow's one-time scan of the installed packages in a background thread; return the thread.

    Logging a model makes MLflow check its pip requirements against the environment, which first
    maps every installed distribution to its modules: about 2 s once per process here, paid by the
    first registration. Started while a model trains (TensorFlow runs without the GIL), the map is
    ready when registration needs it. Once per process; ``None`` if this MLflow has no such scan.
    """
    global _requirements_scan
    try:  # a private MLflow function: if it moves, registration just pays the scan itself
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map
    except ImportError:
        return None
    with _requirements_scan_lock:
        if _requirements_scan is None:
            _requirements_scan = threading.Thread(
                target=_init_modules_to_packages_map, name="mlflow-requirements-scan", daemon=True
            )
            _requirements_scan.start()
        return _requirements_scan


def model_signature():
    """Return the serving signature: ``(-1, -1, 3)`` float32 strokes in, class probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, 3), "strokes")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1), "probabilities")]),
    )


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and the test metric it is compared on."""

    name: str
    version: str
    architecture: str
    run_id: str
    test_accuracy: float


def log_and_register_model(
    run_id: str,
    model,
    registered_model_name: str,
    input_example: np.ndarray,
    metadata: dict[str, Any],
    tags: dict[str, str],
) -> RegisteredVersion:
    """Log a Keras model for ``run_id`` with ``mlflow.keras`` and register it as a new version.

    ``metadata`` (class names, normalising scale, crop length) travels in the MLmodel file so that
    whoever loads the model can prepare raw strokes the way training did.
    """
    import tempfile

    import keras
    import mlflow
    import mlflow.keras
    import tensorflow as tf

    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    scan = warm_model_logging()
    if scan is not None:
        scan.join()  # wait for the background scan rather than run a second one beside it
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        # mlflow.keras.log_model(input_example=...) writes the example before creating its folder
        # (mlflow/mlflow#16183), so save into a folder made here and log it as a LoggedModel.
        local.mkdir()
        mlflow.keras.save_model(
            model,
            str(local),
            signature=model_signature(),
            input_example=input_example,
            metadata=metadata,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
        )
        logged = mlflow.initialize_logged_model(
            name="model", source_run_id=run_id, experiment_id=experiment_id, tags=dict(tags)
        )
        client.log_model_artifacts(logged.model_id, str(local))
        mlflow.finalize_logged_model(logged.model_id, "READY")
    # the version is created with its tags in one call: a store lost mid-way cannot leave a version
    # that says nothing about what it is (a retried registration finds it by run id, see
    # find_registered_version)
    registered = mlflow.register_model(
        f"models:/{logged.model_id}", registered_model_name, tags={k: str(v) for k, v in tags.items()}
    )
    version = str(registered.version)
    client.update_model_version(
        registered_model_name,
        version,
        description=(
            f"{tags.get('architecture', '?')} trained on dataset {tags.get('dataset_fingerprint', '?')[:12]}; "
            f"test accuracy {float(tags.get('test_accuracy', 'nan')):.4f}"
        ),
    )
    return RegisteredVersion(
        name=registered_model_name,
        version=version,
        architecture=tags.get("architecture", ""),
        run_id=run_id,
        test_accuracy=float(tags.get("test_accuracy", "nan")),
    )


def find_registered_version(name: str, run_id: str) -> RegisteredVersion | None:
    """Return the version of ``name`` already registered from ``run_id``, or ``None``."""
    import mlflow

    for version in mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return RegisteredVersion(
            name=name,
            version=str(version.version),
            architecture=version.tags.get("architecture", ""),
            run_id=run_id,
            test_accuracy=float(version.tags.get("test_accuracy", "nan")),
        )
    return None


def current_alias(name: str, alias: str):
    """Return the model version that holds ``alias``, or ``None`` when no version does."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def alias_version(name: str, alias: str) -> str | None:
    """Return the version number (as a string) that holds ``alias``, or ``None``."""
    version = current_alias(name, alias)
    return None if version is None else str(version.version)


def record_decision(name: str, version: str, tags: dict[str, str]) -> None:
    """Record a promotion decision as tags on the candidate version."""
    import mlflow

    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def set_alias(name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (use :func:`set_champion` for the champion, which keeps history)."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def metric_histories(run_id: str, keys: list[str]) -> dict[str, list[float]]:
    """Return each metric's values by step (the last value logged for a step wins)."""
    import mlflow

    client = mlflow.MlflowClient()
    histories = {}
    for key in keys:
        by_step = {m.step: m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)}
        histories[key] = [by_step[step] for step in sorted(by_step)]
    return histories


def load_array_artifact(run_id: str, artifact_path: str) -> np.ndarray | None:
    """Return a ``.npy`` artifact of a run as an array (never unpickled), or ``None`` if the run has none."""
    import tempfile

    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (mlflow.exceptions.MlflowException, OSError):
            return None
        return np.load(local, allow_pickle=False)


def log_artifacts(run_id: str, folder: Path, artifact_path: str) -> None:
    """Log every file of a folder as artifacts of a run."""
    import mlflow

    mlflow.MlflowClient().log_artifacts(run_id, str(folder), artifact_path)


def set_champion(name: str, version: str) -> None:
    """Point ``champion`` at ``version`` and append it to the model's champion history."""
    import mlflow

    client = mlflow.MlflowClient()
    client.get_model_version(name, version)  # raises for an unknown version, before anything changes
    history = _champion_history(name)
    # history first: if the store goes away between the two writes, the alias still names the old
    # champion and a rollback from the longer history lands on it again; the other order would
    # leave a champion that a rollback skips past
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join([*history, version]))
    client.set_registered_model_alias(name, CHAMPION, version)


def rollback_champion(name: str) -> str:
    """Move ``champion`` back to the version that held it before; return that version.

    Raises:
        ValueError: there is no earlier champion to go back to (nothing is changed).
    """
    import mlflow

    history = _champion_history(name)
    if len(history) < 2:
        raise ValueError(f"model {name!r} has no earlier champion to roll back to")
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, CHAMPION, history[-2])
    client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history[:-1]))
    return history[-2]


def _champion_history(name: str) -> list[str]:
    import mlflow

    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except mlflow.exceptions.MlflowException as exc:
        raise ValueError(f"no registered model named {name!r}") from exc
    return [v for v in model.tags.get(HISTORY_TAG, "").split(",") if v]
