"""Tracking and registry tasks: start-tracking-run, register, promote, compare, finish-tracking-run
(wrapping :mod:`pipeline.stages.registry`)."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from pathlib import Path

from prefect import get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from pipeline.config import Settings
from pipeline.evaluation import Evaluation
from pipeline.promotion import PromotionDecision
from pipeline.registry import RegisteredVersion
from pipeline.report import ArchitectureResult
from pipeline.stages import registry
from pipeline.stages.training import ArchitectureRun
from pipeline.validation import ValidationReport


@task(name="start-tracking-run", cache_policy=NO_CACHE)
def start_tracking_run_task(
    settings: Settings,
    report: ValidationReport,
    features_dir: Path,
    flow_run_name: str,
    resume_run_id: str | None = None,
) -> str:
    """Open the parent MLflow run (or reopen the one being resumed); return its id."""
    return registry.start_tracking_run(settings, report, features_dir, flow_run_name, resume_run_id)


@task(name="register", cache_policy=NO_CACHE, task_run_name="register-{run.architecture}")
def register_task(
    settings: Settings, run: ArchitectureRun, evaluation: Evaluation, features_dir: Path
) -> RegisteredVersion:
    """Log the model with mlflow.keras and register a new version."""
    return registry.register(settings, run, evaluation, features_dir)


@task(name="promote", cache_policy=NO_CACHE)
def promote_task(settings: Settings, versions: list[RegisteredVersion], features_dir: Path) -> PromotionDecision:
    """Move ``champion`` to the best new version only if it beats the champion on this test set.

    Flow runs promote one at a time (a Prefect global concurrency limit of one slot per registered
    model): the gate reads the champion, compares and moves the alias as one step, so two runs
    finishing together cannot both replace the same champion, and the second compares its
    candidate with the first one's winner.
    """
    with concurrency(registry_lock(settings.registered_model_name), occupy=1, strict=True):
        return registry.promote(settings, versions, features_dir)


def registry_lock(model_name: str) -> str:
    """Return the name of the one-slot global concurrency limit guarding ``model_name``'s aliases,
    creating the limit on the Prefect server the first time."""
    name = "sketchpipe-registry-" + re.sub(r"[^A-Za-z0-9_.-]", "-", model_name)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another run created it first
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@task(name="compare", cache_policy=NO_CACHE)
def compare_task(
    settings: Settings, parent_run_id: str, rows: list[ArchitectureResult], decision: PromotionDecision
) -> Path:
    """Publish the architecture comparison: CSV in MLflow, a table and a markdown note as Prefect artifacts."""
    csv_path, markdown = registry.compare(settings, parent_run_id, rows, decision)
    create_table_artifact(
        [dataclasses.asdict(row) for row in rows],
        key="architecture-comparison",
        description="Test metrics per architecture",
    )
    create_markdown_artifact(markdown, key="training-winner", description="The winning architecture and the promotion")
    return csv_path


@task(name="finish-tracking-run", cache_policy=NO_CACHE)
def finish_tracking_run_task(
    settings: Settings, parent_run_id: str, decision: PromotionDecision | None, ok: bool
) -> None:
    """Record the promotion on the parent run and close it."""
    registry.finish_tracking_run(settings, parent_run_id, decision, ok)
