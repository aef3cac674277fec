"""The ``training_pipeline`` flow: (download ->) ingest -> validate -> preprocess -> train (per architecture) ->
evaluate -> register (beside it: the evaluation figures) -> promote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Flow, Task, flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from pipeline.config import Settings, load_settings, use_tensorflow_threads
from pipeline.download import DownloadError
from pipeline.report import PipelineResult
from pipeline.stages.data import outputs_present
from pipeline.stages.registry import result_row
from pipeline.stages.training import parallel_architectures
from pipeline.validation import DataValidationError, ValidationReport
from tasks.data import download_task, ingest_task, preprocess_task, serialized, validate_task
from tasks.registry import (
    compare_task,
    finish_tracking_run_task,
    promote_task,
    register_task,
    start_tracking_run_task,
)
from tasks.training import evaluate_task, plot_evaluation_task, train_task


@flow(name="training_pipeline", log_prints=True)
def training_pipeline(
    config_file: str | None = None, overrides: dict[str, Any] | None = None, resume_run_id: str | None = None
) -> PipelineResult:
    """Train, evaluate and register every configured architecture; promote the best if it wins.

    Args:
        config_file: a YAML settings file (``sketchpipe.yaml`` in the working folder by default).
        overrides: setting name -> value, applied over the file and the environment.
        resume_run_id: the MLflow run id of a pipeline run that was stopped: its architectures
            continue from their last completed epoch, and finished ones are not trained again.
    """
    settings: Settings = load_settings(config_file, overrides)
    use_tensorflow_threads(settings)  # a deployment's flow run: its own process, TensorFlow not yet run
    report, features_dir = data_stages(settings)
    run_name = flow_run.get_name() or "training_pipeline"
    start_tracking_run = _with_retries(start_tracking_run_task, settings)
    parent_run_id = start_tracking_run(settings, report, features_dir, run_name, resume_run_id)
    decision = None
    try:
        architectures = settings.architectures
        at_once = parallel_architectures(settings, features_dir, len(architectures))
        print(f"Training {len(architectures)} architecture(s), {at_once} at a time")
        runs, evaluations, figures, versions = {}, {}, [], {}
        register = _with_retries(register_task, settings)
        for i, a in enumerate(architectures):
            if i >= at_once:  # one starts training when one of those before it has been evaluated
                evaluations[architectures[i - at_once]].wait()
            runs[a] = train_task.submit(settings, a, features_dir, parent_run_id)
            evaluations[a] = evaluate_task.submit(settings, runs[a], features_dir)
            figures.append(plot_evaluation_task.submit(settings, runs[a], evaluations[a], features_dir))
            versions[a] = register.submit(settings, runs[a], evaluations[a], features_dir)
        for stage in (runs, evaluations, versions):  # a failure surfaces as its own error, not as an
            for future in stage.values():  # "upstream task did not complete" of the tasks after it
                future.result()
        promote = _with_retries(promote_task, settings)
        decision = promote(settings, [versions[a].result() for a in runs], features_dir)
        rows = [result_row(runs[a].result(), evaluations[a].result(), versions[a].result()) for a in runs]
        _with_retries(compare_task, settings)(settings, parent_run_id, rows, decision)
        for drawn in figures:
            drawn.result()
    except BaseException:
        finish_tracking_run_task(settings, parent_run_id, decision, ok=False)
        raise
    _with_retries(finish_tracking_run_task, settings)(settings, parent_run_id, decision, ok=True)
    return PipelineResult(
        dataset_dir=str(report.dataset_dir),
        features_dir=str(features_dir),
        parent_run_id=parent_run_id,
        records_in=report.records_in,
        quarantined=report.quarantined,
        rows=rows,
        promoted_version=decision.candidate_version,
        promoted_alias=decision.alias,
        promotion_reason=decision.reason,
    )


# Failures that the same inputs would meet again: bad data, bad settings, a file that is not there.
# Retrying them only repeats the error (and, for the tracking tasks, leaves a failed run each time).
_LASTING_ERRORS = (ValueError, TypeError, KeyError, ArithmeticError, DataValidationError, DownloadError)
# MLflow's answers to a request that is wrong in itself (a value over a length limit, say)
_LASTING_MLFLOW_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST"}


def _worth_retrying(task: Task, task_run, state) -> bool:
    """Return whether a failed I/O task may pass on a retry (connection, timeout, lock, busy store)."""
    error = state.data
    return not isinstance(error, _LASTING_ERRORS) and getattr(error, "error_code", None) not in _LASTING_MLFLOW_CODES


def data_stages(settings: Settings) -> tuple[ValidationReport, Path]:
    """Run (download ->) ingest -> validate -> preprocess in the current flow, each cached while its
    outputs exist; return the validation report and the features folder."""
    if settings.download:
        download_task(settings)
    dataset_dir = _cached_while_present(ingest_task, settings, outputs_present, settings)
    report = _cached_while_present(validate_task, settings, outputs_present, settings, dataset_dir)
    return report, _cached_while_present(preprocess_task, settings, outputs_present, settings, report)


def _cached_while_present(task: Task, settings: Settings, present, *args):
    """Run a cached data task; if its cached result names outputs that are gone (a deleted work
    folder, say), run it again past the cache instead of handing on paths that do not exist."""
    cached = _with_retries(serialized(task), settings)
    result = cached(*args)
    if not present(result):
        result = cached.with_options(refresh_cache=True)(*args)
    return result


def _with_retries(task: Task, settings: Settings) -> Task:
    """Return ``task`` with the configured retries and exponential backoff (for tasks doing I/O), for
    failures that can pass."""
    return task.with_options(
        retries=settings.io_retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=settings.retry_backoff_seconds),
        retry_condition_fn=_worth_retrying,
    )


TASKS_PER_ARCHITECTURE = 4


def pipeline_with_task_runner(settings: Settings) -> Flow:
    """Return ``training_pipeline`` with the task runner the settings ask for (see :func:`task_runner_for`):
    room for every architecture's tasks (the flow itself bounds how many train and evaluate at once:
    ``max_parallel_architectures``)."""
    return training_pipeline.with_options(task_runner=task_runner_for(settings, len(settings.architectures)))


def task_runner_for(settings: Settings, concurrency: int):
    """Return the Prefect task runner the settings ask for, sized for ``concurrency`` training tasks.

    ``thread``: tasks run in threads of this process. ``dask``: on a Dask cluster through prefect-dask:
    the one at ``dask_address``, else a local cluster of one worker process with a thread per
    concurrent task (TensorFlow is loaded once per worker). ``ray``: on a Ray cluster through
    prefect-ray: the one at ``ray_address``, or with ``ray_address: local`` a temporary local one (no
    dashboard) for the flow run; each task runs in a Ray worker process. Ray 2.x's local cluster
    listens on all network interfaces (its GCS, raylet and agents bind to 0.0.0.0, and
    ``_node_ip_address="127.0.0.1"`` is rewritten to the machine's address), so it is started only
    when asked for by name (``check_settings`` refuses ``ray`` without an address).

    TensorFlow's thread pools are sized first (:func:`~pipeline.config.use_tensorflow_threads`), so that
    this process and the local worker processes started for the run have them; the workers of a
    cluster of your own take them from their own environment (``TF_NUM_INTRAOP_THREADS``).
    """
    use_tensorflow_threads(settings)
    if settings.task_runner == "ray":
        from prefect_ray import RayTaskRunner

        if settings.ray_address != "local":
            return RayTaskRunner(address=settings.ray_address)
        return RayTaskRunner(init_kwargs={"include_dashboard": False})
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": 1,
                "threads_per_worker": TASKS_PER_ARCHITECTURE * max(1, concurrency),
                "dashboard_address": None,
            }
        )
    # a thread for each task an architecture submits (train, evaluate, plot, register): a submitted task
    # waits for the ones before it in a thread of its own; the flow bounds how many architectures train
    return ThreadPoolTaskRunner(max_workers=TASKS_PER_ARCHITECTURE * max(1, concurrency))
