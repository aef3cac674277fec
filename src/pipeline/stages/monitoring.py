"""Monitoring stages: find the reference, compare (Evidently), record the finding in MLflow."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import ConfigError, Settings
from pipeline.monitoring.drift import DriftSummary, compare, read_scores
from pipeline.scoring.profile import REFERENCE_DIR, REFERENCE_TABLE


def scored_by(scores: str) -> tuple[str, str] | None:
    """Return ``(name, version)`` of the model that wrote a scores file, from its first row, else None.

    Raises:
        ConfigError: ``scores`` is not a readable Parquet file.
    """
    import pyarrow.parquet as pq

    path = Path(scores)
    if not path.is_file():
        raise ConfigError("scores", f"{scores}: no such file")
    try:
        source = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow's ArrowInvalid and OSError: not Parquet
        raise ConfigError("scores", f"{scores}: not a Parquet file ({str(exc)[:120]})") from None
    names = source.schema_arrow.names
    if "predicted_class" not in names:
        raise ConfigError("scores", f"{scores}: not a scores file of `sketchpipe score` (no predicted_class column)")
    if source.metadata.num_rows == 0 or "model_name" not in names:
        return None
    first = source.read_row_group(0, columns=["model_name", "model_version"]).slice(0, 1).to_pylist()[0]
    return str(first["model_name"]), str(first["model_version"])


def reference_of(settings: Settings, name: str, version: str, folder: Path) -> Path:
    """Download a registered version's reference table into ``folder``; return its path.

    Raises:
        ConfigError: the version has none (registered before reference profiles were kept).
    """
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    client = tracking.client_for(settings.resolved_tracking_uri)
    try:
        run_id = client.get_model_version(name, version).run_id
        return Path(client.download_artifacts(run_id, f"{REFERENCE_DIR}/{REFERENCE_TABLE}", str(folder)))
    except (MlflowException, OSError) as exc:
        raise ConfigError(
            "model_uri",
            f"models:/{name}/{version} has no reference profile ({REFERENCE_DIR}/{REFERENCE_TABLE} in its run): it "
            "was registered before sketchpipe kept one; monitor a version registered by a newer run",
        ) from exc


def drift_paths(scores: str) -> tuple[Path, Path]:
    """Return where a scores file's drift report (HTML) and summary (JSON) go: beside it."""
    path = Path(scores)
    stem = path.name.removesuffix(".parquet")
    return path.with_name(f"{stem}.drift.html"), path.with_name(f"{stem}.drift.json")


def monitor(settings: Settings, scores: str, name: str, version: str) -> tuple[DriftSummary, Path, Path]:
    """Compare a scores file with the reference of ``models:/name/version``; write the HTML report and the
    JSON summary beside it and return them with the summary."""
    import pandas as pd

    from pipeline.serving import _cache_dir

    folder = _cache_dir(settings, f"models:/{name}/{version}") / "reference"
    reference = pd.read_parquet(reference_of(settings, name, version, folder))
    for column in ("predicted_class", "format"):
        if column in reference:
            reference[column] = reference[column].astype(str)
    current, _ = read_scores(Path(scores))
    if len(current) == 0:
        raise ConfigError("scores", f"{scores}: holds no scored sketch")
    html, summary_path = drift_paths(scores)
    summary = compare(current, reference, settings.drift_share, html)
    summary.model_name, summary.model_version = name, version
    summary_path.write_text(summary.to_json())
    return summary, html, summary_path


def track(settings: Settings, summary: DriftSummary, scores: str, html: Path, summary_path: Path) -> str:
    """Record a monitoring run in the inference experiment: the verdict, the share, each column's score and
    the report; return its run id."""
    from pipeline import tracking
    from pipeline.stages.scoring import start_inference_run

    client, run_id = start_inference_run(
        settings,
        "monitor",
        summary.model_name,
        summary.model_version,
        {
            "drift_detected": str(summary.drift_detected).lower(),
            "drifted_columns": ",".join(summary.drifted_columns)[:500],
            "scores": str(Path(scores).resolve())[:500],
        },
    )
    try:
        metrics = {"drift_detected": float(summary.drift_detected), "drift_share": summary.drift_share}
        metrics.update({f"drift_score.{c}": r["score"] for c, r in summary.columns.items()})
        metrics.update({"current_rows": summary.current_rows, "reference_rows": summary.reference_rows})
        tracking.log_metrics(client, run_id, metrics)
        client.log_artifact(run_id, str(html), "drift")
        client.log_artifact(run_id, str(summary_path), "drift")
    except Exception:
        tracking.end_run(client, run_id, "FAILED")
        raise
    tracking.end_run(client, run_id)
    return run_id
