"""Evaluation of a serving model on labelled raw sketches: quality, speed and size."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pipeline.features import pad_batch


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

    def per_class_table(self, classes: list[str]) -> dict[str, list]:
        """Return per-class precision, recall, F1 and support as table columns (one row per class)."""
        precision, recall = np.asarray(self.precision), np.asarray(self.recall)
        denominator = precision + recall
        f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(len(precision)), where=denominator > 0)
        return {
            "class": list(classes),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": np.asarray(self.confusion).sum(axis=1).astype(int).tolist(),
        }

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


def write_confusion_csv(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """Write a confusion matrix as CSV: a row per true class, a column per predicted class, both named."""
    import pandas as pd

    pd.DataFrame(np.asarray(confusion), index=pd.Index(classes, name="true \\ predicted"), columns=classes).to_csv(path)
    return path


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


def predict_sketches(infer, sketches: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Return ``(n, classes)`` probabilities of raw stroke-3 sketches, in order, each batch zero-padded."""
    out = [
        infer(pad_batch(sketches[start : start + batch_size])).numpy() for start in range(0, len(sketches), batch_size)
    ]
    return np.concatenate(out)


TOP_K = 3  # classes kept per test sketch: the predicted one first (the gate needs it), top-3 accuracy


def top_k_indices(probabilities: np.ndarray, k: int = TOP_K) -> np.ndarray:
    """Return the ``k`` most likely class indices per row, most likely first (``argpartition``, not a full
    sort of every class); equal probabilities in index order."""
    k = min(k, probabilities.shape[1])
    if k < probabilities.shape[1]:
        best = np.sort(np.argpartition(-probabilities, k - 1, axis=1)[:, :k], axis=1)
    else:
        best = np.broadcast_to(np.arange(k), probabilities.shape).copy()
    order = np.argsort(-np.take_along_axis(probabilities, best, axis=1), axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1).astype(np.int32)


def score_predictions(probabilities: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Return accuracy, top-3 accuracy, per-class precision/recall, macro F1 and the confusion matrix."""
    return score_ranked(top_k_indices(probabilities), labels, num_classes)


def score_ranked(ranked: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Return :func:`score_predictions`' scores from each sketch's ranked class indices (predicted first)."""
    labels = np.asarray(labels)
    predicted = ranked[:, 0]
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
        "top3_accuracy": float((ranked[:, :3] == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1.mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "confusion": confusion.tolist(),
    }


@dataclasses.dataclass
class SplitPredictions:
    """What evaluation keeps per test sketch: its top classes, most likely first, and their probabilities;
    the full probabilities only when asked for (``(n, classes)``: 1.2 GB at 860,000 x 345)."""

    ranked: np.ndarray  # int32 (n, TOP_K)
    top_probabilities: np.ndarray  # float32 (n, TOP_K)
    probabilities: np.ndarray | None = None


def measure_latency(infer, sketches: list[np.ndarray], count: int = 100) -> tuple[float, float]:
    """Return the p50 and p95 milliseconds of one-sketch calls (batch 1) over the first ``count`` sketches."""
    batches = [pad_batch([sketch]) for sketch in sketches[:count]]
    for batch in batches[:3]:  # the first calls of a graph function pay for its optimisation
        infer(batch)
    timings = []
    for batch in batches:
        started = time.perf_counter()
        infer(batch).numpy()
        timings.append(1000.0 * (time.perf_counter() - started))
    return float(np.percentile(timings, 50)), float(np.percentile(timings, 95))


EVAL_CHUNK_SKETCHES = 8192  # test sketches read, sorted by length and predicted at once


def split_chunks(dataset_dir: Path, indices: np.ndarray, split: str = "test", size: int = EVAL_CHUNK_SKETCHES):
    """Yield ``(rows, lengths)`` of a dataset split's sketches at ``indices`` (ascending, as a features
    folder lists them), in that order, ``size`` at a time: one positioned read per chunk, so memory
    holds a chunk, whatever the split's size."""
    from pipeline.dataset import open_split
    from pipeline.features import gather_rows

    arrays = open_split(dataset_dir, split)
    for begin in range(0, len(indices), size):
        part = np.asarray(indices[begin : begin + size], dtype=np.int64)
        low = int(part.min())
        rows, offsets = arrays.rows(low, int(part.max()) + 1)
        starts = offsets[part - low]
        lengths = (offsets[part - low + 1] - starts).astype(np.int64)
        yield gather_rows(rows, starts, lengths), lengths


def list_chunks(sketches: list[np.ndarray], size: int = EVAL_CHUNK_SKETCHES):
    """Yield ``(rows, lengths)`` chunks of a list of sketches (what :func:`split_chunks` yields)."""
    for begin in range(0, len(sketches), size):
        part = sketches[begin : begin + size]
        lengths = np.fromiter(map(len, part), dtype=np.int64, count=len(part))
        yield np.concatenate(part).astype(np.float32, copy=False), lengths


def evaluate_model(
    model,
    sketches: list[np.ndarray],
    labels: np.ndarray,
    num_classes: int,
    model_size_bytes: int,
    keep_probabilities: bool = False,
    batch_size: int = 256,
) -> tuple[Evaluation, SplitPredictions]:
    """Score a serving model on a list of sketches with known labels (see :func:`evaluate_chunks`)."""
    if not sketches:
        raise ValueError("no sketches to evaluate on")
    longest = max(len(s) for s in sketches)
    return evaluate_chunks(
        model, list_chunks(sketches), labels, num_classes, model_size_bytes, longest, keep_probabilities, batch_size
    )


def evaluate_chunks(
    model,
    chunks,
    labels: np.ndarray,
    num_classes: int,
    model_size_bytes: int,
    max_len: int,
    keep_probabilities: bool = False,
    batch_size: int = 256,
) -> tuple[Evaluation, SplitPredictions]:
    """Score a serving model (raw stroke-3 in, probabilities out) on sketches with known labels, given as
    ``(rows, lengths)`` chunks (:func:`split_chunks`), each sketch cropped to ``max_len``.

    Returns its metrics, speed and size, and its top classes per sketch in the order of ``labels``
    (every probability too with ``keep_probabilities``). Each chunk is sorted by length into batches
    (little padding; padding never changes a prediction) and each batch's probabilities are reduced
    to its top classes as they come: memory holds a chunk, not the split, and no ``(sketches, classes)``
    matrix. Throughput is timed over this pass, after the graph function has been traced.
    """
    from pipeline.features import padded, segment_starts

    labels = np.asarray(labels)
    count = len(labels)
    if count == 0:
        raise ValueError("no sketches to evaluate on")
    infer = compiled_inference(model)
    k = min(TOP_K, num_classes)
    ranked = np.zeros((count, k), dtype=np.int32)
    top_probabilities = np.zeros((count, k), dtype=np.float32)
    kept = np.zeros((count, num_classes), dtype=np.float32) if keep_probabilities else None
    first: list[np.ndarray] = []
    done, seconds = 0, 0.0
    for rows, lengths in chunks:
        starts = segment_starts(lengths)
        if not first:  # the latency sketches, and the trace before the timed pass
            first = [rows[a : a + n][:max_len] for a, n in zip(starts[:100], lengths[:100], strict=True)]
            infer(pad_batch(first))
        order = np.argsort(lengths, kind="stable")
        started = time.perf_counter()
        for begin in range(0, len(order), batch_size):
            index = order[begin : begin + batch_size]
            probabilities = infer(padded(rows, starts[index], lengths[index], max_len)).numpy()
            best = top_k_indices(probabilities, k)
            ranked[done + index] = best
            top_probabilities[done + index] = np.take_along_axis(probabilities, best, axis=1)
            if kept is not None:
                kept[done + index] = probabilities
        seconds += time.perf_counter() - started
        done += len(lengths)
    if done != count:
        raise ValueError(f"{done} sketches for {count} labels")
    scores = score_ranked(ranked, labels, num_classes)
    p50, p95 = measure_latency(infer, first)
    evaluation = Evaluation(
        accuracy=scores["accuracy"],
        top3_accuracy=scores["top3_accuracy"],
        macro_f1=scores["macro_f1"],
        precision=scores["precision"],
        recall=scores["recall"],
        confusion=scores["confusion"],
        num_examples=count,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
        throughput_per_s=count / seconds if seconds else 0.0,
        num_params=int(model.count_params()),
        model_size_bytes=int(model_size_bytes),
    )
    return evaluation, SplitPredictions(ranked, top_probabilities, kept)
