"""Data tasks: download, ingest, validate, preprocess (wrapping :mod:`pipeline.stages.data`).

Ingest, validate and preprocess are cached across flow runs on (source fingerprint, the settings
they read, their input, library code version), so a scheduled re-run on unchanged data skips them;
changed data, parameters or code recompute. Their results (paths and a small report) are kept in
Prefect's result storage. :func:`serialized` makes a flow's concurrent computations of one key take
turns; it is applied by the flow, not here, because its lock folder is under ``PREFECT_HOME``, which
is known only once the flow runs.
"""

from __future__ import annotations

from pathlib import Path

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.transactions import IsolationLevel

from pipeline.config import Settings
from pipeline.fingerprints import INGEST_FIELDS, PREPROCESS_FIELDS, VALIDATE_FIELDS, source_fingerprint, stage_key
from pipeline.report import validation_markdown
from pipeline.stages import data
from pipeline.validation import ValidationReport


def _ingest_key(context, parameters) -> str:
    settings = parameters["settings"]
    return stage_key("ingest", settings, INGEST_FIELDS, source_fingerprint(settings))


def _validate_key(context, parameters) -> str:
    # the dataset folder is named after its content fingerprint
    return stage_key("validate", parameters["settings"], VALIDATE_FIELDS, parameters["dataset_dir"])


def _preprocess_key(context, parameters) -> str:
    report = parameters["report"]
    return stage_key("preprocess", parameters["settings"], PREPROCESS_FIELDS, report.dataset_dir, report.output_dir)


@task(name="download", cache_policy=NO_CACHE)
def download_task(settings: Settings) -> list[str]:
    """Fetch the official class files missing from the data folder (retries are per file, inside)."""
    return [downloaded.path for downloaded in data.download(settings)]


@task(name="ingest", cache_policy=CacheKeyFnPolicy(cache_key_fn=_ingest_key), persist_result=True)
def ingest_task(settings: Settings) -> Path:
    """Read the configured source into a canonical dataset folder."""
    return data.ingest(settings)


@task(name="validate", cache_policy=CacheKeyFnPolicy(cache_key_fn=_validate_key), persist_result=True)
def validate_task(settings: Settings, dataset_dir: Path) -> ValidationReport:
    """Validate the dataset with Great Expectations; quarantine failures; publish the summary."""
    report = data.validate(settings, dataset_dir)
    create_markdown_artifact(validation_markdown(report), key="validation-summary", description="Data validation")
    return report


@task(name="preprocess", cache_policy=CacheKeyFnPolicy(cache_key_fn=_preprocess_key), persist_result=True)
def preprocess_task(settings: Settings, report: ValidationReport) -> Path:
    """Write the model-ready features (flat arrays per split) of the accepted sketches."""
    return data.preprocess(settings, report)


def serialized(cached: Task) -> Task:
    """Return a cached task whose concurrent computations of one key take turns.

    Two flow runs that reach the task with the same key at the same time do not both compute it;
    the second waits on a lock (files under ``$PREFECT_HOME/locks``, shared by the processes of one
    machine) and then reads the first one's result. A lock whose holder died is free
    (:class:`~tasks.locks.LiveHolderLockManager`). Workers on several machines need a shared lock
    manager instead (``prefect-redis``'s ``RedisLockManager``).
    """
    from prefect.settings import PREFECT_HOME

    from tasks.locks import LiveHolderLockManager

    policy = cached.cache_policy.configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=LiveHolderLockManager(PREFECT_HOME.value() / "locks"),
    )
    return cached.with_options(cache_policy=policy)
