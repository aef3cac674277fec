"""The MLflow model registry: logging and registering models, versions, aliases and the champion history.

Like :mod:`pipeline.tracking`, every function takes the client of one store; nothing here uses
MLflow's process-wide tracking or registry URI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from pipeline.promotion import CHALLENGER, CHAMPION, PromotionDecision

HISTORY_TAG = "champion_history"  # prefix of one registered-model tag per entry: champion_history/<time>-<id>
LABEL_SPACE_TAG = "label_space"  # on each version: the fingerprint of its ordered class list (see label_space)


class LabelSpaceError(ValueError):
    """A run's classes differ from those of the registered model's champion (another label space)."""


class UnservableModelError(RuntimeError):
    """A registered version does not load and answer as serving loads it (no project classes registered)."""


@dataclasses.dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and the test metric it is compared on."""

    name: str
    version: str
    architecture: str
    run_id: str
    test_accuracy: float


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
    """Return the serving signature (see :mod:`pipeline.pyfunc`): a ``strokes`` column of raw stroke-3
    sketches of any lengths in, ``k`` as a parameter; the top-k class names and probabilities out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(AnyType(), "strokes")]),  # int or float rows: checked by pipeline.pyfunc
        outputs=Schema(
            [
                ColSpec(DataType.string, "class"),
                ColSpec(DataType.double, "probability"),
                ColSpec(Array(DataType.string), "top_classes"),
                ColSpec(Array(DataType.double), "top_probabilities"),
            ]
        ),
        params=ParamSchema([ParamSpec("k", DataType.long, 3)]),
    )


def _serve_with_class_names(local: Path) -> None:
    """Point the saved model's ``python_function`` flavour at :mod:`pipeline.pyfunc` (ragged batches of
    raw sketches in, class names out) and give it that signature."""
    from mlflow.models import Model

    conf = Model.load(str(local / "MLmodel"))
    conf.flavors["python_function"]["loader_module"] = "pipeline.pyfunc"
    conf.signature = model_signature()  # set here: mlflow.keras takes tensor signatures only
    conf.save(str(local / "MLmodel"))


def log_and_register_model(
    client: mlflow.MlflowClient,
    run_id: str,
    model,
    registered_model_name: str,
    metadata: dict[str, Any],
    tags: dict[str, str],
) -> RegisteredVersion:
    """Log a Keras model for ``run_id`` with ``mlflow.keras`` and register it as a new version.

    ``metadata`` (class names, normalising scale, crop length) travels in the MLmodel file so that
    whoever loads the model can prepare raw strokes the way training did. Its ``python_function``
    flavour is :mod:`pipeline.pyfunc`: served or loaded with ``mlflow.pyfunc``, it takes sketches of
    any lengths and answers with the top-k class names and probabilities.
    """
    import keras
    import mlflow.keras
    import tensorflow as tf

    experiment_id = client.get_run(run_id).info.experiment_id
    scan = warm_model_logging()
    if scan is not None:
        scan.join()  # wait for the background scan rather than run a second one beside it
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        # mlflow.keras.log_model logs through the process-wide store: save into a folder made here and
        # log that folder as a LoggedModel of this client's store.
        local.mkdir()
        keras_saver = logging.getLogger("mlflow.keras.save")
        level = keras_saver.level
        keras_saver.setLevel(logging.ERROR)  # "no signature": it is set just below, in a form Keras's saver refuses
        try:
            mlflow.keras.save_model(
                model,
                str(local),
                metadata=metadata,
                pip_requirements=[f"tensorflow=={tf.__version__}", f"keras=={keras.__version__}"],
            )
        finally:
            keras_saver.setLevel(level)
        _serve_with_class_names(local)
        logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id, tags=dict(tags))
        client.log_model_artifacts(logged.model_id, str(local))
        client.finalize_logged_model(logged.model_id, "READY")
    try:
        client.create_registered_model(registered_model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # registered by an earlier or a concurrent run
            raise
    tags = {k: str(v) for k, v in tags.items()}
    # the version is created with its tags in one call: a store lost mid-way cannot leave a version
    # that says nothing about what it is (a retried registration finds it by run id, see
    # find_registered_version)
    # the source is the artifact location itself: for a models:/<id> source, MLflow's SQL registry
    # looks the logged model up through the process-wide tracking URI, which may be another store
    version = client.create_model_version(
        registered_model_name,
        source=logged.artifact_location,
        run_id=run_id,
        tags=tags,
        model_id=logged.model_id,
        description=(
            f"{tags.get('architecture', '?')} trained on dataset {tags.get('dataset_fingerprint', '?')[:12]}; "
            f"test accuracy {float(tags.get('test_accuracy', 'nan')):.4f}"
        ),
    )
    return RegisteredVersion(
        name=registered_model_name,
        version=str(version.version),
        architecture=tags.get("architecture", ""),
        run_id=run_id,
        test_accuracy=float(tags.get("test_accuracy", "nan")),
    )


def label_space(classes: list[str]) -> str:
    """Return the fingerprint of an ordered class list: models whose outputs mean the same classes share it."""
    return hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16]


def version_classes(client: mlflow.MlflowClient, version) -> list[str]:
    """Return the class names a registered version was logged with (read from its MLmodel file)."""
    import yaml
    from mlflow.artifacts import download_artifacts

    source = model_source(client, f"models:/{version.name}/{version.version}")
    with tempfile.TemporaryDirectory() as tmp:
        local = download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/MLmodel", dst_path=tmp, tracking_uri=client.tracking_uri
        )
        return list((yaml.safe_load(Path(local).read_text()).get("metadata") or {}).get("classes") or [])


def check_label_space(client: mlflow.MlflowClient, name: str, classes: list[str]) -> None:
    """Raise :class:`LabelSpaceError` if ``name`` has a champion trained on other classes than ``classes``.

    One registered model holds one label space: a model of 345 classes must neither be compared with nor
    replace the champion of 8 (the gate would re-score the champion on classes it never saw). Versions
    registered before the ``label_space`` tag existed are read from their MLmodel file.
    """
    champion = current_alias(client, name, CHAMPION)
    if champion is None:
        return
    theirs = champion.tags.get(LABEL_SPACE_TAG)
    champion_classes = None
    if theirs is None:
        champion_classes = version_classes(client, champion)
        theirs = label_space(champion_classes)
    if theirs == label_space(list(classes)):
        return
    count = champion.tags.get("num_classes") or (str(len(champion_classes)) if champion_classes else "other")
    raise LabelSpaceError(
        f"registered_model_name: the champion of {name!r} (version {champion.version}) was trained on {count} "
        f"classes, this run on {len(classes)}{'' if count != str(len(classes)) else ' other ones'}; give this "
        "label space its own registered_model_name (--registered-model-name, or in --config)"
    )


def check_loads_as_served(client: mlflow.MlflowClient, model_uri: str) -> None:
    """Load ``model_uri`` through its ``python_function`` flavour as a process that never trained would, and
    score one sketch.

    Keras's registry of project classes (a loss, a layer registered by training code) is emptied for the
    load, so a model that could load only where training ran fails here as it would in
    ``mlflow.pyfunc.load_model`` elsewhere. The promotion gate calls this before a version may become the
    champion; the serving contract test loads every kind of version in a new process.

    Raises:
        UnservableModelError: with the first line of the loader's error.
    """
    import keras
    import numpy as np

    from pipeline.pyfunc import _load_pyfunc

    registered = keras.saving.get_custom_objects()
    kept = dict(registered)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            registered.clear()
            local = download_model(client, model_uri, Path(tmp) / "model")
            answer = _load_pyfunc(str(local)).predict({"strokes": [np.array([[3, 4, 0], [5, -2, 1]], np.float32)]})
            if len(answer) != 1 or not isinstance(answer["class"][0], str):
                raise ValueError(f"answered {answer!r} for one sketch")
        except Exception as exc:
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            # Keras puts the class it could not find below a generic first line
            named = [line for line in lines if "Could not locate" in line]
            reason = (named or lines or [type(exc).__name__])[0].removeprefix("Exception encountered: ")[:300]
            raise UnservableModelError(f"{model_uri} does not load as served: {reason}") from None
        finally:
            registered.update(kept)


def find_registered_version(client: mlflow.MlflowClient, name: str, run_id: str) -> RegisteredVersion | None:
    """Return the version of ``name`` already registered from ``run_id``, or ``None``."""
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return RegisteredVersion(
            name=name,
            version=str(version.version),
            architecture=version.tags.get("architecture", ""),
            run_id=run_id,
            test_accuracy=float(version.tags.get("test_accuracy", "nan")),
        )
    return None


def version_exists(client: mlflow.MlflowClient, name: str, version: str) -> bool:
    """Return whether registered model ``name`` has ``version``."""
    try:
        client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return False
        raise
    return True


def current_alias(client: mlflow.MlflowClient, name: str, alias: str):
    """Return the model version that holds ``alias``, or ``None`` when no version does."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_version(client: mlflow.MlflowClient, name: str, alias: str) -> str | None:
    """Return the version number (as a string) that holds ``alias``, or ``None``."""
    version = current_alias(client, name, alias)
    return None if version is None else str(version.version)


def no_champion_reason(client: mlflow.MlflowClient, name: str) -> str | None:
    """Return why registered model ``name`` has no champion for serving to load, in one line with what to
    do instead (``None`` when it has one): no version yet, or the promotion gate kept them out."""
    if current_alias(client, name, CHAMPION) is not None:
        return None
    challenger = current_alias(client, name, CHALLENGER)
    if challenger is not None:
        version = challenger.version
        why = challenger.tags.get("promotion_reason", "see its promotion_reason tag")
        return (
            f"{name} has no champion: the promotion gate kept version {version} out ({why}); give --model-uri "
            f"models:/{name}/{version}, or make it the champion: sketchpipe promote --version {version}"
        )
    try:
        registered = client.search_model_versions(f"name = '{name}'", max_results=1)
    except MlflowException:
        registered = []
    if not registered:
        return f"{name} has no registered version yet (train one with `sketchpipe run`)"
    return f"{name} has no champion (make one with `sketchpipe promote --version N`)"


def record_decision(client: mlflow.MlflowClient, name: str, version: str, tags: dict[str, str]) -> None:
    """Record a promotion decision as tags on the candidate version."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))


def set_alias(client: mlflow.MlflowClient, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` (use :func:`set_champion` for the champion, which keeps history)."""
    _point_alias(client, name, alias, version)


def _point_alias(client: mlflow.MlflowClient, name: str, alias: str, version: str, attempts: int = 5) -> None:
    """Set an alias; if another writer created the alias row at the same moment, set it again.

    MLflow's SQL store inserts an alias it has not seen after looking for it, so two writers setting a
    new alias at once make one fail with a UNIQUE constraint error (seen under 2 x 25 concurrent
    promotions); the row exists then, and a second try updates it.
    """
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, version)
            return
        except Exception as exc:
            if "UNIQUE constraint failed" not in str(exc) or attempt == attempts - 1:
                raise


@contextlib.contextmanager
def alias_lock(tracking_uri: str, name: str, timeout: float = 600.0):
    """Hold the lock on model ``name``'s aliases in a SQLite store (a file lock beside the store).

    Whoever moves ``champion`` after reading it (the promotion gate, ``sketchpipe promote``,
    a rollback) holds it, so no two processes on this machine interleave their read and write,
    with or without a Prefect server. A remote store has no file to lock beside: there the gate's
    Prefect global concurrency limit is the lock (see ``tasks/registry.py``).

    Raises:
        filelock.Timeout: the lock was not free within ``timeout`` seconds.
    """
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    from filelock import FileLock

    store = Path(tracking_uri.removeprefix("sqlite:///"))
    with FileLock(f"{store}.{re.sub(r'[^A-Za-z0-9_.-]', '-', name)}.aliases.lock", timeout=timeout):
        yield


def apply_promotion(client: mlflow.MlflowClient, name: str, decision: PromotionDecision) -> None:
    """Carry out a promotion decision: move ``champion`` (keeping history) or ``challenger``, and tag the
    candidate version with the decision."""
    if decision.moves_champion:
        set_champion(client, name, decision.candidate_version)
    elif decision.alias == CHALLENGER:
        set_alias(client, name, CHALLENGER, decision.candidate_version)
    record_decision(client, name, decision.candidate_version, decision.version_tags())


def set_champion(client: mlflow.MlflowClient, name: str, version: str) -> None:
    """Point ``champion`` at ``version`` and append it to the model's champion history."""
    client.get_model_version(name, version)  # raises for an unknown version, before anything changes
    history = champion_history(client, name)
    if history and history[-1] == version:  # already the champion: a rollback must not land on it again
        _point_alias(client, name, CHAMPION, version)
        return
    # history first: if the store goes away between the two writes, the alias still names the old
    # champion and a rollback from the longer history lands on it again; the other order would
    # leave a champion that a rollback skips past. Each entry is a tag of its own, written once, so
    # promotions at the same time cannot overwrite each other's entries (one list tag, read and
    # rewritten, lost 11 of 51 entries under 2 x 25 concurrent calls).
    client.set_registered_model_tag(name, f"{HISTORY_TAG}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}", version)
    _point_alias(client, name, CHAMPION, version)


def rollback_champion(client: mlflow.MlflowClient, name: str) -> str:
    """Move ``champion`` back to the version that held it before; return that version.

    Raises:
        ValueError: there is no earlier champion to go back to (nothing is changed).
    """
    entries = _history_entries(client, name)
    if len(entries) < 2:
        raise ValueError(f"model {name!r} has no earlier champion to roll back to")
    previous = entries[-2][1]
    _point_alias(client, name, CHAMPION, previous)
    client.delete_registered_model_tag(name, entries[-1][0])
    return previous


def champion_history(client: mlflow.MlflowClient, name: str) -> list[str]:
    """Return the versions that held ``champion``, oldest first (the last holds it now).

    Raises:
        ValueError: there is no registered model ``name``.
    """
    return [version for _, version in _history_entries(client, name)]


def _history_entries(client: mlflow.MlflowClient, name: str) -> list[tuple[str, str]]:
    """Return ``(tag key, version)`` of each champion history entry, oldest first (keys sort by time)."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        raise ValueError(f"no registered model named {name!r}") from exc
    return sorted((key, value) for key, value in model.tags.items() if key.startswith(f"{HISTORY_TAG}/"))


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def download_model(client: mlflow.MlflowClient, model_uri: str, dst: Path) -> Path:
    """Download a logged model to ``dst`` and return its local folder (the one holding ``MLmodel``).

    ``models:/<name>/<version>`` and ``models:/<name>@<alias>`` are resolved in ``client``'s
    registry; ``models:/<model id>``, ``runs:/...`` and artifact URIs are fetched from its store.

    Raises:
        MlflowException: the model, version or alias does not exist.
        ValueError: a local folder that holds no logged model.
    """
    from mlflow.artifacts import download_artifacts

    source = model_source(client, model_uri)
    return Path(download_artifacts(artifact_uri=source, dst_path=str(dst), tracking_uri=client.tracking_uri))


def model_source(client: mlflow.MlflowClient, model_uri: str) -> str:
    """Return where a model URI's files are, checking that they exist without fetching them (see
    :func:`download_model`): a registered version or alias, a logged model, a run, or a local folder
    that holds an ``MLmodel`` file (any other folder would be copied whole, then refused)."""
    from urllib.parse import urlparse

    match = _MODEL_URI.match(model_uri)
    if match and match["version"]:
        source = client.get_model_version(match["name"], match["version"]).source
    elif match and match["alias"]:
        source = client.get_model_version_by_alias(match["name"], match["alias"]).source
    else:
        source = model_uri
    if source.startswith("models:/m-"):
        source = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    elif source.startswith("runs:/"):
        client.get_run(source.removeprefix("runs:/").split("/")[0])  # raises for an unknown run
    parsed = urlparse(source)
    if parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme else source)
        if not (folder / "MLmodel").is_file():
            raise ValueError(f"{folder} holds no MLmodel file (not a logged model)")
    return source
