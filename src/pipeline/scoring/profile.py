"""The reference profile a registered version keeps for monitoring: its test split, scored as ``score``
scores users' sketches.

A seeded sample of the test split (``reference_sample`` sketches) goes through the same scoring as a
batch of users' drawings, so the two tables have the same columns, computed the same way: the sketch
descriptors, the predicted class and confidence, and the penultimate layer projected onto its first
principal components (fitted here, on this sample; ``projection.npz`` keeps them, and ``score`` projects
users' sketches with them). Logged with the version's run under ``reference/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.scoring.readers import SketchChunk

REFERENCE_DIR = "reference"  # the artifact folder of a version's run
REFERENCE_TABLE = "reference.parquet"
PROJECTION = "projection.npz"
PROFILE = "profile.json"
EMBEDDING_DIMS = 16


def fit_projection(features: np.ndarray, dims: int = EMBEDDING_DIMS) -> tuple[np.ndarray, np.ndarray]:
    """Return the mean and the first ``dims`` principal directions of penultimate features ``(n, d)``."""
    features = np.asarray(features, dtype=np.float64)
    mean = features.mean(axis=0)
    _, _, directions = np.linalg.svd(features - mean, full_matrices=False)
    dims = min(dims, directions.shape[0])
    signs = np.sign(directions[:dims, np.argmax(np.abs(directions[:dims]), axis=1)].diagonal())  # stable signs
    return mean.astype(np.float32), (directions[:dims] * signs[:, None]).astype(np.float32)


def save_projection(path: Path, projection: tuple[np.ndarray, np.ndarray]) -> None:
    np.savez(path, mean=projection[0], components=projection[1])


def load_projection(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``projection.npz`` (plain arrays only: nothing is unpickled)."""
    with np.load(path, allow_pickle=False) as data:
        return data["mean"], data["components"]


def test_sample(features_dir: Path, size: int, fmt: str, seed: int = 0) -> SketchChunk:
    """Return a seeded sample of at most ``size`` sketches of the test split, in record order, as a chunk
    whose ``format`` is ``fmt`` (see :data:`.readers.FORMATS`)."""
    from pipeline.dataset import open_split
    from pipeline.features import read_spec, record_indices

    spec = read_spec(features_dir)
    split = open_split(spec.dataset_dir, "test")
    indices = record_indices(features_dir, "test")
    if len(indices) > size:
        indices = np.sort(np.random.default_rng(seed).choice(indices, size, replace=False))
    sketches = [split.sketch(int(i)) for i in indices]  # at most `size`: bounded whatever the split's size
    return SketchChunk(
        [str(spec.dataset_dir)] * len(indices), [f"test[{i}]" for i in indices], [None] * len(indices),
        [spec.classes[int(label)] for label in np.asarray(split.labels)[indices]], [fmt] * len(indices),
        np.concatenate(sketches).astype(np.float32) if sketches else np.zeros((0, 3), np.float32),
        np.fromiter(map(len, sketches), dtype=np.int64, count=len(sketches)), np.full(len(indices), np.nan),
    )  # fmt: skip


def source_format(source: str, data_dir: Path | None) -> str:
    """Return the ``format`` column's value (see :data:`.readers.FORMATS`) of a training source's drawings."""
    from pipeline.scoring.readers import ndjson_kind

    if source == "ndjson" and data_dir is not None:
        return ndjson_kind(Path(data_dir))
    return "tfrecord" if source == "tfrecord" else "simplified"


def write_reference(serving, metadata: dict, features_dir: Path, out_dir: Path, sample: int, fmt: str) -> Path:
    """Score the test sample with ``serving`` (the serving Keras model), fit the embedding projection on it
    and write ``reference.parquet``, ``projection.npz`` and ``profile.json`` into ``out_dir``."""
    import pyarrow.parquet as pq

    from pipeline.scoring.engine import ScoringModel, chunk_table, clean

    model = ScoringModel.from_serving_model(serving, metadata)
    chunk = test_sample(features_dir, sample, fmt)
    rows, lengths, _, _ = clean(chunk, None)
    features = _penultimate(model, rows, lengths)
    model.projection = fit_projection(features) if len(features) > 1 else None
    table, _ = chunk_table(model, chunk, 3)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out_dir / REFERENCE_TABLE)
    if model.projection is not None:
        save_projection(out_dir / PROJECTION, model.projection)
    frame = table.select(["predicted_class", "confidence"]).to_pandas()
    profile = {
        "sketches": table.num_rows,
        "test_sketches_sampled_from": len(np.load(Path(features_dir) / "test" / "indices.npy", mmap_mode="r")),
        "embedding_dims": 0 if model.projection is None else int(model.projection[1].shape[0]),
        "predicted_class_share": frame["predicted_class"].value_counts(normalize=True).round(6).to_dict(),
        "confidence_mean": float(frame["confidence"].mean()) if len(frame) else None,
    }
    (out_dir / PROFILE).write_text(json.dumps(profile, indent=1))
    return out_dir


def _penultimate(model, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return the penultimate features of cleaned sketches (for fitting the projection)."""
    from pipeline.features import padded, segment_starts
    from pipeline.scoring.engine import BATCH_SKETCHES

    starts = segment_starts(lengths)
    out = [
        model.predict(padded(rows, starts[b : b + BATCH_SKETCHES], lengths[b : b + BATCH_SKETCHES], model.max_len))[1]
        for b in range(0, len(lengths), BATCH_SKETCHES)
    ]
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)
