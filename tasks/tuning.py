"""Tuning tasks: open the study, run one trial (wrapping :mod:`pipeline.tuning`). Never cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline import tuning
from pipeline.config import Settings
from pipeline.tuning import AskedTrial, StudyRef


@task(name="prepare-study", cache_policy=NO_CACHE)
def prepare_study_task(settings: Settings, architecture: str, study_name: str | None) -> StudyRef:
    """Create or load the study; trials a stopped run left running are marked failed."""
    return tuning.prepare_study(settings, architecture, study_name)


@task(name="trial", cache_policy=NO_CACHE, task_run_name="trial-{asked.number}")
def trial_task(settings: Settings, ref: StudyRef, asked: AskedTrial, features_dir: Path) -> dict[str, Any]:
    """Train one asked trial (a nested MLflow run under the study's run); the study may prune it."""
    return tuning.run_trial(settings, ref, asked, features_dir)


@task(name="export-best", cache_policy=NO_CACHE)
def export_best_task(settings: Settings, ref: StudyRef, path: Path) -> dict[str, Any]:
    """Write the best trial's settings file and record it on the study's run."""
    return tuning.export_best(ref, settings, path)
