"""Preprocessing: stroke-3 sketches -> normalised float32 sequences stored in blocks, and the tf.data
input pipeline that batches them as padded ``(batch, time, 3)`` tensors.

A features folder holds, per split, flat arrays (no record per sketch)::

    spec.json                   scale, crop length, classes, counts, the dataset it came from
    <split>/strokes.npy         float32 (rows, 3): the normalised, cropped sketches, concatenated
    <split>/offsets.npy         int64 (n + 1,): sketch i is strokes[offsets[i]:offsets[i + 1]]
    <split>/labels.npy          int32 (n,)
    <split>/indices.npy         int64 (n,): the sketch's index in the dataset's split

Both are written and read with vectorised numpy over chunks of sketches. Padding rows are all zeros,
only at the end of a sequence (what cuDNN's masked LSTM/GRU needs); no real row is all zeros, since
ingest drops ``(0, 0, 0)`` points and validation refuses sketches without points. Models mask time
steps whose three features are all zero.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np

from pipeline.dataset import npy_header, open_split, read_info, write_npy_from_chunks
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


CHUNK_SKETCHES = 100_000  # sketches read and written at once by preprocessing (about 50 MB of rows)


def normalising_scale(dataset_dir: Path, train_indices: np.ndarray | None = None) -> float:
    """Return the standard deviation of all ``dx, dy`` offsets of the training sketches (sketch-rnn's scale).

    ``train_indices`` (sorted) selects the sketches; all of them by default. Streams the split in chunks.
    """
    arrays = open_split(dataset_dir, "train")
    selected = np.ones(len(arrays), dtype=bool)
    if train_indices is not None:
        selected[:] = False
        selected[np.asarray(train_indices, dtype=np.int64)] = True
    count, total, total_sq = 0, 0.0, 0.0
    for start in range(0, len(arrays), CHUNK_SKETCHES):
        stop = min(start + CHUNK_SKETCHES, len(arrays))
        rows, offsets = arrays.rows(start, stop)
        xy = rows[np.repeat(selected[start:stop], np.diff(offsets)), :2].astype(np.float64)
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
    """Write the normalised, cropped accepted sketches of every split as flat arrays, and ``spec.json``.

    Args:
        dataset_dir: a canonical dataset folder.
        accepted: split -> sorted indices of the sketches that passed validation.
        out_dir: the features folder to write.
        max_len: sequences are cropped to this many points.

    Returns:
        The spec that was written beside the arrays.

    Raises:
        ValueError: an accepted sketch has no points (validation's ``min_points`` must be at least 1).
    """
    info = read_info(dataset_dir)
    with published_dir(Path(out_dir)) as staging:  # concurrent runs never read half-written arrays
        scale = normalising_scale(dataset_dir, accepted["train"])
        counts = {}
        for split in SPLITS:
            indices = np.asarray(accepted[split], dtype=np.int64)
            _write_split(dataset_dir, split, indices, staging / split, scale, max_len)
            counts[split] = len(indices)
        spec = FeatureSpec(info.name, str(dataset_dir), info.fingerprint, info.classes, scale, max_len, counts)
        (staging / "spec.json").write_text(json.dumps(dataclasses.asdict(spec), indent=2))
    return spec


def _write_split(dataset_dir: Path, split: str, indices: np.ndarray, folder: Path, scale: float, max_len: int) -> None:
    """Write one split's features in chunks: gather the accepted sketches' first ``max_len`` rows, scale them."""
    arrays = open_split(dataset_dir, split)
    folder.mkdir(parents=True)
    np.save(folder / "indices.npy", indices)
    total_rows = 0
    with open(folder / "offsets.npy", "wb") as offsets_file, open(folder / "labels.npy", "wb") as labels_file:
        offsets_file.write(npy_header(np.int64, (len(indices) + 1,)) + np.int64(0).tobytes())
        labels_file.write(npy_header(np.int32, (len(indices),)))

        def chunks():  # the strokes of each chunk; its offsets and labels are written on the way
            nonlocal total_rows
            for start in range(0, len(arrays), CHUNK_SKETCHES):
                stop = min(start + CHUNK_SKETCHES, len(arrays))
                lo, hi = np.searchsorted(indices, [start, stop])
                if lo == hi:
                    continue
                rows, offsets = arrays.rows(start, stop)
                chosen = indices[lo:hi] - start
                lengths = np.minimum(np.diff(offsets)[chosen], max_len)
                if lengths.min() < 1:
                    empty = int(indices[lo + np.argmin(lengths)])
                    raise ValueError(f"{dataset_dir}: {split} sketch {empty} has no points; min_points must be >= 1")
                offsets_file.write((total_rows + np.cumsum(lengths)).tobytes())
                labels_file.write(arrays.label_range(start, stop)[chosen].astype(np.int32).tobytes())
                total_rows += int(lengths.sum())
                yield gather_rows(rows, offsets[chosen], lengths) / np.float32([scale, scale, 1.0])

        write_npy_from_chunks(folder / "strokes.npy", chunks(), np.float32, (3,), rows=None)


def gather_rows(rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Return ``rows[starts[i] : starts[i] + lengths[i]]`` for every ``i``, concatenated (one fancy index)."""
    total = int(lengths.sum())
    before = np.cumsum(lengths) - lengths
    return rows[np.repeat(starts - before, lengths) + np.arange(total)]


def record_indices(features_dir: Path, split: str) -> np.ndarray:
    """Return the dataset indices of a split's sketches in the features folder, in record order."""
    return np.load(Path(features_dir) / split / "indices.npy")


def split_sketches(features_dir: Path, split: str) -> tuple[list[np.ndarray], np.ndarray]:
    """Return a split's raw stroke-3 sketches (cropped to the features' length) and labels, in record order.

    The same sketches as the split's features, before normalisation: what a serving model takes.
    """
    spec = read_spec(features_dir)
    arrays = open_split(spec.dataset_dir, split)
    indices = record_indices(features_dir, split)
    return [arrays.sketch(int(i))[: spec.max_len] for i in indices], np.asarray(arrays.labels)[indices]


def read_spec(features_dir: Path) -> FeatureSpec:
    """Return the spec of a features folder."""
    return FeatureSpec(**json.loads((Path(features_dir) / "spec.json").read_text()))


@dataclasses.dataclass(frozen=True)
class InputOptions:
    """How the input pipeline cuts an epoch into blocks and hands batches to TensorFlow."""

    first_block_batches: int = 4  # an epoch's first block: training waits for it (64 batches: ~40 ms more)
    batches_per_block: int = 64  # the largest block: numpy gathers its sketches in one fancy index
    # TensorFlow's own checks of the cuts: off, because BlockBatches.blocks checks each block in numpy, and
    # the checks' ops made the cutting function 4x larger, which tf.data builds again for every iterator,
    # i.e. at the start of every epoch (~33 ms of ~0.9 s for the real-data wavenet; benchmarks/epoch_start.py)
    ragged_checks: bool = False
    padding_threads: int = 2  # batches padded at once (cheap: a block's numpy work dominates the input side)
    prefetch_batches: int = 16  # padded batches held ready (the next block is made while they train)


def make_dataset(
    features_dir: Path,
    split: str,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    bucket_boundaries: tuple[int, ...] | str | None = "auto",
    augmentation: Augmentation | None = None,
    sample: int | None = None,
    repeat: bool = False,
    options: InputOptions = InputOptions(),
):
    """Return a ``tf.data.Dataset`` of ``(strokes, label)`` batches, ``strokes`` (batch, time, 3) float32.

    ``sample``: when the split holds more sketches, a fixed subset of that many (drawn once, seeded by
    ``seed``; the same in every epoch), so that a large validation split costs a bounded time per epoch.
    ``repeat``: the passes over the split follow one another without end (each with its own shuffle),
    for training in epochs of a fixed number of batches (Keras's ``steps_per_epoch``).

    ``augmentation`` (for the training split only) transforms every block of sketches on the fly,
    seeded by ``seed`` and the epoch (see :func:`augment_rows`); evaluation and serving never get it.

    Sketches are grouped by length into buckets (``bucket_boundaries``; ``"auto"``: every
    :data:`BUCKET_WIDTH` steps up to the split's longest sketch, see :func:`length_buckets`) and each
    bucket is cut into batches, zero-padded to the batch's longest sketch, as ``tf.data``'s
    ``bucket_by_sequence_length`` does; ``bucket_boundaries=None`` keeps the split's order instead (for
    paired evaluation). With ``shuffle``, every epoch draws a new permutation of the whole split (seeded
    by ``seed`` and the epoch) before bucketing, and the batches come out in random order.

    The batches are made in blocks (a few batches first, then up to ``options.batches_per_block``: see
    :func:`_blocks`): numpy gathers a block's sketches from the memory-mapped flat arrays in one fancy
    index (on a background thread, while the model trains), and TensorFlow cuts the block into ragged
    batches and pads each one (``RaggedTensor.to_tensor``), so Python runs once per block, not once per
    batch or sketch.
    """
    import tensorflow as tf

    batches = BlockBatches(
        Path(features_dir), split, batch_size, shuffle, seed, bucket_boundaries, augmentation, sample, options
    )

    def to_batches(rows, lengths, labels, sizes):
        cut = functools.partial(tf.RaggedTensor.from_row_lengths, validate=options.ragged_checks)
        sketches = cut(rows, lengths)
        return tf.data.Dataset.from_tensor_slices((cut(sketches, sizes), cut(labels, sizes)))

    dataset = tf.data.Dataset.from_generator(
        batches.blocks,
        output_signature=(
            tf.TensorSpec((None, NUM_FEATURES), tf.float32),
            tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((None,), tf.int32),
            tf.TensorSpec((None,), tf.int64),
        ),
    )
    dataset = dataset.flat_map(to_batches).map(
        lambda sketches, labels: (sketches.to_tensor(), labels), num_parallel_calls=options.padding_threads
    )
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(len(batches)))
    if repeat:
        dataset = dataset.repeat()  # each pass calls ``blocks`` again: the next shuffle of the whole split
    dataset = dataset.prefetch(options.prefetch_batches)
    # tf.data's autotuner stalled training on 2 cores: every few epochs one ran twice as long at half the CPU
    # (1.3 s -> 2.5 s for the real-data wavenet), so that a run's speed depended on how many epochs stalled.
    # The sizes above are fixed, so there is nothing left to tune (docs/benchmarks.md).
    fixed = tf.data.Options()
    fixed.autotune.enabled = False
    return dataset.with_options(fixed)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation of normalised stroke-3 sketches; 0 turns each kind off."""

    scale: float = 0.0  # each axis scaled by a factor in [1 - scale, 1 + scale] (so the aspect changes too)
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    jitter: float = 0.0  # standard deviation of Gaussian noise on the absolute points (normalised units)
    stroke_dropout: float = 0.0  # probability of dropping each stroke (a sketch keeps at least one)
    reverse_strokes: float = 0.0  # probability of drawing each stroke backwards (same points, same place)
    point_dropout: float = 0.0  # probability of dropping each point inside a stroke (never its two ends)
    shuffle_strokes: float = 0.0  # probability of drawing a sketch's strokes in a random order

    @property
    def active(self) -> bool:
        return any(dataclasses.astuple(self))


def augment_rows(
    rows: np.ndarray, lengths: np.ndarray, augmentation: Augmentation, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return augmented copies of concatenated stroke-3 sketches and their new lengths, vectorised.

    Scale and rotation are one 2x2 matrix per sketch applied to its offsets. Jitter moves every
    absolute point and rewrites the offsets from them. A reversed stroke visits its points in the
    opposite order (the pen now moves to its old end first). A shuffled sketch draws the same strokes,
    each where it was, in another order (the pen lifts between them move). A dropped point's movement goes to the
    next point of its stroke, as a coarser simplification would have drawn it. A dropped stroke's rows
    go, and its movement is added to the next row kept, so the rest of the drawing stays where it was
    (the pen moves there lifted: the row before ends a stroke). No row comes out all zero, which
    would read as padding.
    """
    n = len(lengths)
    sketch_of = np.repeat(np.arange(n), lengths)
    starts = np.cumsum(lengths) - lengths
    rows = np.array(rows, dtype=np.float32, copy=True)
    if augmentation.scale or augmentation.rotation:
        sx, sy = (1.0 + rng.uniform(-augmentation.scale, augmentation.scale, (2, n))).astype(np.float32)
        theta = np.deg2rad(rng.uniform(-augmentation.rotation, augmentation.rotation, n)).astype(np.float32)
        cos, sin = np.cos(theta)[sketch_of], np.sin(theta)[sketch_of]
        x, y = rows[:, 0] * sx[sketch_of], rows[:, 1] * sy[sketch_of]
        rows[:, 0], rows[:, 1] = cos * x - sin * y, sin * x + cos * y
    if augmentation.jitter:
        noise = rng.normal(0.0, augmentation.jitter, (len(rows), 2)).astype(np.float32)
        previous = np.roll(noise, 1, axis=0)
        previous[starts[lengths > 0]] = 0.0  # a sketch's first point moves from the origin
        rows[:, :2] += noise - previous
    if augmentation.reverse_strokes and len(rows):
        first, stroke_of = _strokes(rows, starts)
        stroke_first = np.flatnonzero(first)
        stroke_last = np.append(stroke_first[1:], len(rows)) - 1
        flipped = (rng.random(len(stroke_first)) < augmentation.reverse_strokes)[stroke_of]
        index = np.arange(len(rows))
        order = np.where(flipped, stroke_first[stroke_of] + stroke_last[stroke_of] - index, index)
        rows[:, :2] = _offsets(_absolute_points(rows, lengths, starts)[order], sketch_of)  # pen flags stay
    if augmentation.shuffle_strokes and len(rows):
        first, stroke_of = _strokes(rows, starts)
        sketch_of_stroke = sketch_of[first]
        shuffled = (rng.random(n) < augmentation.shuffle_strokes)[sketch_of_stroke]
        key = np.where(shuffled, rng.random(len(sketch_of_stroke)), np.arange(len(sketch_of_stroke)))
        rank = np.empty(len(key), dtype=np.int64)
        rank[np.lexsort((key, sketch_of_stroke))] = np.arange(len(key))  # each stroke's place, within its sketch
        order = np.lexsort((np.arange(len(rows)), rank[stroke_of]))  # rows follow their stroke
        absolute = _absolute_points(rows, lengths, starts)[order]
        rows = np.column_stack([_offsets(absolute, sketch_of), rows[order, 2]]).astype(np.float32)
    if augmentation.point_dropout and len(rows):
        first, _ = _strokes(rows, starts)
        inner = ~first & (rows[:, 2] < 0.5)  # neither a stroke's first point nor its last
        keep = ~(inner & (rng.random(len(rows)) < augmentation.point_dropout))
        kept_of = sketch_of[keep]
        moves = _offsets(_absolute_points(rows, lengths, starts)[keep], kept_of)
        rows = np.column_stack([moves, rows[keep, 2]]).astype(np.float32)
        lengths = np.bincount(kept_of, minlength=n).astype(lengths.dtype)
        sketch_of, starts = kept_of, np.cumsum(lengths) - lengths
    if augmentation.stroke_dropout:
        _, stroke_of = _strokes(rows, starts)
        dropped = rng.random(stroke_of.max() + 1 if len(rows) else 0) < augmentation.stroke_dropout
        keep = ~dropped[stroke_of]
        kept_per_sketch = np.bincount(sketch_of[keep], minlength=n)
        keep |= (kept_per_sketch == 0)[sketch_of]  # a sketch that would lose every stroke keeps them all
        kept_of = sketch_of[keep]
        kept_rows = rows[keep]
        kept_rows[:, :2] = _offsets(_absolute_points(rows, lengths, starts)[keep], kept_of)
        rows, lengths = kept_rows, np.bincount(kept_of, minlength=n).astype(lengths.dtype)
    rows[~rows.any(axis=1), 0] = 1e-4  # a real point that happens not to move must not read as padding
    return rows, lengths


def _strokes(rows: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return which rows begin a stroke (after a pen lift, or a sketch's first) and each row's stroke number
    (counted over the block, so strokes of different sketches never share one)."""
    first = np.zeros(len(rows), dtype=bool)
    first[1:] = rows[:-1, 2] > 0.5
    first[starts[starts < len(rows)]] = True
    return first, np.cumsum(first) - 1


def _absolute_points(rows: np.ndarray, lengths: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Return every row's absolute point, from its sketch's origin (float64: no drift over long blocks)."""
    absolute = np.cumsum(rows[:, :2], axis=0, dtype=np.float64)
    absolute -= np.repeat(absolute[starts] - rows[starts, :2], lengths, axis=0)
    return absolute


def _offsets(absolute: np.ndarray, sketch_of: np.ndarray) -> np.ndarray:
    """Return absolute points back as offsets, each sketch's first from its origin."""
    moves = np.diff(absolute, axis=0, prepend=np.zeros((1, 2)))
    first = np.ones(len(absolute), dtype=bool)
    first[1:] = sketch_of[1:] != sketch_of[:-1]
    moves[first] = absolute[first]
    return moves.astype(np.float32)


class BlockBatches:
    """Padded batches of one split of a features folder, made with numpy; one epoch per :meth:`epoch` call."""

    def __init__(
        self,
        features_dir: Path,
        split: str,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        bucket_boundaries: tuple[int, ...] | str | None = None,
        augmentation: Augmentation | None = None,
        sample: int | None = None,
        options: InputOptions = InputOptions(),
    ):
        folder = Path(features_dir) / split
        self.options = options
        self.split = split
        self.augmentation = augmentation
        self.strokes = _mapped(folder / "strokes.npy")
        offsets = np.load(folder / "offsets.npy")
        self.starts = offsets[:-1]
        self.labels = np.load(folder / "labels.npy")
        self.lengths = np.diff(offsets)
        if sample is not None and sample < len(self.labels):
            chosen = np.sort(np.random.default_rng([seed, len(self.labels)]).choice(len(self.labels), sample, False))
            self.starts, self.labels, self.lengths = self.starts[chosen], self.labels[chosen], self.lengths[chosen]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_boundaries = length_buckets(self.lengths) if bucket_boundaries == "auto" else bucket_boundaries
        self._epochs = 0

    def __len__(self) -> int:
        if self.bucket_boundaries is None:
            return -(-len(self.labels) // self.batch_size)
        return count_batches(self.lengths, self.batch_size, self.bucket_boundaries)

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        """Return the sketch indices of each batch of ``epoch``, in the order they are served."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.labels)) if self.shuffle else np.arange(len(self.labels))
        if self.bucket_boundaries is None:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        bucket = np.searchsorted(self.bucket_boundaries, self.lengths[order], side="right")
        order = order[np.argsort(bucket, kind="stable")]  # by bucket, the permutation's order within one
        ends = np.cumsum(np.bincount(bucket, minlength=len(self.bucket_boundaries) + 1))
        batches = []
        for start, stop in zip(np.concatenate([[0], ends[:-1]]), ends, strict=True):
            batches.extend(order[i : min(i + self.batch_size, stop)] for i in range(start, stop, self.batch_size))
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return the zero-padded ``(len(indices), longest, 3)`` strokes and the labels of these sketches."""
        lengths = self.lengths[indices]
        width = int(lengths.max())
        steps = np.arange(width)
        real = steps < lengths[:, None]
        rows = np.where(real, self.starts[indices][:, None] + steps, 0)
        strokes = np.asarray(self.strokes[rows.ravel()]).reshape(len(indices), width, NUM_FEATURES)
        strokes[~real] = 0.0
        return strokes, self.labels[indices]

    def blocks(self):
        """Yield one epoch as blocks of up to ``options.batches_per_block`` batches (each call is the next
        epoch, with its own shuffle): every block is ``(rows, lengths, labels, batch_sizes)``, its
        sketches' rows concatenated in batch order."""
        epoch, self._epochs = self._epochs, self._epochs + 1
        batches = self.batch_indices(epoch)
        rng = np.random.default_rng([self.seed, epoch, 1])  # the augmentation's own stream
        for first, stop in _blocks(len(batches), self.options.first_block_batches, self.options.batches_per_block):
            group = batches[first:stop]
            order = np.concatenate(group)
            lengths = self.lengths[order]
            rows = gather_rows(self.strokes, self.starts[order], lengths)
            if self.augmentation is not None:
                rows, lengths = augment_rows(rows, lengths, self.augmentation, rng)
            sizes = np.fromiter(map(len, group), dtype=np.int64, count=len(group))
            if len(rows) != lengths.sum() or len(order) != sizes.sum():  # what from_row_lengths would check
                raise ValueError(f"{self.split}: a block of {len(rows)} rows and {len(order)} sketches does not add up")
            yield rows, lengths, self.labels[order], sizes


def _mapped(path: Path) -> np.ndarray:
    """Return the rows file memory-mapped, one mapping per file for every dataset of the process.

    Architectures trained at once read the same split: one mapping keeps its pages (which count in the
    resident size of every mapping that touched them) once, not once per architecture.
    """
    stat = path.stat()
    return _mapping(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _mapping(path: str, mtime_ns: int, size: int) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def _blocks(num_batches: int, first_size: int, most: int) -> list[tuple[int, int]]:
    """Return the (first, stop) batch numbers of an epoch's blocks: ``first_size`` batches, then each
    block twice the one before, up to ``most``. Training waits for an epoch's first block, so it is
    small; the later ones are made while the batches before them train."""
    bounds, first, size = [], 0, first_size
    while first < num_batches:
        bounds.append((first, min(first + size, num_batches)))
        first, size = first + size, min(2 * size, most)
    return bounds


BUCKET_WIDTH = 20  # steps per length bucket (fixed buckets beat length-sorted batches on real drawings)


def length_buckets(lengths: np.ndarray, width: int = BUCKET_WIDTH) -> tuple[int, ...]:
    """Return bucket boundaries every ``width`` steps below the longest of ``lengths``: (20, 40, 60, 80)
    when the longest sketch has 81-100 points (``max_len`` 100), and more for longer sketches (a larger
    ``max_len``), which fixed boundaries would all put into one bucket."""
    return tuple(range(width, int(lengths.max(initial=0)), width))


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


def segment_starts(lengths: np.ndarray) -> np.ndarray:
    """Return where each sketch begins in the flat rows."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return starts


def padded(rows: np.ndarray, starts: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Return the sketches at ``starts``/``lengths`` of the flat rows, cropped to ``max_len`` and
    zero-padded into one ``(batch, time, 3)`` float32 array (no loop over sketches)."""
    cropped = np.minimum(lengths, max_len)
    batch = np.zeros((len(lengths), int(cropped.max(initial=1)), 3), dtype=np.float32)
    sketch_of = np.repeat(np.arange(len(lengths)), cropped)
    position = np.arange(len(sketch_of)) - np.repeat(segment_starts(cropped), cropped)
    batch[sketch_of, position] = rows[np.repeat(starts, cropped) + position]
    return batch
