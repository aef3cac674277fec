"""Training stages: train -> evaluate (-> plot-evaluation, beside registration), one architecture each."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from pipeline import progress, registry, tracking
from pipeline.config import Settings
from pipeline.dataset import open_split
from pipeline.evaluation import Evaluation, evaluate_chunks, split_chunks, write_confusion_csv
from pipeline.features import read_spec, record_indices
from pipeline.plots import (
    confused_pairs_figure,
    confusion_matrix_figure,
    save_figure,
    sketch_grid_figure,
    training_curves_figure,
)
from pipeline.serving import export_model
from pipeline.training import TrainingConfig, train_model

# in a run's ``evaluation`` artifacts, rows in test record order: the top classes of each test sketch (the
# predicted one first) and their probabilities; every probability only with keep_test_probabilities
TEST_TOP_CLASSES = "test_top_classes.npy"
TEST_TOP_PROBABILITIES = "test_top_probabilities.npy"
TEST_PROBABILITIES = "test_probabilities.npy"
SERVING_MODEL = "serving.keras"  # beside a run's trained model: what evaluation scored and registration logs


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
        augment_scale=settings.augment_scale,
        augment_rotation=settings.augment_rotation,
        augment_jitter=settings.augment_jitter,
        augment_stroke_dropout=settings.augment_stroke_dropout,
        augment_reverse_strokes=settings.augment_reverse_strokes,
        augment_point_dropout=settings.augment_point_dropout,
        augment_shuffle_strokes=settings.augment_shuffle_strokes,
        weight_decay=settings.weight_decay,
        label_smoothing=settings.label_smoothing,
        ema_momentum=settings.ema_momentum,
        lr_schedule=settings.lr_schedule,
        lr_patience=settings.lr_patience,
        warmup_epochs=settings.warmup_epochs,
        steps_per_execution=settings.steps_per_execution,
        steps_per_epoch=settings.steps_per_epoch or None,
        validation_sample=settings.validation_sample or None,
        model_params=dict(settings.models.get(architecture, {})),
    )


# What one architecture trained and evaluated at once may hold in memory: TensorFlow's runtime, the model,
# its optimizer and traced functions, batches in flight and an evaluation chunk, plus per training sketch
# the split's offsets, labels and lengths and an epoch's permutation. benchmarks/full_scale.py measured
# about 0.45 GB per architecture at 690,000 training sketches (seven at once: 4.3 GB peak for the flow);
# the estimate allows twice that.
ARCHITECTURE_BYTES = 1 << 30
BYTES_PER_TRAINING_SKETCH = 64
MEMORY_SHARE = 0.5  # of the memory free at the start: the rest stays for the page cache and the flow


def parallel_architectures(settings: Settings, features_dir: Path, count: int, available: int | None = None) -> int:
    """Return how many of ``count`` architectures to train and evaluate at once.

    ``max_parallel_architectures`` when set; else as many as :data:`MEMORY_SHARE` of the memory free now
    (``available`` bytes, psutil's measure by default) holds at the training split's size, at least one.
    """
    if settings.max_parallel_architectures:
        return max(1, min(count, settings.max_parallel_architectures))
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    need = ARCHITECTURE_BYTES + BYTES_PER_TRAINING_SKETCH * read_spec(features_dir).counts["train"]
    return max(1, min(count, int(available * MEMORY_SHARE // need)))


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
    client = tracking.client_for(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    run_id = tracking.find_child_run(client, parent_run_id, architecture)
    if run_id is None:
        run_id = tracking.start_child_run(
            client,
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
    tracking.log_params(
        client,
        run_id,
        {
            **config.as_params(),
            "dataset_fingerprint": spec.dataset_fingerprint,
            "max_len": spec.max_len,
            "normalising_scale": spec.scale,
            "git_commit": tracking.git_commit(),
        },
    )
    registry.warm_model_logging()  # registration's one-time package scan, done while this trains
    shown = [progress.training_progress(architecture)] if progress.enabled(settings.progress) else []
    logger = tracking.epoch_logger(client, run_id)
    try:
        trained = train_model(config, features_dir, out_dir, callbacks=[logger, *shown, *(callbacks or [])])
    except Exception:
        tracking.end_run(client, run_id, "FAILED")
        raise
    tracking.log_metrics(
        client,
        run_id,
        {"num_params": trained.num_params, "train_seconds": trained.train_seconds, "epochs_run": trained.epochs_run},
    )
    tracking.end_run(client, run_id, "FINISHED")  # evaluation and registration add to it by id
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


def evaluate(settings: Settings, run: ArchitectureRun, features_dir: Path) -> Evaluation:
    """Evaluate a trained model, as it will be served, on the test split; log the results to its run.

    The serving model (:func:`pipeline.serving.export_model`: raw stroke-3 in) is saved as
    :data:`SERVING_MODEL` and scored on the raw test sketches, so the metrics, latency and the logged
    test probabilities are those of the very file registration logs. The figures are drawn by
    :func:`plot_evaluation`, which registration need not wait for.
    """
    import keras

    client = tracking.client_for(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    # compile=False: the trained network's loss and optimizer stay behind, so the served artifact loads
    # in a process that never imported training (a label-smoothed loss is a class of this project)
    serving = export_model(keras.saving.load_model(run.model_path, compile=False), spec.scale)
    serving_path = Path(run.model_path).parent / SERVING_MODEL
    serving.save(serving_path)
    indices = record_indices(features_dir, "test")
    evaluation, predictions = evaluate_chunks(
        serving,
        split_chunks(spec.dataset_dir, indices),
        np.asarray(open_split(spec.dataset_dir, "test").labels)[indices],
        len(spec.classes),
        model_size_bytes=serving_path.stat().st_size,
        max_len=spec.max_len,
        keep_probabilities=settings.keep_test_probabilities,
    )
    out = Path(run.model_path).parent / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / TEST_TOP_CLASSES, predictions.ranked)
    np.save(out / TEST_TOP_PROBABILITIES, predictions.top_probabilities)
    if predictions.probabilities is not None:
        np.save(out / TEST_PROBABILITIES, predictions.probabilities)
    per_class = evaluation.per_class_table(spec.classes)
    (out / "per_class.json").write_text(json.dumps(per_class))
    write_confusion_csv(evaluation.confusion, spec.classes, out / "confusion_matrix.csv")
    tracking.log_metrics(client, run.run_id, evaluation.metrics())
    tracking.log_artifacts(client, run.run_id, out, "evaluation")
    # the same scores as an MLflow table, which the UI's artifact view shows and compares
    tracking.log_table(client, run.run_id, per_class, "evaluation/per_class_scores.json")
    return evaluation


def plot_evaluation(settings: Settings, run: ArchitectureRun, evaluation: Evaluation, features_dir: Path) -> Path:
    """Draw the confusion matrix, most confused pairs, training curves and misclassified test sketches.

    Written beside the evaluation (``<model dir>/evaluation/figures``) and logged to the run's
    ``evaluation/`` artifacts, and each also as an MLflow image under its own key, which the UI's
    chart view compares across runs side by side; returns the folder.
    """
    client = tracking.client_for(settings.resolved_tracking_uri)
    spec = read_spec(features_dir)
    out = Path(run.model_path).parent / "evaluation" / "figures"
    ranked = np.load(out.parent / TEST_TOP_CLASSES, allow_pickle=False)
    confidence = np.load(out.parent / TEST_TOP_PROBABILITIES, allow_pickle=False)[:, 0]
    title = f"{run.architecture}: test accuracy {evaluation.accuracy:.3f}"
    confusion = np.array(evaluation.confusion)
    save_figure(confusion_matrix_figure(confusion, spec.classes, title), out / "confusion_matrix.png")
    save_figure(confused_pairs_figure(confusion, spec.classes, title), out / "confused_pairs.png")
    history = tracking.metric_histories(client, run.run_id, ["loss", "val_loss", "accuracy", "val_accuracy"])
    save_figure(training_curves_figure(history, run.architecture), out / "training_curves.png")
    save_figure(_misclassified_figure(spec, features_dir, ranked[:, 0], confidence), out / "misclassified.png")
    tracking.log_artifacts(client, run.run_id, out, "evaluation")
    tracking.log_images(client, run.run_id, {path.stem: path for path in sorted(out.glob("*.png"))})
    return out


def _misclassified_figure(spec, features_dir: Path, predicted: np.ndarray, confidence: np.ndarray, limit: int = 16):
    """Return a grid of (up to ``limit``) misclassified test sketches, captioned true -> predicted."""
    test = open_split(spec.dataset_dir, "test")
    indices = record_indices(features_dir, "test")
    labels = np.asarray(test.labels)[indices]
    wrong = np.flatnonzero(predicted != labels)[:limit]
    return sketch_grid_figure(
        [test.sketch(int(indices[i])) for i in wrong],
        [f"{spec.classes[labels[i]]} -> {spec.classes[predicted[i]]} ({confidence[i]:.2f})" for i in wrong],
    )
