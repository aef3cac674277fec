"""Monitoring tasks: monitor (compare with the reference) and track-monitoring (wrapping
:mod:`pipeline.stages.monitoring`)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.config import Settings
from pipeline.monitoring.drift import DriftSummary
from pipeline.stages import monitoring


@task(name="monitor", cache_policy=NO_CACHE)
def monitor_task(settings: Settings, scores: str, name: str, version: str) -> tuple[DriftSummary, Path, Path]:
    """Compare the scored batch with the model's reference; write the HTML report and JSON summary."""
    return monitoring.monitor(settings, scores, name, version)


@task(name="track-monitoring", cache_policy=NO_CACHE)
def track_monitoring_task(
    settings: Settings, summary: DriftSummary, scores: str, html: Path, summary_path: Path
) -> str:
    """Record the finding in MLflow's inference experiment."""
    return monitoring.track(settings, summary, scores, html, summary_path)
