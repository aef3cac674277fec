"""Data tasks: ingest, validate, preprocess."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from pipeline import stages
from pipeline.config import Settings
from pipeline.ingest import ingest
from pipeline.validation import ValidationReport


@task(name="ingest")
def ingest_task(settings: Settings) -> Path:
    """Read the configured source into a canonical dataset folder."""
    return ingest(settings)


@task(name="validate")
def validate_task(settings: Settings, dataset_dir: Path) -> ValidationReport:
    """Validate the dataset with Great Expectations; quarantine failures."""
    return stages.validate(settings, dataset_dir)


@task(name="preprocess")
def preprocess_task(settings: Settings, report: ValidationReport) -> Path:
    """Write model-ready TFRecords of the accepted sketches."""
    return stages.preprocess(settings, report)
