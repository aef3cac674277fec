"""The pipeline's stages as plain functions of settings, paths and ids: what each Prefect task calls.

Each stage reads its inputs from disk or the tracking store and returns a path, an id or a small
dataclass, so that stages can be cached, retried and run on other workers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline import progress, tracking
from pipeline.config import Settings
from pipeline.dataset import open_split, read_info
from pipeline.evaluation import Evaluation, evaluate_model, write_confusion_csv
from pipeline.features import (
    normalising_layer,
    pad_batch,
    read_spec,
    record_indices,
    split_sketches,
    write_features,
)
from pipeline.files import parameters_digest
from pipeline.fingerprints import VALIDATE_FIELDS
from pipeline.plots import (
    confused_pairs_figure,
    confusion_matrix_figure,
    save_figure,
    sketch_grid_figure,
    training_curves_figure,
)
from pipeline.progress import TrainingProgress
from pipeline.promotion import PromotionDecision, promote_best
from pipeline.report import ArchitectureResult, winner_markdown, write_comparison_csv
from pipeline.strokes import SPLITS
from pipeline.training import TrainingConfig, train_model
from pipeline.validation import ValidationReport, validate_dataset


def validation_dir(settings: Settings, dataset_dir: Path) -> Path:
    """Return ``<work_dir>/validation/<dataset>-<hash of the validation settings>``.

    Named after everything that decides which sketches are accepted, so different settings never
    share (or overwrite) a report, and the features made from it are named after it in turn.
    """
    thresholds = {name: getattr(settings, name) for name in VALIDATE_FIELDS if name != "work_dir"}
    return Path(settings.work_dir) / "validation" / f"{Path(dataset_dir).name}-v{parameters_digest(thresholds)}"


def validate(settings: Settings, dataset_dir: Path) -> ValidationReport:
    """Validate a dataset folder into :func:`validation_dir`; see :func:`validate_dataset`."""
    return validate_dataset(
        dataset_dir,
        validation_dir(settings, dataset_dir),
        min_points=settings.min_points,
        max_points=settings.max_points,
        max_abs_delta=settings.max_abs_delta,
        max_invalid_fraction=settings.max_invalid_fraction,
        max_class_imbalance=settings.max_class_imbalance,
    )


def validation_markdown(report: ValidationReport) -> str:
    """Return the validation summary as a short markdown report."""
    lines = [
        f"# Validation of `{Path(report.dataset_dir).name}`",
        "",
        f"{report.records_in} records in: {report.accepted} accepted, {report.quarantined} quarantined "
        f"({report.invalid_fraction:.2%}); quarantine: `{report.quarantine_path}`.",
    ]
    if report.skipped:
        lines.append("Skipped on purpose: " + ", ".join(f"{reason}: {n}" for reason, n in report.skipped.items()) + ".")
    if report.failures:
        lines += ["", "| reason | records |", "| --- | --- |"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(report.failures.items())]
    lines += ["", "Training sketches per class: " + ", ".join(f"{c} {n}" for c, n in report.class_counts.items())]
    return "\n".join(lines) + "\n"


def preprocess(settings: Settings, report: ValidationReport) -> Path:
    """Write the model-ready TFRecords of the accepted sketches; return the features folder."""
    dataset_dir = Path(report.dataset_dir)
    # named after the validation report (dataset + thresholds) and the crop length
    out_dir = Path(settings.work_dir) / "features" / f"{Path(report.output_dir).name}-len{settings.max_len}"
    accepted = {split: report.accepted_indices(split) for split in SPLITS}
    write_features(dataset_dir, accepted, out_dir, settings.max_len)
    return out_dir


def start_pipeline_run(
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
    tracking.use_store(settings.resolved_tracking_uri)
    if resume_run_id:
        tracking.reopen_run(resume_run_id)
        return resume_run_id
    experiment_id = tracking.ensure_experiment(settings.experiment_name, settings.artifact_location)
    spec = read_spec(features_dir)
    run_id = tracking.start_parent_run(
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
            run_id,
            info.name,
            report.dataset_dir,
            info.fingerprint,
            profile={"counts": info.counts, "rejected": info.rejected, "skipped": info.skipped},
            classes=info.classes,
        )
        tracking.log_artifacts(run_id, Path(report.output_dir), "validation")
        tracking.log_metrics(run_id, {"records_in": report.records_in, "quarantined": report.quarantined})
    except Exception:  # a retry opens a new run: this one must not stay RUNNING
        tracking.end_run(run_id, "FAILED")
        raise
    return run_id


def training_config(settings: Settings, architecture: str) -> TrainingConfig:
    """Return the training hyperparameters of one architecture from the settings."""
    return TrainingConfig(
        architecture=architecture,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        clipnorm=settings.clipnorm,
        early_stopping_patience=settings.early_stopping_patience,
        seed=settings.seed,
        distribute=settings.distribute,
        model_params=dict(settings.models.get(architecture, {})),
    )


@dataclasses.dataclass(frozen=True)
class ArchitectureRun:
    """One architecture's tracked run and saved model."""

    architecture: str
    run_id: str
    model_path: str
    train_seconds: float
    epochs_run: int
    num_params: int


def train(
    settings: Settings,
    architecture: str,
    features_dir: Path,
    parent_run_id: str,
    callbacks: list | None = None,
) -> ArchitectureRun:
    """Train one architecture in its own MLflow run nested under ``parent_run_id``.

    If that parent already has a run for this architecture (a resumed pipeline run), training
    continues in it: from the last completed epoch when it was killed, not at all when it finished.
    """
    import mlflow
    import mlflow.keras

    tracking.use_store(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    client = mlflow.MlflowClient()
    run_id = tracking.find_child_run(parent_run_id, architecture)
    if run_id is None:
        run_id = tracking.start_child_run(
            client.get_run(parent_run_id).info.experiment_id,
            parent_run_id,
            run_name=architecture,
            tags={
                "architecture": architecture,
                "source": settings.source,
                "classes": tracking.class_list_value(spec.classes),
                "num_classes": str(len(spec.classes)),
            },
        )
    out_dir = Path(settings.work_dir) / "models" / run_id
    finished = _finished_training(client.get_run(run_id), out_dir)
    if finished is not None:
        return finished
    config = training_config(settings, architecture)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_params(
            {
                **config.as_params(),
                "dataset_fingerprint": spec.dataset_fingerprint,
                "max_len": spec.max_len,
                "normalising_scale": spec.scale,
                "git_commit": tracking.git_commit(),
            }
        )
        tracking.warm_model_logging()  # registration's one-time package scan, done while this trains
        shown = [TrainingProgress(architecture)] if progress.enabled(settings.progress) else []
        trained = train_model(
            config, features_dir, out_dir, callbacks=[tracking.epoch_logger(), *shown, *(callbacks or [])]
        )
        mlflow.log_metrics(
            {"num_params": trained.num_params, "train_seconds": trained.train_seconds, "epochs_run": trained.epochs_run}
        )
    return ArchitectureRun(
        architecture, run_id, trained.model_path, trained.train_seconds, trained.epochs_run, trained.num_params
    )


def _finished_training(run, out_dir: Path) -> ArchitectureRun | None:
    """Return the outcome of a run whose training already completed, else ``None``."""
    metrics = run.data.metrics
    model_path = out_dir / "model.keras"
    if "train_seconds" not in metrics or not model_path.exists():
        return None
    return ArchitectureRun(
        run.data.tags["architecture"],
        run.info.run_id,
        str(model_path),
        metrics["train_seconds"],
        int(metrics.get("epochs_run", 0)),
        int(metrics["num_params"]),
    )


TEST_PROBABILITIES = "test_probabilities.npy"  # in a run's ``evaluation`` artifacts, rows in test record order


SERVING_MODEL = "serving.keras"  # beside a run's trained model: what evaluation scored and registration logs


def evaluate(settings: Settings, run: ArchitectureRun, features_dir: Path) -> Evaluation:
    """Evaluate a trained model, as it will be served, on the test split; log the results to its run.

    The serving model (:func:`export_model`: raw stroke-3 in) is saved as :data:`SERVING_MODEL` and
    scored on the raw test sketches, so the metrics, latency and the logged test probabilities are
    those of the very file registration logs. The figures are drawn by :func:`evaluation_figures`,
    which registration need not wait for.
    """
    import keras

    tracking.use_store(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    serving = export_model(keras.saving.load_model(run.model_path), spec.scale)
    serving_path = Path(run.model_path).parent / SERVING_MODEL
    serving.save(serving_path)
    sketches, labels = split_sketches(features_dir, "test")
    evaluation, probabilities = evaluate_model(
        serving, sketches, labels, len(spec.classes), model_size_bytes=serving_path.stat().st_size
    )
    out = Path(run.model_path).parent / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / TEST_PROBABILITIES, probabilities)
    per_class = evaluation.per_class_table(spec.classes)
    (out / "per_class.json").write_text(json.dumps(per_class))
    write_confusion_csv(evaluation.confusion, spec.classes, out / "confusion_matrix.csv")
    tracking.log_metrics(run.run_id, evaluation.metrics())
    tracking.log_artifacts(run.run_id, out, "evaluation")
    # the same scores as an MLflow table, which the UI's artifact view shows and compares
    tracking.log_table(run.run_id, per_class, "evaluation/per_class_scores.json")
    return evaluation


def evaluation_figures(settings: Settings, run: ArchitectureRun, evaluation: Evaluation, features_dir: Path) -> Path:
    """Draw the confusion matrix, most confused pairs, training curves and misclassified test sketches.

    Written beside the evaluation (``<model dir>/evaluation/figures``) and logged to the run's
    ``evaluation/`` artifacts; returns the folder.
    """
    tracking.use_store(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    out = Path(run.model_path).parent / "evaluation" / "figures"
    probabilities = np.load(out.parent / TEST_PROBABILITIES, allow_pickle=False)
    title = f"{run.architecture}: test accuracy {evaluation.accuracy:.3f}"
    confusion = np.array(evaluation.confusion)
    save_figure(confusion_matrix_figure(confusion, spec.classes, title), out / "confusion_matrix.png")
    save_figure(confused_pairs_figure(confusion, spec.classes, title), out / "confused_pairs.png")
    history = tracking.metric_histories(run.run_id, ["loss", "val_loss", "accuracy", "val_accuracy"])
    save_figure(training_curves_figure(history, run.architecture), out / "training_curves.png")
    save_figure(_misclassified_figure(spec, features_dir, probabilities), out / "misclassified.png")
    tracking.log_artifacts(run.run_id, out, "evaluation")
    return out


def _misclassified_figure(spec, features_dir: Path, probabilities: np.ndarray, limit: int = 16):
    """Return a grid of (up to ``limit``) misclassified test sketches, captioned true -> predicted."""
    test = open_split(spec.dataset_dir, "test")
    indices = record_indices(features_dir, "test")
    labels = np.asarray(test.labels)[indices]
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)[:limit]
    return sketch_grid_figure(
        [test.sketch(int(indices[i])) for i in wrong],
        [f"{spec.classes[labels[i]]} -> {spec.classes[predicted[i]]} ({probabilities[i].max():.2f})" for i in wrong],
    )


def register(
    settings: Settings, run: ArchitectureRun, evaluation: Evaluation, features_dir: Path
) -> tracking.RegisteredVersion:
    """Log the model (taking raw stroke-3) to its run with ``mlflow.keras`` and register a new version."""
    import keras

    tracking.use_store(settings.resolved_tracking_uri)
    existing = tracking.find_registered_version(settings.registered_model_name, run.run_id)
    if existing is not None:  # a resumed pipeline run registered this one before it was stopped
        return existing
    spec = read_spec(features_dir)
    test = open_split(spec.dataset_dir, "test")
    example = pad_batch([test.sketch(int(i))[: spec.max_len] for i in record_indices(features_dir, "test")[:2]])
    return tracking.log_and_register_model(
        run.run_id,
        keras.saving.load_model(Path(run.model_path).parent / SERVING_MODEL),  # the model evaluate scored
        settings.registered_model_name,
        input_example=example,
        metadata={"classes": spec.classes, "scale": spec.scale, "max_len": spec.max_len},
        tags={
            "architecture": run.architecture,
            "dataset_fingerprint": spec.dataset_fingerprint,
            "test_accuracy": f"{evaluation.accuracy:.6f}",
            "test_top3_accuracy": f"{evaluation.top3_accuracy:.6f}",
            "test_macro_f1": f"{evaluation.macro_f1:.6f}",
            "git_commit": tracking.git_commit(),
        },
    )


def export_model(trained, scale: float):
    """Return the serving model: preprocessing's normalisation followed by the trained network.

    It takes raw stroke-3 ``(batch, time, 3)`` float32 with zero-padding, so whoever serves it needs
    no knowledge of the training set's scale.
    """
    import keras

    inputs = keras.Input(shape=(None, 3), dtype="float32", name="strokes")
    return keras.Model(inputs, trained(normalising_layer(scale)(inputs)), name=f"{trained.name}_serving")


def promote(settings: Settings, versions: list[tracking.RegisteredVersion], features_dir: Path) -> PromotionDecision:
    """Run the promotion gate over this pipeline run's new versions, on this run's test set.

    This run's candidates are judged by the predictions their evaluation made on this very test set
    (logged with their runs, made by the very serving model that was registered); only the champion
    is loaded and scored.
    """
    tracking.use_store(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    test = open_split(spec.dataset_dir, "test")
    indices = record_indices(features_dir, "test")
    predictions = {}
    for version in versions:
        probabilities = tracking.load_array_artifact(version.run_id, f"evaluation/{TEST_PROBABILITIES}")
        if probabilities is not None and probabilities.shape == (len(indices), len(spec.classes)):
            predictions[version.version] = [spec.classes[i] for i in probabilities.argmax(axis=1)]
    return promote_best(
        settings,
        versions,
        sketches=[test.sketch(int(i)) for i in indices],
        truth=[spec.classes[int(label)] for label in np.asarray(test.labels)[indices]],
        test_set=f"{spec.dataset_fingerprint[:12]}/test",
        predictions=predictions,
    )


def finish_pipeline_run(
    settings: Settings, parent_run_id: str, decision: tracking.PromotionDecision | None, ok: bool
) -> None:
    """Record the promotion outcome on the parent run and close it."""
    tracking.use_store(settings.resolved_tracking_uri)
    if decision is not None:
        tracking.log_dict(parent_run_id, dataclasses.asdict(decision), "promotion.json")
    tracking.end_run(parent_run_id, "FINISHED" if ok else "FAILED")


def result_row(run: ArchitectureRun, evaluation: Evaluation, version: tracking.RegisteredVersion) -> ArchitectureResult:
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


def write_comparison(
    settings: Settings, parent_run_id: str, rows: list[ArchitectureResult], decision: PromotionDecision
) -> tuple[Path, str]:
    """Write the architecture comparison (CSV) and the winner note (markdown); log both to the parent run."""
    tracking.use_store(settings.resolved_tracking_uri)
    out = Path(settings.work_dir) / "reports" / parent_run_id
    csv_path = write_comparison_csv(rows, out / "comparison.csv")
    markdown = winner_markdown(rows, decision, settings.registered_model_name)
    (out / "winner.md").write_text(markdown)
    tracking.log_artifacts(parent_run_id, out, "comparison")
    return csv_path, markdown


def dataset_summary(dataset_dir: Path) -> dict:
    """Return the counts of a dataset folder per split, for printing."""
    info = read_info(dataset_dir)
    return {split: int(np.sum(list(per_class.values()))) for split, per_class in info.counts.items()}
