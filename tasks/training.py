"""Training tasks: train and evaluate one architecture. Never cached: training must run."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline import stages
from pipeline.config import Settings
from pipeline.evaluation import Evaluation


@task(name="train", cache_policy=NO_CACHE, task_run_name="train-{architecture}")
def train_task(settings: Settings, architecture: str, features_dir: Path, parent_run_id: str) -> stages.ArchitectureRun:
    """Train one architecture in a nested MLflow run."""
    return stages.train(settings, architecture, features_dir, parent_run_id)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(settings: Settings, run: stages.ArchitectureRun, features_dir: Path) -> Evaluation:
    """Evaluate one trained model on the test split."""
    return stages.evaluate(settings, run, features_dir)


@task(name="plot-evaluation", cache_policy=NO_CACHE, task_run_name="plot-evaluation-{run.architecture}")
def figures_task(settings: Settings, run: stages.ArchitectureRun, evaluation: Evaluation, features_dir: Path) -> Path:
    """Draw and log the evaluation figures (beside registration: nothing waits for them but the flow's end)."""
    return stages.evaluation_figures(settings, run, evaluation, features_dir)
