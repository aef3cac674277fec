"""Evaluation of a trained model on a split of a features folder: quality, speed and size."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pipeline.features import make_dataset, read_spec


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Test-split metrics of one model. Per-class lists follow the class order of the features."""

    accuracy: float
    top3_accuracy: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    confusion: list[list[int]]
    num_examples: int
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_per_s: float
    num_params: int
    model_size_bytes: int

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Return the scalar metrics, keyed for experiment tracking."""
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}top3_accuracy": self.top3_accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            "latency_p50_ms": self.latency_p50_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "throughput_per_s_batch256": self.throughput_per_s,
            "num_params": self.num_params,
            "model_size_bytes": self.model_size_bytes,
        }


def compiled_inference(model):
    """Return the model's inference step as one graph function for any batch size and length.

    Eager calls run recurrent layers step by step in Python (tens of times slower); ``predict``
    adds per-call overhead that would swamp a batch-1 latency measurement. The input signature
    leaves batch and time unknown, so the function is traced once, not once per padded length.
    """
    import tensorflow as tf

    return tf.function(
        lambda strokes: model(strokes, training=False),
        input_signature=[tf.TensorSpec([None, None, 3], tf.float32, name="strokes")],
    )


def predict_split(infer, features_dir: Path, split: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(probabilities, labels)`` for every sketch of a split, in record order."""
    probabilities, labels = [], []
    for strokes, label in make_dataset(features_dir, split, batch_size, bucket_boundaries=None):
        probabilities.append(infer(strokes).numpy())
        labels.append(label.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Return accuracy, top-3 accuracy, per-class precision/recall, macro F1 and the confusion matrix."""
    predicted = probabilities.argmax(axis=1)
    top3 = np.argsort(-probabilities, axis=1)[:, :3]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    predicted_count, true_count = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted_count, out=np.zeros(num_classes), where=predicted_count > 0)
    recall = np.divide(true_positive, true_count, out=np.zeros(num_classes), where=true_count > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return {
        "accuracy": float((predicted == labels).mean()),
        "top3_accuracy": float((top3 == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1.mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "confusion": confusion.tolist(),
    }


def measure_latency(infer, features_dir: Path, split: str = "test", count: int = 100) -> tuple[float, float]:
    """Return the p50 and p95 milliseconds of one-sketch calls (batch 1) over ``count`` test sketches."""
    batches = [strokes for strokes, _ in make_dataset(features_dir, split, 1, bucket_boundaries=None).take(count)]
    for strokes in batches[:3]:  # the first calls of a graph function pay for its optimisation
        infer(strokes)
    timings = []
    for strokes in batches:
        started = time.perf_counter()
        infer(strokes).numpy()
        timings.append(1000.0 * (time.perf_counter() - started))
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 95))


def evaluate_model(model_path: Path, features_dir: Path, split: str = "test") -> tuple[Evaluation, np.ndarray]:
    """Load a saved Keras model and return its metrics on a split, and its probabilities in record order."""
    import keras

    model = keras.saving.load_model(model_path)
    infer = compiled_inference(model)
    spec = read_spec(features_dir)
    for strokes, _ in make_dataset(features_dir, split, 256, bucket_boundaries=None).take(2):
        infer(strokes)  # warm-up: trace and optimise before the timed pass
    started = time.perf_counter()
    probabilities, labels = predict_split(infer, features_dir, split, batch_size=256)
    throughput = len(labels) / (time.perf_counter() - started)
    scores = score_predictions(probabilities, labels, len(spec.classes))
    p50, p95 = measure_latency(infer, features_dir, split)
    evaluation = Evaluation(
        accuracy=scores["accuracy"],
        top3_accuracy=scores["top3_accuracy"],
        macro_f1=scores["macro_f1"],
        precision=scores["precision"],
        recall=scores["recall"],
        confusion=scores["confusion"],
        num_examples=len(labels),
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        throughput_per_s=throughput,
        num_params=int(model.count_params()),
        model_size_bytes=Path(model_path).stat().st_size,
    )
    return evaluation, probabilities
