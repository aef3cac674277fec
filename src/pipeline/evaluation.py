"""Evaluation of a trained model on a split of a features folder."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pipeline.features import make_dataset, read_spec


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Test-split metrics of one model, and the predictions they came from."""

    accuracy: float
    top3_accuracy: float
    macro_f1: float
    num_examples: int
    latency_ms_per_sketch: float
    confusion: list[list[int]]

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Return the scalar metrics, keyed for experiment tracking."""
        return {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}top3_accuracy": self.top3_accuracy,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}latency_ms_per_sketch": self.latency_ms_per_sketch,
        }


def predict_split(model, features_dir: Path, split: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(probabilities, labels)`` for every sketch of a split, in a fixed order."""
    probabilities, labels = [], []
    for strokes, label in make_dataset(features_dir, split, batch_size):
        probabilities.append(model(strokes, training=False).numpy())
        labels.append(label.numpy())
    return np.concatenate(probabilities), np.concatenate(labels)


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Return accuracy, top-3 accuracy, macro F1 and the confusion matrix (rows: true class)."""
    predicted = probabilities.argmax(axis=1)
    top3 = np.argsort(-probabilities, axis=1)[:, :3]
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    true_positive = np.diag(confusion).astype(np.float64)
    precision = np.divide(
        true_positive, confusion.sum(axis=0), out=np.zeros(num_classes), where=confusion.sum(axis=0) > 0
    )
    recall = np.divide(true_positive, confusion.sum(axis=1), out=np.zeros(num_classes), where=confusion.sum(axis=1) > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return {
        "accuracy": float((predicted == labels).mean()),
        "top3_accuracy": float((top3 == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1.mean()),
        "confusion": confusion.tolist(),
    }


def evaluate_model(model_path: Path, features_dir: Path, split: str = "test") -> Evaluation:
    """Load a saved Keras model and return its metrics on a split of the features folder."""
    import keras

    model = keras.saving.load_model(model_path)
    spec = read_spec(features_dir)
    started = time.perf_counter()
    probabilities, labels = predict_split(model, features_dir, split)
    elapsed = time.perf_counter() - started
    scores = score_predictions(probabilities, labels, len(spec.classes))
    return Evaluation(
        accuracy=scores["accuracy"],
        top3_accuracy=scores["top3_accuracy"],
        macro_f1=scores["macro_f1"],
        num_examples=len(labels),
        latency_ms_per_sketch=1000.0 * elapsed / max(len(labels), 1),
        confusion=scores["confusion"],
    )
