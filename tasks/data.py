"""Data tasks: ingest, validate, preprocess.

Each is cached across flow runs on (source fingerprint, the settings it reads, its input, library
code version), so a scheduled re-run on unchanged data skips them; changed data, parameters or code
recompute. Their results (paths and a small report) are kept in Prefect's local result storage.

The caches are SERIALIZABLE: two flow runs that reach the same stage with the same key at the same
time do not both compute it; the second waits on a lock (files under ``$PREFECT_HOME/locks``, shared
by the processes of one machine) and then reads the first one's result. Workers on several machines
need a shared lock manager instead (``prefect-redis``'s ``RedisLockManager``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.settings import PREFECT_HOME
from prefect.transactions import IsolationLevel

from pipeline import stages
from pipeline.config import Settings
from pipeline.fingerprints import INGEST_FIELDS, PREPROCESS_FIELDS, VALIDATE_FIELDS, source_fingerprint, stage_key
from pipeline.ingest import fetch_source_files, ingest
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


def _serialized(cache_key_fn) -> CacheKeyFnPolicy:
    """Return a cache policy on ``cache_key_fn`` whose concurrent computations of one key take turns."""
    return CacheKeyFnPolicy(cache_key_fn=cache_key_fn).configure(
        isolation_level=IsolationLevel.SERIALIZABLE,
        lock_manager=FileSystemLockManager(lock_files_directory=PREFECT_HOME.value() / "locks"),
    )


@task(name="download", cache_policy=NO_CACHE)
def download_task(settings: Settings) -> list[str]:
    """Fetch the official class files missing from the data folder (retries are per file, inside)."""
    return [downloaded.path for downloaded in fetch_source_files(settings)]


@task(name="ingest", cache_policy=_serialized(_ingest_key), persist_result=True)
def ingest_task(settings: Settings) -> Path:
    """Read the configured source into a canonical dataset folder."""
    return ingest(settings)


@task(name="validate", cache_policy=_serialized(_validate_key), persist_result=True)
def validate_task(settings: Settings, dataset_dir: Path) -> ValidationReport:
    """Validate the dataset with Great Expectations; quarantine failures; publish the summary."""
    report = stages.validate(settings, dataset_dir)
    create_markdown_artifact(
        stages.validation_markdown(report), key="validation-summary", description="Data validation"
    )
    return report


@task(name="preprocess", cache_policy=_serialized(_preprocess_key), persist_result=True)
def preprocess_task(settings: Settings, report: ValidationReport) -> Path:
    """Write model-ready TFRecords of the accepted sketches."""
    return stages.preprocess(settings, report)
