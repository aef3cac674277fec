"""Scoring sketches with a registered model, a chunk at a time, into Parquet.

Each chunk is checked, cleaned, described and predicted as flat arrays: sketches that a model cannot
read (a value that is not finite, a pen value other than 0 or 1, no movement, a move larger than
training allowed) are quarantined with their reason; the rest are sorted by length into batches (little
padding), run through one graph function that returns both the probabilities and the penultimate
layer, and written as one Parquet row group. A part (a contiguous run of input files) reads its next
chunk in a thread while the model runs on the current one.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.dataset import Rejection
from pipeline.evaluation import top_k_indices
from pipeline.features import padded, segment_starts
from pipeline.scoring.descriptors import DESCRIPTORS, sketch_descriptors
from pipeline.scoring.readers import CHUNK_SKETCHES, SketchChunk, iter_chunks

BATCH_SKETCHES = 256  # sketches per model call
QUARANTINE_COLUMNS = ("source", "record", "reason", "value", "count")


@dataclasses.dataclass
class ScoringModel:
    """A registered version ready for batch scoring: its serving network with a second output (the
    penultimate layer, projected to a few dimensions by the version's reference profile)."""

    name: str
    version: str
    classes: list[str]
    max_len: int
    max_abs_delta: float | None
    network: object  # keras.Model: raw stroke-3 -> (probabilities, penultimate features)
    projection: tuple[np.ndarray, np.ndarray] | None = None  # (mean, components): PCA of the reference
    _infer: object = dataclasses.field(default=None, init=False, repr=False)

    @classmethod
    def from_serving_model(cls, serving, metadata: dict, name: str = "", version: str = "", projection=None):
        """Return the scoring model of a serving model (``pipeline.serving.export_model``'s output)."""
        limit = metadata.get("max_abs_delta")
        return cls(
            name, str(version), list(metadata["classes"]), int(metadata["max_len"]),
            None if limit is None else float(limit), with_features(serving), projection,
        )  # fmt: skip

    def predict(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return probabilities and penultimate features of a zero-padded ``(batch, time, 3)`` batch."""
        if self._infer is None:
            import tensorflow as tf

            network = self.network
            self._infer = tf.function(
                lambda strokes: network(strokes, training=False),
                input_signature=[tf.TensorSpec([None, None, 3], tf.float32)],
            )
        probabilities, features = self._infer(batch)
        return probabilities.numpy(), features.numpy()

    def embed(self, features: np.ndarray) -> np.ndarray | None:
        """Return features projected onto the reference's principal components (``None`` without them)."""
        if self.projection is None:
            return None
        mean, components = self.projection
        return ((features - mean) @ components.T).astype(np.float32)


def with_features(serving):
    """Return a Keras model with the serving model's input and two outputs: its probabilities and the
    input of its final layer (the sketch's vector, after the sequence and picture features are joined)."""
    import keras

    inner = [layer for layer in serving.layers if isinstance(layer, keras.Model)][-1]
    head = inner.get_layer("probabilities")
    both = keras.Model(inner.inputs, [inner.outputs[0], head.input])
    x = serving.inputs[0]
    for layer in serving.layers:
        if layer is inner:
            break
        if not isinstance(layer, keras.layers.InputLayer):
            x = layer(x)
    return keras.Model(serving.inputs, both(x), name=f"{serving.name}_scoring")


@dataclasses.dataclass
class PartResult:
    """What scoring one part did: counts, the predicted classes' counts, and its time."""

    records_in: int = 0
    scored: int = 0
    quarantined: int = 0
    class_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0


def clean(chunk: SketchChunk, max_abs_delta: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Return the rows and lengths of the chunk's readable sketches without their ``(0, 0, 0)`` rows, the
    index of each, and ``(index, reason)`` for the others."""
    n = len(chunk)
    rows, lengths = chunk.rows, chunk.lengths
    sketch_of = np.repeat(np.arange(n), lengths)
    finite = np.isfinite(rows).all(axis=1)
    reasons = np.full(n, "", dtype=object)

    def refuse(bad_rows: np.ndarray, reason: str) -> None:
        bad = (np.bincount(sketch_of, weights=bad_rows, minlength=n) > 0) & (reasons == "")
        reasons[bad] = reason

    reasons[lengths == 0] = "empty sketch"
    refuse(~finite, "a value is not finite")
    refuse(finite & (rows[:, 2] != 0) & (rows[:, 2] != 1), "pen value other than 0 or 1")
    moving = np.any(rows != 0, axis=1)
    no_movement = (np.bincount(sketch_of, weights=moving, minlength=n) == 0) & (reasons == "")
    reasons[no_movement] = "no movement (every row is 0, 0, 0)"
    if max_abs_delta is not None:
        refuse(finite & (np.abs(rows[:, :2]).max(axis=1) > max_abs_delta), "moves further than training allowed")
    ok = reasons == ""
    keep_rows = moving & ok[sketch_of]
    kept = np.flatnonzero(ok)
    new_lengths = np.bincount(sketch_of[keep_rows], minlength=n)[kept].astype(np.int64)
    refused = [(int(i), str(reasons[i])) for i in np.flatnonzero(~ok)]
    return rows[keep_rows], new_lengths, kept, refused


def predict_chunk(model: ScoringModel, rows: np.ndarray, lengths: np.ndarray, k: int):
    """Return top-``k`` class indices and probabilities and the embeddings of cleaned sketches, in order."""
    n = len(lengths)
    k = min(k, len(model.classes))
    top = np.zeros((n, k), dtype=np.int32)
    top_p = np.zeros((n, k), dtype=np.float32)
    embeddings = None
    starts = segment_starts(lengths)
    order = np.argsort(lengths, kind="stable")
    for begin in range(0, n, BATCH_SKETCHES):
        index = order[begin : begin + BATCH_SKETCHES]
        probabilities, features = model.predict(padded(rows, starts[index], lengths[index], model.max_len))
        ranked = top_k_indices(probabilities, k)
        top[index] = ranked
        top_p[index] = np.take_along_axis(probabilities, ranked, 1)
        projected = model.embed(features)
        if projected is not None:
            if embeddings is None:
                embeddings = np.zeros((n, projected.shape[1]), dtype=np.float32)
            embeddings[index] = projected
    return top, top_p, embeddings


def chunk_table(model: ScoringModel, chunk: SketchChunk, k: int):
    """Return the Parquet table of one chunk's readable sketches, and the ``(index, reason)`` of the others."""
    import pyarrow as pa

    rows, lengths, kept, refused = clean(chunk, model.max_abs_delta)
    top, top_p, embeddings = predict_chunk(model, rows, lengths, k)
    described = sketch_descriptors(rows, lengths, chunk.durations[kept])
    classes = np.asarray(model.classes, dtype=object)
    k = top.shape[1]
    columns = {
        "source": pa.array([chunk.sources[i] for i in kept], pa.string()).dictionary_encode(),
        "record": pa.array([chunk.records[i] for i in kept], pa.string()),
        "key_id": pa.array([chunk.key_ids[i] for i in kept], pa.string()),
        "word": pa.array([chunk.words[i] for i in kept], pa.string()),
        "format": pa.array([chunk.formats[i] for i in kept], pa.string()),
        "predicted_class": pa.array(classes[top[:, 0]] if len(kept) else [], pa.string()),
        "confidence": pa.array(top_p[:, 0], pa.float32()),
        "top_classes": pa.FixedSizeListArray.from_arrays(pa.array(classes[top.ravel()], pa.string()), k),
        "top_probabilities": pa.FixedSizeListArray.from_arrays(pa.array(top_p.ravel(), pa.float32()), k),
        "model_name": pa.array([model.name] * len(kept), pa.string()).dictionary_encode(),
        "model_version": pa.array([model.version] * len(kept), pa.string()).dictionary_encode(),
        **{name: pa.array(described[name], pa.float32()) for name in DESCRIPTORS},
    }
    if embeddings is not None:
        columns.update({f"embedding_{j}": pa.array(embeddings[:, j]) for j in range(embeddings.shape[1])})
    return pa.table(columns), refused


def _prefetched(chunks: Iterator, depth: int = 2) -> Iterator:
    """Yield from ``chunks``, read ahead in a thread (reading overlaps the model's work)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in chunks:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            items.put(exc)

    thread = threading.Thread(target=produce, name="score-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def score_part(
    model: ScoringModel, files: list[Path], out: Path, k: int = 3, chunk_size: int = CHUNK_SKETCHES
) -> PartResult:
    """Score ``files`` in order into the Parquet file ``out``, their rejected records into
    ``out.quarantine.csv``; return the counts."""
    import pyarrow.parquet as pq

    started = time.perf_counter()
    result, classes = PartResult(), Counter()
    writer = None
    quarantine = quarantine_path(out)
    with open(quarantine, "w", newline="", encoding="utf-8") as sink:
        rejected = csv.writer(sink)
        rejected.writerow(QUARANTINE_COLUMNS)
        try:
            for item in _prefetched(iter_chunks(files, chunk_size)):
                if isinstance(item, Rejection):
                    result.records_in += item.count
                    result.quarantined += item.count
                    rejected.writerow([item.source, item.record, item.reason, item.value, item.count])
                    continue
                table, refused = chunk_table(model, item, k)
                for index, reason in refused:
                    rejected.writerow([item.sources[index], item.records[index], reason, "", 1])
                result.records_in += len(item)
                result.quarantined += len(refused)
                result.scored += table.num_rows
                classes.update(table.column("predicted_class").to_pylist())
                if writer is None:
                    writer = pq.ParquetWriter(out, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
    result.class_counts = dict(classes)
    result.seconds = time.perf_counter() - started
    return result


def quarantine_path(parquet: Path) -> Path:
    """Return the CSV beside a scores file that lists its rejected records."""
    return Path(parquet).with_name(Path(parquet).name.removesuffix(".parquet") + ".quarantine.csv")


def partition(files: list[Path], parts: int) -> list[list[Path]]:
    """Return the files cut into at most ``parts`` contiguous runs of about equal size in bytes (contiguous,
    so that the merged output keeps the input order)."""
    if not files:
        return []
    parts = min(parts, len(files))
    sizes = np.cumsum([max(1, f.stat().st_size) for f in files])
    cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, parts) / parts, side="right")
    bounds = [0, *sorted(set(int(c) for c in cuts) - {0, len(files)}), len(files)]
    return [files[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def merge_parts(parts: list[Path], out: Path) -> int:
    """Write the Parquet parts, in order, into ``out`` (row group by row group: memory stays flat) and their
    quarantine CSVs into ``out``'s; return the rows written."""
    import pyarrow.parquet as pq

    rows = 0
    writer = None
    staging = out.with_name(f".{out.name}.partial")
    try:
        for part in parts:
            if not part.exists():  # a part whose every record was quarantined
                continue
            source = pq.ParquetFile(part)
            for index in range(source.num_row_groups):
                table = source.read_row_group(index)
                if writer is None:
                    writer = pq.ParquetWriter(staging, source.schema_arrow)
                writer.write_table(table.cast(writer.schema) if table.schema != writer.schema else table)
                rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        empty_table(out.with_name(staging.name))
    staging.replace(out)
    with open(quarantine_path(out), "w", newline="", encoding="utf-8") as sink:
        sink.write(",".join(QUARANTINE_COLUMNS) + "\n")
        for part in parts:
            with open(quarantine_path(part), encoding="utf-8") as lines:
                next(lines, None)
                for line in lines:
                    sink.write(line)
    return rows


def empty_table(path: Path) -> None:
    """Write a scores file with no rows (every record was quarantined)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"source": pa.array([], pa.string()), "predicted_class": pa.array([], pa.string())}), path)
