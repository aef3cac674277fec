"""The scheduled deployment of ``training_pipeline`` (served by ``sketchpipe serve``)."""

from __future__ import annotations

from typing import Any

from prefect.deployments.runner import RunnerDeployment

from flows.training_pipeline import training_pipeline

DEPLOYMENT_NAME = "scheduled-training"


def scheduled_deployment(
    cron: str, config_file: str | None = None, overrides: dict[str, Any] | None = None
) -> RunnerDeployment:
    """Return the training pipeline as a deployment on a cron schedule, with its parameters."""
    return training_pipeline.to_deployment(
        name=DEPLOYMENT_NAME,
        cron=cron,
        parameters={"config_file": config_file, "overrides": overrides or {}},
        description="Train, evaluate, register and gate the sketch classifiers on a schedule.",
        tags=["sketchpipe"],
    )
