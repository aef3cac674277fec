"""The ``score`` and ``monitor`` flows: batch scoring of sketch files with a registered model, and drift of a
scored batch against the model's reference profile (retraining when it pays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.deployment import DEPLOYMENT_NAME
from flows.training_pipeline import task_runner_for
from pipeline.config import Settings, load_settings
from pipeline.monitoring.drift import DriftSummary
from pipeline.stages.scoring import ScoreSummary
from tasks.monitoring import monitor_task, track_monitoring_task
from tasks.scoring import finish_scoring_task, score_part_task

TRAINING_DEPLOYMENT = f"training_pipeline/{DEPLOYMENT_NAME}"


@flow(name="score", log_prints=True)
def score_flow(
    parts: list[list[str]],
    output: str,
    name: str,
    version: str,
    top_k: int = 3,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> ScoreSummary:
    """Score the input files (already planned into contiguous parts) with ``models:/name/version`` into
    ``output``; each part is a task of the configured task runner."""
    settings: Settings = load_settings(config_file, overrides)
    futures = [
        score_part_task.submit(settings, name, version, files, index, output, top_k)
        for index, files in enumerate(parts)
    ]
    results = [future.result() for future in futures]
    inputs = [f for files in parts for f in files]
    summary = finish_scoring_task(settings, name, version, inputs, output, results, top_k)
    create_table_artifact(
        key="score-summary",
        table=[
            {"what": "records in", "value": summary.records_in},
            {"what": "scored", "value": summary.scored},
            {"what": "quarantined", "value": summary.quarantined},
            {"what": "sketches/s", "value": summary.sketches_per_second},
            {"what": "model", "value": f"{name} v{version}"},
            {"what": "scores", "value": summary.output},
        ],
        description="sketchpipe score: counts, throughput and output",
    )
    return summary


def score_with_task_runner(settings: Settings, parts: int):
    """Return ``score_flow`` on the configured task runner, sized for ``parts`` concurrent parts."""
    return score_flow.with_options(task_runner=task_runner_for(settings, parts))


@flow(name="monitor", log_prints=True)
def monitor_flow(
    scores: str,
    name: str,
    version: str,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    retrain_overrides: dict[str, Any] | None = None,
) -> tuple[DriftSummary, str, str | None]:
    """Compare a scored batch with the reference of ``models:/name/version``; record the report in MLflow
    and as a Prefect artifact; with ``retrain_on_drift``, start the training deployment when it drifted.

    Returns the summary, the MLflow run id, and the id of the training flow run it started (or None).
    """
    settings: Settings = load_settings(config_file, overrides)
    summary, html, summary_path = monitor_task(settings, scores, name, version)
    run_id = track_monitoring_task(settings, summary, scores, html, summary_path)
    create_markdown_artifact(key="drift-report", markdown=drift_markdown(summary, str(html)), description="monitor")
    started = None
    if summary.drift_detected and settings.retrain_on_drift:
        started = start_retraining(retrain_overrides)
        print(f"drift detected: started {TRAINING_DEPLOYMENT} (flow run {started})")
    return summary, run_id, started


def start_retraining(overrides: dict[str, Any] | None) -> str:
    """Start a run of the training deployment (parameters: its own, ``overrides`` over them); return its id
    without waiting for it."""
    from prefect.deployments import run_deployment

    parameters = {"overrides": overrides} if overrides else None
    flow_run = run_deployment(TRAINING_DEPLOYMENT, parameters=parameters, timeout=0, tags=["retrain-on-drift"])
    return str(flow_run.id)


def drift_markdown(summary: DriftSummary, html: str) -> str:
    """Return the monitoring finding as a Markdown table (the Prefect artifact)."""
    verdict = "**drift detected**" if summary.drift_detected else "no drift"
    lines = [
        f"# {summary.model_name} v{summary.model_version}: {verdict}",
        "",
        f"{len(summary.drifted_columns)} of {len(summary.columns)} columns drifted "
        f"(share {summary.drift_share:.2f}; threshold {summary.threshold_share:.2f}); "
        f"{summary.current_rows:,} scored vs {summary.reference_rows:,} reference sketches. Report: `{html}`",
        "",
        "| column | score | method | threshold | drifted |",
        "|---|---|---|---|---|",
    ]
    for column, result in summary.columns.items():
        drifted = "yes" if result["drifted"] else ""
        lines.append(f"| {column} | {result['score']:.4f} | {result['method']} | {result['threshold']} | {drifted} |")
    return "\n".join(lines)


@flow(name="monitoring_pipeline", log_prints=True)
def monitoring_pipeline(
    inputs: list[str],
    output: str,
    model_uri: str | None = None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    retrain_overrides: dict[str, Any] | None = None,
) -> DriftSummary:
    """Score the drawings in ``inputs`` with the champion (or ``model_uri``) into ``output``, then compare
    them with its reference; with ``retrain_on_drift``, start the training deployment on drift. The
    scheduled ``monitoring`` deployment of ``prefect.yaml`` runs this flow."""
    from pipeline.stages.scoring import plan, resolve_model

    settings: Settings = load_settings(config_file, overrides)
    name, version = resolve_model(settings, model_uri)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    parts = plan(settings, inputs, output)
    score_with_task_runner(settings, len(parts))(parts, output, name, version, 3, config_file, overrides)
    summary, _, _ = monitor_flow(output, name, version, config_file, overrides, retrain_overrides)
    return summary
