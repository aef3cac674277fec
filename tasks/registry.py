"""Tracking and registry tasks: open and close the pipeline's MLflow run, register, promote."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from pipeline import stages, tracking
from pipeline.config import Settings
from pipeline.evaluation import Evaluation
from pipeline.promotion import PromotionDecision
from pipeline.report import ArchitectureResult
from pipeline.validation import ValidationReport


@task(name="start-tracking-run", cache_policy=NO_CACHE)
def start_run_task(
    settings: Settings,
    report: ValidationReport,
    features_dir: Path,
    flow_run_name: str,
    resume_run_id: str | None = None,
) -> str:
    """Open the parent MLflow run (or reopen the one being resumed); return its id."""
    return stages.start_pipeline_run(settings, report, features_dir, flow_run_name, resume_run_id)


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    settings: Settings, run: stages.ArchitectureRun, evaluation: Evaluation, features_dir: Path
) -> tracking.RegisteredVersion:
    """Log the model with mlflow.keras and register a new version."""
    return stages.register(settings, run, evaluation, features_dir)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(
    settings: Settings, versions: list[tracking.RegisteredVersion], features_dir: Path
) -> PromotionDecision:
    """Move ``champion`` to the best new version only if it beats the champion on this test set."""
    return stages.promote(settings, versions, features_dir)


@task(name="compare", cache_policy=NO_CACHE)
def compare_task(
    settings: Settings, parent_run_id: str, rows: list[ArchitectureResult], decision: PromotionDecision
) -> Path:
    """Publish the architecture comparison: CSV in MLflow, a table and a markdown note as Prefect artifacts."""
    csv_path, markdown = stages.write_comparison(settings, parent_run_id, rows, decision)
    create_table_artifact(
        [dataclasses.asdict(row) for row in rows],
        key="architecture-comparison",
        description="Test metrics per architecture",
    )
    create_markdown_artifact(markdown, key="training-winner", description="The winning architecture and the promotion")
    return csv_path


@task(name="finish-tracking-run", cache_policy=NO_CACHE)
def finish_run_task(settings: Settings, parent_run_id: str, decision: PromotionDecision | None, ok: bool) -> None:
    """Record the promotion on the parent run and close it."""
    stages.finish_pipeline_run(settings, parent_run_id, decision, ok)
