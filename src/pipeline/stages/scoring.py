"""Scoring stages: resolve-model, plan, score-part, finish (merge, track in MLflow)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

from pipeline.config import ConfigError, Settings
from pipeline.scoring.engine import PartResult, ScoringModel, merge_parts, partition, quarantine_path, score_part
from pipeline.scoring.profile import PROJECTION, REFERENCE_DIR, load_projection
from pipeline.scoring.readers import score_files

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


@dataclasses.dataclass
class ScoreSummary:
    """What ``score`` did: counts, throughput, where the table and the quarantine are, and the tracking run."""

    output: str
    quarantine: str
    model_name: str
    model_version: str
    records_in: int
    scored: int
    quarantined: int
    seconds: float
    sketches_per_second: float
    run_id: str
    top_classes: list[tuple[str, int]]


def resolve_model(settings: Settings, model_uri: str | None) -> tuple[str, str]:
    """Return ``(name, version)`` of the registered version to score with: ``model_uri``
    (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``), else the champion of the configured registered
    model. An alias is resolved once, here: every part of the run scores with the same version."""
    from pipeline import registry, tracking

    uri = model_uri or f"models:/{settings.registered_model_name}@{registry.CHAMPION}"
    match = _MODEL_URI.match(uri)
    if not match:
        raise ConfigError("model_uri", f"{uri!r}: give a registered model, models:/NAME/VERSION or models:/NAME@ALIAS")
    client = tracking.client_for(settings.resolved_tracking_uri)
    if match["version"]:
        if not registry.version_exists(client, match["name"], match["version"]):
            raise ConfigError("model_uri", f"{uri}: no such registered version")
        return match["name"], match["version"]
    version = registry.alias_version(client, match["name"], match["alias"])
    if version is None:
        reason = registry.no_champion_reason(client, match["name"]) if match["alias"] == registry.CHAMPION else None
        raise ConfigError("model_uri", reason or f"{uri}: no version has the alias {match['alias']!r}")
    return match["name"], version


_MODELS: dict[tuple[str, str, str], ScoringModel] = {}  # loaded once per process (threads of a run share it)
_MODELS_LOCK = threading.Lock()


def load_model(settings: Settings, name: str, version: str) -> ScoringModel:
    """Return the scoring model of a registered version, with its reference projection when it has one."""
    key = (settings.resolved_tracking_uri, name, version)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load(settings, name, version)
        return _MODELS[key]


def _load(settings: Settings, name: str, version: str) -> ScoringModel:
    from mlflow.exceptions import MlflowException

    from pipeline import tracking
    from pipeline.serving import _cache_dir, load_classifier

    uri = f"models:/{name}/{version}"
    classifier = load_classifier(settings, uri)
    client = tracking.client_for(settings.resolved_tracking_uri)
    run_id = client.get_model_version(name, version).run_id
    projection = None
    folder = _cache_dir(settings, uri) / "reference"
    try:
        local = client.download_artifacts(run_id, f"{REFERENCE_DIR}/{PROJECTION}", str(folder))
        projection = load_projection(Path(local))
    except (MlflowException, OSError):  # a version registered before reference profiles: no embeddings
        projection = None
    metadata = {"classes": classifier.classes, "max_len": classifier.max_len, "max_abs_delta": classifier.max_abs_delta}
    return ScoringModel.from_serving_model(classifier.model, metadata, name, version, projection)


def plan(settings: Settings, inputs: list[str], output: str, parts: int | None = None) -> list[list[str]]:
    """Return the input files in contiguous runs, one per part (at most ``parts``; by default
    :func:`default_parts`).

    Raises:
        ConfigError: ``output`` is not a ``.parquet`` path in an existing folder, or is one of the inputs.
        StrokeFormatError: naming an input that is missing or not a sketch file.
    """
    out = Path(output)
    if out.suffix != ".parquet":
        raise ConfigError("output", f"{output}: the scores file must end in .parquet")
    if out.is_dir():
        raise ConfigError("output", f"{output}: is a folder")
    if not out.parent.is_dir():
        raise ConfigError("output", f"{out.parent}: no such folder")
    files = score_files(inputs)
    if out.resolve() in {f.resolve() for f in files}:
        raise ConfigError("output", f"{output}: is one of the inputs")
    parts = parts or default_parts(settings, len(files))
    return [[str(f) for f in run] for run in partition(files, max(1, parts))]


def default_parts(settings: Settings, files: int) -> int:
    """Return how many parts to score at once: one per core this process may use (the model's own
    threads share them), at least 2 so that reading one part overlaps the model's work on another."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(files, max(2, cores)))


def part_path(output: str, index: int) -> Path:
    """Return where part ``index`` of a run writing ``output`` goes (beside it, hidden)."""
    out = Path(output)
    return out.with_name(f".{out.stem}.part-{index:04d}.parquet")


def run_part(settings: Settings, name: str, version: str, files: list[str], index: int, output: str, top_k: int):
    """Score one part's files into its own Parquet file; return its counts."""
    model = load_model(settings, name, version)
    return score_part(model, [Path(f) for f in files], part_path(output, index), top_k)


def finish(
    settings: Settings, name: str, version: str, inputs: list[str], output: str, results: list[PartResult], top_k: int
) -> ScoreSummary:
    """Merge the parts into ``output`` (and its quarantine CSV), record the run in MLflow as an inference run
    linked to the model version, and return the summary."""
    parts = [part_path(output, i) for i in range(len(results))]
    merge_parts(parts, Path(output))
    for part in parts:
        part.unlink(missing_ok=True)
        quarantine_path(part).unlink(missing_ok=True)
    classes = Counter()
    for result in results:
        classes.update(result.class_counts)
    records_in = sum(r.records_in for r in results)
    scored = sum(r.scored for r in results)
    seconds = max((r.seconds for r in results), default=0.0)
    summary = ScoreSummary(
        output=str(Path(output).resolve()),
        quarantine=str(quarantine_path(Path(output)).resolve()),
        model_name=name,
        model_version=version,
        records_in=records_in,
        scored=scored,
        quarantined=sum(r.quarantined for r in results),
        seconds=round(seconds, 3),
        sketches_per_second=round(scored / seconds, 1) if seconds else 0.0,
        run_id="",
        top_classes=classes.most_common(10),
    )
    summary.run_id = _track(settings, summary, inputs, classes, top_k)
    return summary


def inference_experiment(settings: Settings) -> str:
    """Return the MLflow experiment of scoring and monitoring runs (beside the training one)."""
    return f"{settings.experiment_name}-inference"


def start_inference_run(settings: Settings, kind: str, name: str, version: str, tags: dict[str, str]):
    """Open a ``score`` or ``monitor`` run (``kind``) in the inference experiment, tagged with the model
    version and linked to its logged model; return the client and the run id."""
    from mlflow.entities import LoggedModelInput

    from pipeline import tracking

    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, inference_experiment(settings), settings.artifact_location)
    registered = client.get_model_version(name, version)
    run = client.create_run(
        experiment_id,
        run_name=f"{kind}-{name}-v{version}",
        tags={"pipeline": kind, "model_name": name, "model_version": version,
              "model_run_id": registered.run_id or "", **tags},
    )  # fmt: skip
    try:
        if getattr(registered, "model_id", None):
            client.log_inputs(run.info.run_id, models=[LoggedModelInput(model_id=registered.model_id)])
    except Exception:
        tracking.end_run(client, run.info.run_id, "FAILED")
        raise
    return client, run.info.run_id


def _track(settings: Settings, summary: ScoreSummary, inputs: list[str], classes: Counter, top_k: int) -> str:
    from pipeline import tracking

    client, run_id = start_inference_run(
        settings, "score", summary.model_name, summary.model_version,
        {"output": summary.output[: tracking.MAX_TAG_VALUE]},
    )  # fmt: skip
    try:
        tracking.log_params(
            client,
            run_id,
            {"model_uri": f"models:/{summary.model_name}/{summary.model_version}", "inputs": len(inputs),
             "first_input": inputs[0][:500] if inputs else "", "top_k": top_k},
        )  # fmt: skip
        tracking.log_metrics(
            client,
            run_id,
            {"records_in": summary.records_in, "scored": summary.scored, "quarantined": summary.quarantined,
             "seconds": summary.seconds, "sketches_per_second": summary.sketches_per_second},
        )  # fmt: skip
        names = sorted(classes, key=lambda c: (-classes[c], c))
        total = max(1, summary.scored)
        tracking.log_table(
            client,
            run_id,
            {"class": names, "count": [classes[c] for c in names], "share": [classes[c] / total for c in names]},
            "class_distribution.json",
        )
        tracking.log_dict(client, run_id, json.loads(json.dumps(dataclasses.asdict(summary))), "score_summary.json")
    except Exception:
        tracking.end_run(client, run_id, "FAILED")
        raise
    tracking.end_run(client, run_id)
    return run_id
