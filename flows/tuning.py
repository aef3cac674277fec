"""The ``tuning`` flow: (download ->) ingest -> validate -> preprocess -> an Optuna study of one
architecture, its trials in parallel waves through the task runner -> the best settings as a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow, flow

from flows.training_pipeline import data_stages, task_runner_for
from pipeline import tuning
from pipeline.config import Settings, load_settings, use_tensorflow_threads
from tasks.tuning import export_best_task, prepare_study_task, trial_task


@flow(name="tuning", log_prints=True)
def tuning_flow(
    architecture: str,
    trials: int,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    parallel: int = 1,
    study_name: str | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Run the study of ``architecture`` until it has ``trials`` finished trials (completed or pruned),
    ``parallel`` at a time, and export the best one's settings.

    A study stopped part-way resumes with the same study name: trials it finished count, trials it
    left running are run again.

    Returns:
        The study's name and parent run id, trial counts, the best trial and the exported file.
    """
    settings: Settings = load_settings(config_file, overrides)
    use_tensorflow_threads(settings)  # a deployment's flow run: its own process, TensorFlow not yet run
    _, features_dir = data_stages(settings)
    ref = prepare_study_task(settings, architecture, study_name)
    already = tuning.finished_trials(ref)
    study = tuning.open_study(ref, seed_offset=len(tuning.open_study(ref).trials))  # asks every trial of this run
    ran = []
    remaining = max(0, trials - already)
    while remaining:
        asked = [tuning.ask_trial(study, architecture) for _ in range(min(parallel, remaining))]
        ran += [future.result() for future in [trial_task.submit(settings, ref, a, features_dir) for a in asked]]
        remaining -= len(asked)
    path = Path(output or Path(settings.work_dir) / "tuned" / f"{architecture}.yaml")
    path.parent.mkdir(parents=True, exist_ok=True)
    best = export_best_task(settings, ref, path)
    return {
        "study": ref.name,
        "study_run_id": best["study_run_id"],
        "resumed_from": already,
        "trials": ran,
        "best": best,
    }


def tuning_with_task_runner(settings: Settings, parallel: int) -> Flow:
    """Return ``tuning_flow`` with the configured task runner, sized for ``parallel`` trials at once."""
    return tuning_flow.with_options(task_runner=task_runner_for(settings, parallel))
