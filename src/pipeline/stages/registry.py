"""Tracking and registry stages: start-tracking-run, register, promote, compare, finish-tracking-run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline import registry, tracking
from pipeline.config import Settings
from pipeline.dataset import open_split, read_info
from pipeline.evaluation import Evaluation, split_chunks
from pipeline.features import read_spec, record_indices
from pipeline.promotion import PromotionDecision, best_candidate, decide_promotion, rejected_decision
from pipeline.report import ArchitectureResult, winner_markdown, write_comparison_csv
from pipeline.scoring.profile import REFERENCE_DIR, source_format, write_reference
from pipeline.serving import load_classifier, model_metadata
from pipeline.stages.training import SERVING_MODEL, TEST_PROBABILITIES, TEST_TOP_CLASSES, ArchitectureRun
from pipeline.validation import ValidationReport


def start_tracking_run(
    settings: Settings,
    report: ValidationReport,
    features_dir: Path,
    flow_run_name: str,
    resume_run_id: str | None = None,
) -> str:
    """Open the parent MLflow run of one pipeline run (or reopen ``resume_run_id``) and return its id.

    The run records the dataset as its input (name, content fingerprint, counts per split and class)
    and the validation summary and quarantine as artifacts. An unreachable tracking server stops
    the pipeline here, before anything is trained or registered.
    """
    tracking.check_store(settings.resolved_tracking_uri)
    client = tracking.client_for(settings.resolved_tracking_uri)
    # before anything is trained: a run of another label space would be refused by the gate at the end
    registry.check_label_space(client, settings.registered_model_name, read_spec(features_dir).classes)
    if resume_run_id:
        tracking.reopen_run(client, resume_run_id)
        return resume_run_id
    experiment_id = tracking.ensure_experiment(client, settings.experiment_name, settings.artifact_location)
    spec = read_spec(features_dir)
    run_id = tracking.start_parent_run(
        client,
        experiment_id,
        run_name=flow_run_name,
        params={
            "source": settings.source,
            "dataset": spec.dataset_name,
            "dataset_fingerprint": spec.dataset_fingerprint,
            "classes": tracking.class_list_value(spec.classes),
            "num_classes": len(spec.classes),
            "architectures": ",".join(settings.architectures),
            "epochs": settings.epochs,
            "git_commit": tracking.git_commit(),
        },
        tags={"pipeline": "training_pipeline", "source": settings.source},
    )
    info = read_info(report.dataset_dir)
    try:
        tracking.log_dataset_input(
            client,
            run_id,
            info.name,
            report.dataset_dir,
            info.fingerprint,
            profile={"counts": info.counts, "rejected": info.rejected, "skipped": info.skipped},
            classes=info.classes,
        )
        tracking.log_artifacts(client, run_id, Path(report.output_dir), "validation")
        tracking.log_metrics(client, run_id, {"records_in": report.records_in, "quarantined": report.quarantined})
    except Exception:  # a retry opens a new run: this one must not stay RUNNING
        tracking.end_run(client, run_id, "FAILED")
        raise
    return run_id


def register(
    settings: Settings, run: ArchitectureRun, evaluation: Evaluation, features_dir: Path
) -> registry.RegisteredVersion:
    """Log the model (taking raw stroke-3) to its run with ``mlflow.keras`` and register a new version, with
    the reference profile that monitoring compares scored batches with (``reference/`` in the run)."""
    import keras

    client = tracking.client_for(settings.resolved_tracking_uri)
    existing = registry.find_registered_version(client, settings.registered_model_name, run.run_id)
    if existing is not None:  # a resumed pipeline run registered this one before it was stopped
        return existing
    spec = read_spec(features_dir)
    serving = keras.saving.load_model(
        Path(run.model_path).parent / SERVING_MODEL, compile=False
    )  # what evaluate scored
    metadata = model_metadata(spec, settings.max_abs_delta)
    # the reference profile first: a version is never registered without what monitoring compares with
    reference = write_reference(
        serving,
        metadata,
        features_dir,
        Path(run.model_path).parent / REFERENCE_DIR,
        settings.reference_sample,
        source_format(settings.source, settings.data_dir),
    )
    tracking.log_artifacts(client, run.run_id, reference, REFERENCE_DIR)
    return registry.log_and_register_model(
        client,
        run.run_id,
        serving,
        settings.registered_model_name,
        metadata=metadata,
        tags={
            "architecture": run.architecture,
            "dataset_fingerprint": spec.dataset_fingerprint,
            registry.LABEL_SPACE_TAG: registry.label_space(spec.classes),
            "num_classes": str(len(spec.classes)),
            "test_accuracy": f"{evaluation.accuracy:.6f}",
            "test_top3_accuracy": f"{evaluation.top3_accuracy:.6f}",
            "test_macro_f1": f"{evaluation.macro_f1:.6f}",
            "git_commit": tracking.git_commit(),
        },
    )


def promote(settings: Settings, versions: list[registry.RegisteredVersion], features_dir: Path) -> PromotionDecision:
    """Run the promotion gate over this pipeline run's new versions, on this run's test set, and apply it.

    The best candidate is judged by the predictions its evaluation made on this very test set
    (logged with its run, made by the very serving model that was registered); only the champion is
    loaded and scored, the way serving uses it, and compared by class name, so a champion trained on
    another dataset or class list is re-evaluated on this test set rather than trusted by its old score.
    """
    client = tracking.client_for(settings.resolved_tracking_uri)
    name = settings.registered_model_name
    best = best_candidate(versions)
    spec = read_spec(features_dir)
    test_set = f"{spec.dataset_fingerprint[:12]}/test"
    try:  # outside the lock: loading takes a moment
        registry.check_loads_as_served(client, f"models:/{name}/{best.version}")
    except registry.UnservableModelError as exc:
        decision = rejected_decision(best.version, best.test_accuracy, None, str(exc), test_set)
        registry.apply_promotion(client, name, decision)
        return decision
    with registry.alias_lock(settings.resolved_tracking_uri, name):  # read, compare and move as one step
        registry.check_label_space(client, name, spec.classes)  # the champion may have moved during training
        champion = registry.alias_version(client, name, registry.CHAMPION)
        correct = None
        test = open_split(spec.dataset_dir, "test")
        indices = record_indices(features_dir, "test")
        test_labels = np.asarray(test.labels)[indices]
        if champion not in (None, best.version):
            truth = np.asarray([spec.classes[int(label)] for label in test_labels])
            predicted = {}
            for version in (best, registry.RegisteredVersion(name, champion, "", "", float("nan"))):
                evaluated = _evaluated_classes(client, version.run_id, len(indices)) if version.run_id else None
                if evaluated is not None:
                    predicted[version.version] = [spec.classes[i] for i in evaluated]
                else:
                    classifier = load_classifier(settings, f"models:/{name}/{version.version}")
                    predicted[version.version] = [  # the test split a chunk at a time, as evaluation reads it
                        label
                        for rows, lengths in split_chunks(spec.dataset_dir, indices)
                        for label in classifier.top_classes(np.split(rows, np.cumsum(lengths)[:-1]))
                    ]
            correct = {version: np.asarray(labels) == truth for version, labels in predicted.items()}
        decision = decide_promotion(
            best.version,
            best.test_accuracy,
            champion,
            correct,
            settings.promotion_margin,
            settings.promotion_alpha,
            test_set=test_set,
            test_labels=test_labels,
        )
        registry.apply_promotion(client, name, decision)
        return decision


def _evaluated_classes(client, run_id: str, count: int) -> np.ndarray | None:
    """Return the class index its run's evaluation predicted for each of ``count`` test sketches, or None
    (a run evaluated on another test set; runs evaluated before the top classes were kept, that logged
    every probability, are read from those)."""
    ranked = tracking.load_array_artifact(client, run_id, f"evaluation/{TEST_TOP_CLASSES}")
    if ranked is not None:
        return ranked[:, 0] if ranked.ndim == 2 and len(ranked) == count else None
    probabilities = tracking.load_array_artifact(client, run_id, f"evaluation/{TEST_PROBABILITIES}")
    return probabilities.argmax(axis=1) if probabilities is not None and len(probabilities) == count else None


def result_row(run: ArchitectureRun, evaluation: Evaluation, version: registry.RegisteredVersion) -> ArchitectureResult:
    """Return one architecture's row of the comparison, from its run, evaluation and registered version."""
    return ArchitectureResult(
        architecture=run.architecture,
        test_accuracy=evaluation.accuracy,
        top3_accuracy=evaluation.top3_accuracy,
        macro_f1=evaluation.macro_f1,
        train_seconds=run.train_seconds,
        epochs_run=run.epochs_run,
        num_params=run.num_params,
        latency_p50_ms=evaluation.latency_p50_ms,
        run_id=run.run_id,
        model_version=version.version,
    )


def compare(
    settings: Settings, parent_run_id: str, rows: list[ArchitectureResult], decision: PromotionDecision
) -> tuple[Path, str]:
    """Write the architecture comparison (CSV) and the winner note (markdown); log both to the parent run."""
    client = tracking.client_for(settings.resolved_tracking_uri)
    out = Path(settings.work_dir) / "reports" / parent_run_id
    csv_path = write_comparison_csv(rows, out / "comparison.csv")
    markdown = winner_markdown(rows, decision, settings.registered_model_name)
    (out / "winner.md").write_text(markdown)
    tracking.log_artifacts(client, parent_run_id, out, "comparison")
    return csv_path, markdown


def finish_tracking_run(settings: Settings, parent_run_id: str, decision: PromotionDecision | None, ok: bool) -> None:
    """Record the promotion outcome on the parent run and close it."""
    client = tracking.client_for(settings.resolved_tracking_uri)
    if decision is not None:
        tracking.log_dict(client, parent_run_id, dataclasses.asdict(decision), "promotion.json")
    tracking.end_run(client, parent_run_id, "FINISHED" if ok else "FAILED")
