"""Preprocessing: stroke-3 sketches -> normalised float32 sequences in TFRecord files, and the tf.data
input pipeline that batches them as padded ``(batch, time, 3)`` tensors.

Padding rows are all zeros; models mask time steps whose three features are all zero.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.dataset import open_split, read_info
from pipeline.files import published_dir
from pipeline.strokes import SPLITS

NUM_FEATURES = 3


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """How a features folder was made; training, evaluation and serving read it back."""

    dataset_name: str
    dataset_dir: str
    dataset_fingerprint: str
    classes: list[str]
    scale: float
    max_len: int
    counts: dict[str, int]


def normalising_scale(dataset_dir: Path, train_indices: Iterable[int] | None = None) -> float:
    """Return the standard deviation of all ``dx, dy`` offsets of the training sketches (sketch-rnn's scale)."""
    arrays = open_split(dataset_dir, "train")
    indices = np.arange(len(arrays)) if train_indices is None else np.asarray(list(train_indices))
    count, total, total_sq = 0, 0.0, 0.0
    for index in indices:
        xy = arrays.sketch(int(index))[:, :2].astype(np.float64)
        count += xy.size
        total += xy.sum()
        total_sq += np.square(xy).sum()
    if count == 0:
        raise ValueError(f"{dataset_dir}: no training sketches to compute the normalising scale from")
    variance = total_sq / count - (total / count) ** 2
    return float(np.sqrt(max(variance, 1e-12)))


def normalise_sketch(strokes: np.ndarray, scale: float, max_len: int) -> np.ndarray:
    """Return the float32 model input for one stroke-3 sketch: offsets divided by ``scale``, cropped."""
    out = np.asarray(strokes, dtype=np.float32)[:max_len].copy()
    out[:, :2] /= scale
    return out


def write_features(dataset_dir: Path, accepted: dict[str, np.ndarray], out_dir: Path, max_len: int) -> FeatureSpec:
    """Write one TFRecord file per split of normalised, cropped sketches, and ``spec.json``.

    Args:
        dataset_dir: a canonical dataset folder.
        accepted: split -> indices of the sketches that passed validation.
        out_dir: the features folder to write.
        max_len: sequences are cropped to this many points.

    Returns:
        The spec that was written beside the records.
    """
    import tensorflow as tf

    info = read_info(dataset_dir)
    with published_dir(Path(out_dir)) as staging:  # concurrent runs never read half-written records
        scale = normalising_scale(dataset_dir, accepted["train"])
        counts = {}
        for split in SPLITS:
            arrays = open_split(dataset_dir, split)
            np.save(staging / f"{split}_indices.npy", np.asarray(accepted[split], dtype=np.int64))
            lengths = np.minimum(arrays.lengths()[accepted[split]], max_len)
            np.save(staging / f"{split}_lengths.npy", lengths.astype(np.int32))
            with tf.io.TFRecordWriter(str(staging / f"{split}.tfrecord")) as writer:
                for index in accepted[split]:
                    sketch = normalise_sketch(arrays.sketch(int(index)), scale, max_len)
                    label = int(arrays.labels[index])
                    example = tf.train.Example(
                        features=tf.train.Features(
                            feature={
                                "ink": tf.train.Feature(float_list=tf.train.FloatList(value=sketch.ravel())),
                                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                            }
                        )
                    )
                    writer.write(example.SerializeToString())
            counts[split] = len(accepted[split])
        spec = FeatureSpec(info.name, str(dataset_dir), info.fingerprint, info.classes, scale, max_len, counts)
        (staging / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
    return spec


def record_indices(features_dir: Path, split: str) -> np.ndarray:
    """Return the dataset indices of a split's sketches in the features folder, in record order."""
    return np.load(Path(features_dir) / f"{split}_indices.npy")


def split_sketches(features_dir: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Return a split's raw stroke-3 sketches (cropped to the features' length) and labels, in record order.

    The same sketches as the split's TFRecords, before normalisation: what a serving model takes.
    """
    spec = read_spec(features_dir)
    arrays = open_split(spec.dataset_dir, split)
    indices = record_indices(features_dir, split)
    return [arrays.sketch(int(i))[: spec.max_len] for i in indices], np.asarray(arrays.labels)[indices]


def read_spec(features_dir: Path) -> FeatureSpec:
    """Return the spec of a features folder."""
    return FeatureSpec(**json.loads((Path(features_dir) / "spec.json").read_text()))


def make_dataset(
    features_dir: Path,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    bucket_boundaries: tuple[int, ...] | None = (20, 40, 60, 80),
):
    """Return a ``tf.data.Dataset`` of ``(strokes, label)`` batches, ``strokes`` (batch, time, 3) float32.

    Sketches of similar length are batched together and each batch is zero-padded to its longest
    sketch; ``bucket_boundaries=None`` keeps the file's order instead (for paired evaluation).
    Records stream from the TFRecord file; nothing holds the whole split in memory.
    """
    import tensorflow as tf

    description = {
        "ink": tf.io.VarLenFeature(tf.float32),
        "label": tf.io.FixedLenFeature([1], tf.int64),
    }

    def parse(record):
        parsed = tf.io.parse_single_example(record, description)
        ink = tf.reshape(tf.sparse.to_dense(parsed["ink"]), (-1, NUM_FEATURES))
        return ink, tf.cast(parsed["label"][0], tf.int32)

    dataset = tf.data.TFRecordDataset(str(Path(features_dir) / f"{split}.tfrecord"))
    if shuffle:
        dataset = dataset.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if bucket_boundaries is None:
        return dataset.padded_batch(batch_size, padded_shapes=([None, NUM_FEATURES], [])).prefetch(tf.data.AUTOTUNE)
    dataset = dataset.bucket_by_sequence_length(
        element_length_func=lambda ink, label: tf.shape(ink)[0],
        bucket_boundaries=list(bucket_boundaries),
        bucket_batch_sizes=[batch_size] * (len(bucket_boundaries) + 1),
        padded_shapes=([None, NUM_FEATURES], []),
    )
    lengths = np.load(Path(features_dir) / f"{split}_lengths.npy")
    dataset = dataset.apply(
        tf.data.experimental.assert_cardinality(count_batches(lengths, batch_size, bucket_boundaries))
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def count_batches(lengths: np.ndarray, batch_size: int, bucket_boundaries: tuple[int, ...]) -> int:
    """Return how many batches bucketing yields: each bucket is batched on its own, remainders included."""
    per_bucket = np.bincount(
        np.searchsorted(bucket_boundaries, lengths, side="right"), minlength=len(bucket_boundaries) + 1
    )
    return int(np.sum(-(-per_bucket // batch_size)))


def normalising_layer(scale: float):
    """Return a Keras layer that normalises raw stroke-3 like preprocessing does (padding stays zero)."""
    import keras

    return keras.layers.Normalization(mean=[0.0, 0.0, 0.0], variance=[scale**2, scale**2, 1.0], name="normalise")


def pad_batch(sketches: list[np.ndarray], length: int | None = None) -> np.ndarray:
    """Return sketches zero-padded into one float32 ``(batch, time, 3)`` array (padding rows are zeros)."""
    length = max(len(s) for s in sketches) if length is None else length
    batch = np.zeros((len(sketches), length, NUM_FEATURES), dtype=np.float32)
    for i, sketch in enumerate(sketches):
        batch[i, : len(sketch)] = sketch[:length]
    return batch
