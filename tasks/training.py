"""Training tasks: train, evaluate, plot-evaluation (wrapping :mod:`pipeline.stages.training`).

Never cached: training must run.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from pipeline.config import Settings
from pipeline.evaluation import Evaluation
from pipeline.stages import training
from pipeline.stages.training import ArchitectureRun


@task(name="train", cache_policy=NO_CACHE, task_run_name="train-{architecture}")
def train_task(settings: Settings, architecture: str, features_dir: Path, parent_run_id: str) -> ArchitectureRun:
    """Train one architecture in a nested MLflow run."""
    return training.train(settings, architecture, features_dir, parent_run_id)


@task(name="evaluate", cache_policy=NO_CACHE, task_run_name="evaluate-{run.architecture}")
def evaluate_task(settings: Settings, run: ArchitectureRun, features_dir: Path) -> Evaluation:
    """Evaluate one trained model on the test split."""
    return training.evaluate(settings, run, features_dir)


@task(name="plot-evaluation", cache_policy=NO_CACHE, task_run_name="plot-evaluation-{run.architecture}")
def plot_evaluation_task(settings: Settings, run: ArchitectureRun, evaluation: Evaluation, features_dir: Path) -> Path:
    """Draw and log the evaluation figures (beside registration: nothing waits for them but the flow's end)."""
    return training.plot_evaluation(settings, run, evaluation, features_dir)
