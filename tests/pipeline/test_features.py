import numpy as np
import pytest

from pipeline.dataset import open_split
from pipeline.features import make_dataset, normalise_sketch, normalising_scale, pad_batch, read_spec


def test_scale_is_std_of_training_offsets(tiny_dataset):
    train = open_split(tiny_dataset, "train")
    offsets = np.concatenate([train.sketch(i)[:, :2] for i in range(len(train))])
    assert np.isclose(normalising_scale(tiny_dataset), offsets.std(), rtol=1e-6)


def test_spec_counts_and_classes(tiny_features, tiny_report):
    spec = read_spec(tiny_features)
    assert spec.classes == ["circle", "square", "triangle", "star"]
    assert spec.counts == {"train": 240, "valid": 60, "test": 80}
    assert spec.max_len == 60 and spec.scale > 0


def test_batches_are_padded_float32_with_zero_padding(tiny_features, tiny_dataset):
    spec = read_spec(tiny_features)
    seen = 0
    for strokes, labels in make_dataset(tiny_features, "test", batch_size=16):
        strokes = strokes.numpy()
        assert strokes.dtype == np.float32 and strokes.ndim == 3 and strokes.shape[2] == 3
        assert strokes.shape[1] <= spec.max_len
        valid = np.any(strokes != 0, axis=-1)
        # padding only at the end of each sequence
        assert all(np.all(np.diff(row.astype(int)) <= 0) for row in valid)
        seen += len(labels)
    assert seen == spec.counts["test"]


def test_records_hold_the_normalised_sketches(tiny_features, tiny_dataset):
    spec = read_spec(tiny_features)
    test = open_split(tiny_dataset, "test")
    expected = {
        tuple(normalise_sketch(test.sketch(i), spec.scale, spec.max_len).ravel().round(4)) for i in range(len(test))
    }
    got = set()
    for strokes, _ in make_dataset(tiny_features, "test", batch_size=1):
        got.add(tuple(strokes.numpy()[0].ravel().round(4)))
    assert got == expected


def test_pad_batch():
    batch = pad_batch([np.ones((2, 3)), np.ones((4, 3))])
    assert batch.shape == (2, 4, 3) and batch[0, 2:].sum() == 0 and batch[1].sum() == 12


def test_declared_cardinality_matches_the_batches(tiny_features):
    for split in ("train", "valid", "test"):
        for batch_size in (7, 32):
            dataset = make_dataset(tiny_features, split, batch_size=batch_size, bucket_boundaries=(10, 20, 30))
            assert int(dataset.cardinality()) == sum(1 for _ in dataset)


def test_the_input_pipeline_has_fixed_sizes_and_keeps_the_served_order(tiny_features):
    """The autotuner is off (it stalled training on 2 cores), and padding batches in parallel keeps them in
    the order the epoch serves them."""
    from pipeline.features import BlockBatches

    dataset = make_dataset(tiny_features, "train", batch_size=8, shuffle=True, seed=5, bucket_boundaries=(10, 20))
    assert dataset.options().autotune.enabled is False
    served = BlockBatches(tiny_features, "train", batch_size=8, shuffle=True, seed=5, bucket_boundaries=(10, 20))
    for epoch in range(2):  # each pass over the dataset is the next epoch, with its own order
        batches = list(dataset)
        expected = [served.batch(indices) for indices in served.batch_indices(epoch)]
        assert len(batches) == len(expected) > 1
        for (strokes, labels), (want_strokes, want_labels) in zip(batches, expected, strict=True):
            assert np.array_equal(strokes.numpy(), want_strokes) and np.array_equal(labels.numpy(), want_labels)


def test_an_epoch_starts_with_a_small_block_and_the_blocks_grow(tiny_features):
    """Training waits for an epoch's first block only: it holds a few batches, each block after it twice
    the one before up to the cap, and together they are the epoch's batches in order."""
    from pipeline import features

    options = features.InputOptions(first_block_batches=2, batches_per_block=8)
    served = features.BlockBatches(
        tiny_features, "train", batch_size=2, shuffle=True, seed=1, bucket_boundaries=(10,), options=options
    )
    expected = served.batch_indices(0)
    assert len(expected) > 2 + 4 + 8  # reaches the cap
    blocks = list(served.blocks())
    sizes = [len(block[3]) for block in blocks]
    assert sizes[:3] == [2, 4, 8] and set(sizes[3:-1]) <= {8} and 0 < sizes[-1] <= 8
    assert np.concatenate([block[3] for block in blocks]).tolist() == [len(b) for b in expected]
    labels = np.concatenate([block[2] for block in blocks])
    assert np.array_equal(labels, served.labels[np.concatenate(expected)])


def test_a_block_whose_rows_do_not_add_up_fails_in_numpy(tiny_features, monkeypatch):
    """TensorFlow cuts the blocks without checking them (its checks cost ~33 ms per epoch): the numpy side
    refuses a block whose rows and lengths disagree rather than serve shifted sketches."""
    from pipeline import features

    monkeypatch.setattr(features, "augment_rows", lambda rows, lengths, augmentation, rng: (rows[:-1], lengths))
    served = features.BlockBatches(tiny_features, "train", 8, shuffle=True, augmentation=features.Augmentation(0.1))
    with pytest.raises(ValueError, match=r"train: a block of .* does not add up"):
        next(iter(served.blocks()))


def test_chunked_preprocessing_writes_the_same_features(tiny_dataset, tiny_report, tmp_path, monkeypatch):
    """Chunks of 7 sketches (and a crop that cuts sketches) give the same arrays as one chunk."""
    import pipeline.features as features

    accepted = {split: tiny_report.accepted_indices(split)[::2] for split in ("train", "valid", "test")}
    whole = features.write_features(tiny_dataset, accepted, tmp_path / "whole", max_len=12)
    monkeypatch.setattr(features, "CHUNK_SKETCHES", 7)
    chunked = features.write_features(tiny_dataset, accepted, tmp_path / "chunked", max_len=12)
    assert chunked.scale == whole.scale and chunked.counts == whole.counts
    for split in ("train", "test"):
        for name in ("strokes", "offsets", "labels", "indices"):
            a = np.load(tmp_path / "whole" / split / f"{name}.npy")
            b = np.load(tmp_path / "chunked" / split / f"{name}.npy")
            assert a.dtype == b.dtype and np.array_equal(a, b)
    test = open_split(tiny_dataset, "test")
    batches = features.BlockBatches(tmp_path / "chunked", "test", batch_size=5)
    strokes, labels = batches.batch(np.arange(len(batches.labels)))
    for row, index in enumerate(accepted["test"]):
        expected = normalise_sketch(test.sketch(int(index)), whole.scale, 12)
        assert np.allclose(strokes[row, : len(expected)], expected) and not strokes[row, len(expected) :].any()
        assert labels[row] == test.labels[index]


def test_length_buckets_follow_the_longest_sketch(tiny_features):
    from pipeline.features import BlockBatches, length_buckets

    assert length_buckets(np.array([3, 100, 57])) == (20, 40, 60, 80)  # max_len 100: the buckets as ever
    assert length_buckets(np.array([250, 12])) == tuple(range(20, 250, 20))  # max_len 250: up to 240
    assert length_buckets(np.array([15, 7])) == ()  # all in one bucket
    batches = BlockBatches(tiny_features, "train", 16, shuffle=True, bucket_boundaries="auto")
    assert batches.bucket_boundaries == length_buckets(batches.lengths)
    for indices in batches.batch_indices(0):  # one bucket per batch
        assert len(set(np.searchsorted(batches.bucket_boundaries, batches.lengths[indices], side="right"))) == 1


def test_every_epoch_serves_each_sketch_once_in_a_new_order(tiny_features):
    from pipeline.features import BlockBatches

    batches = BlockBatches(tiny_features, "train", batch_size=16, shuffle=True, seed=3, bucket_boundaries=(10, 20))
    epochs = [batches.batch_indices(epoch) for epoch in range(3)]
    for batch_list in epochs:
        served = np.concatenate(batch_list)
        assert sorted(served.tolist()) == list(range(len(batches.labels)))
        assert len(batch_list) == len(batches)
        for indices in batch_list:  # one bucket per batch
            assert len(set(np.searchsorted((10, 20), batches.lengths[indices], side="right").tolist())) == 1
    assert not np.array_equal(np.concatenate(epochs[0]), np.concatenate(epochs[1]))
    again = BlockBatches(tiny_features, "train", batch_size=16, shuffle=True, seed=3, bucket_boundaries=(10, 20))
    assert all(np.array_equal(a, b) for a, b in zip(again.batch_indices(1), epochs[1], strict=True))
    ordered = BlockBatches(tiny_features, "valid", batch_size=16, bucket_boundaries=None)
    assert np.concatenate(ordered.batch_indices(0)).tolist() == list(range(len(ordered.labels)))


def _strokes_block(rng, sketches=40):
    """Concatenated stroke-3 sketches of 1-4 strokes each, no row all zero; and their lengths."""
    parts = []
    for _ in range(sketches):
        rows = []
        for _ in range(int(rng.integers(1, 5))):
            stroke = rng.normal(0, 1, (int(rng.integers(2, 6)), 3)).astype(np.float32)
            stroke[:, 2] = 0
            stroke[-1, 2] = 1
            rows.append(stroke)
        parts.append(np.concatenate(rows))
    return np.concatenate(parts), np.array([len(p) for p in parts])


def _absolute(rows, lengths):
    return [np.cumsum(part[:, :2], axis=0) for part in np.split(rows, np.cumsum(lengths)[:-1])]


def test_rotation_and_scale_move_each_sketch_as_one_shape():
    from pipeline.features import Augmentation, augment_rows

    rng = np.random.default_rng(0)
    rows, lengths = _strokes_block(rng)
    rotated, same = augment_rows(rows, lengths, Augmentation(rotation=30), np.random.default_rng(1))
    assert np.array_equal(same, lengths) and np.array_equal(rotated[:, 2], rows[:, 2])
    assert np.allclose(np.hypot(*rotated[:, :2].T), np.hypot(*rows[:, :2].T), atol=1e-5)  # lengths kept
    assert not np.allclose(rotated[:, :2], rows[:, :2])
    scaled, _ = augment_rows(rows, lengths, Augmentation(scale=0.2), np.random.default_rng(1))
    ratios = scaled[:, :2] / rows[:, :2]
    for part in np.split(ratios, np.cumsum(lengths)[:-1]):  # one factor per axis and sketch, within 20%
        assert np.allclose(part, part[0], atol=1e-4) and np.all(np.abs(part[0] - 1) <= 0.2 + 1e-6)


def test_jitter_moves_points_not_the_pen_and_dropped_strokes_leave_the_rest_in_place():
    from pipeline.features import Augmentation, augment_rows

    rng = np.random.default_rng(0)
    rows, lengths = _strokes_block(rng, sketches=200)
    jittered, same = augment_rows(rows, lengths, Augmentation(jitter=0.05), np.random.default_rng(2))
    assert np.array_equal(same, lengths) and np.array_equal(jittered[:, 2], rows[:, 2])
    shift = np.concatenate(_absolute(jittered, lengths)) - np.concatenate(_absolute(rows, lengths))
    assert 0.03 < shift.std() < 0.07  # each absolute point moved by its own noise, not an accumulated walk

    dropped, new_lengths = augment_rows(rows, lengths, Augmentation(stroke_dropout=0.5), np.random.default_rng(3))
    assert new_lengths.min() >= 1 and new_lengths.sum() < lengths.sum()  # strokes went, no sketch emptied
    assert not np.any(np.all(dropped == 0, axis=1))
    for before, after, part_before, part_after in zip(
        _absolute(rows, lengths), _absolute(dropped, new_lengths),
        np.split(rows, np.cumsum(lengths)[:-1]), np.split(dropped, np.cumsum(new_lengths)[:-1]), strict=True,
    ):  # fmt: skip
        # every kept point is exactly where it was: the kept rows are a subsequence of the original points
        matches = [np.flatnonzero(np.all(np.isclose(before, point, atol=1e-4), axis=1)) for point in after]
        assert all(len(m) for m in matches)
        assert int(part_after[:, 2].sum()) <= int(part_before[:, 2].sum())


def _strokes_of(part):
    """Return a stroke-3 sketch's strokes, each as its absolute points ``(k, 2)``, float64."""
    points = np.cumsum(part[:, :2].astype(np.float64), axis=0)
    return [stroke for stroke in np.split(points, np.flatnonzero(part[:, 2] > 0.5) + 1) if len(stroke)]


def _same(a, b) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=1e-4)


def test_reversed_strokes_visit_the_same_points_backwards_and_keep_their_place():
    from pipeline.features import Augmentation, augment_rows

    rng = np.random.default_rng(0)
    rows, lengths = _strokes_block(rng, sketches=200)
    reversed_rows, same = augment_rows(rows, lengths, Augmentation(reverse_strokes=0.5), np.random.default_rng(4))
    assert np.array_equal(same, lengths) and np.array_equal(reversed_rows[:, 2], rows[:, 2])  # pen lifts stay
    flipped = kept = 0
    for before, after in zip(
        np.split(rows, np.cumsum(lengths)[:-1]), np.split(reversed_rows, np.cumsum(lengths)[:-1]), strict=True
    ):
        for stroke, new in zip(_strokes_of(before), _strokes_of(after), strict=True):
            # every stroke: the same points, in one order or the other
            assert _same(new, stroke) or _same(new, stroke[::-1])
            flipped += not _same(new, stroke)
            kept += _same(new, stroke)
    assert 0.35 < flipped / (flipped + kept) < 0.65  # about half of them (a stroke of one point counts as kept)
    everything, _ = augment_rows(rows, lengths, Augmentation(reverse_strokes=1.0), np.random.default_rng(4))
    twice, _ = augment_rows(everything, lengths, Augmentation(reverse_strokes=1.0), np.random.default_rng(5))
    np.testing.assert_allclose(twice, rows, atol=1e-4)  # backwards twice is the drawing as it was


def test_shuffled_sketches_draw_the_same_strokes_in_another_order():
    from pipeline.features import Augmentation, augment_rows

    rng = np.random.default_rng(0)
    rows, lengths = _strokes_block(rng, sketches=400)
    shuffled, same = augment_rows(rows, lengths, Augmentation(shuffle_strokes=0.5), np.random.default_rng(7))
    assert np.array_equal(same, lengths)
    reordered = several = 0
    for before, after in zip(
        np.split(rows, np.cumsum(lengths)[:-1]), np.split(shuffled, np.cumsum(lengths)[:-1]), strict=True
    ):
        old, new = _strokes_of(before), _strokes_of(after)
        # the same strokes, each point where it was and in its order: only the order of the strokes changes
        assert sorted(map(len, old)) == sorted(map(len, new))
        assert all(any(_same(stroke, other) for other in old) for stroke in new)
        several += len(old) > 1
        reordered += not all(_same(a, b) for a, b in zip(old, new, strict=True))
    # half the sketches are shuffled, and a shuffle of two strokes keeps their order half the time, of three
    # 1/6, of four 1/24: about 0.38 of the sketches of 2-4 strokes come out in another order
    assert 0.28 < reordered / several < 0.5


def test_point_dropout_keeps_every_stroke_s_ends_and_the_kept_points_in_place():
    from pipeline.features import Augmentation, augment_rows

    rng = np.random.default_rng(0)
    rows, lengths = _strokes_block(rng, sketches=200)
    thinned, new_lengths = augment_rows(rows, lengths, Augmentation(point_dropout=0.5), np.random.default_rng(6))
    parts_before = np.split(rows, np.cumsum(lengths)[:-1])
    inner = sum(max(len(stroke) - 2, 0) for part in parts_before for stroke in _strokes_of(part))
    assert 0.35 < (lengths.sum() - new_lengths.sum()) / inner < 0.65  # about half of the inner points went
    for before, after in zip(parts_before, np.split(thinned, np.cumsum(new_lengths)[:-1]), strict=True):
        for stroke, new in zip(_strokes_of(before), _strokes_of(after), strict=True):  # no stroke lost
            assert _same(new[[0, -1]], stroke[[0, -1]])  # its two ends stay
            # the kept points are where they were, in their order: a subsequence of the stroke
            where = [int(np.flatnonzero(np.all(np.isclose(stroke, point, atol=1e-4), axis=1))[0]) for point in new]
            assert where == sorted(set(where))
    assert not np.any(np.all(thinned == 0, axis=1))


def _cudnn_mask_check():
    """Return Keras's own check of an RNN mask before its cuDNN kernel (the TensorFlow backend's, run on a GPU
    only): it raises unless every sequence is padded at its end alone and none is all padding."""
    import tensorflow as tf
    from keras.src.backend.tensorflow.rnn import _assert_valid_mask

    return lambda strokes: _assert_valid_mask(tf.constant(np.any(np.asarray(strokes) != 0, axis=-1)))


def test_touching_strokes_drawn_backwards_or_reordered_never_read_as_padding():
    """A stroke drawn backwards that ends where the one before it ends, or reordered to start where another
    ends: the pen's move between them is (0, 0) with the pen down, which the models' mask would read as
    padding in the middle of a sketch (Keras's cuDNN LSTM/GRU refuses that batch)."""
    import tensorflow as tf

    from pipeline.features import Augmentation, augment_rows, pad_batch

    # (1, 0) -> (2, 0), then (2, 2) -> (2, 0): backwards, the second stroke starts where the first ends
    backwards = np.array([[1, 0, 0], [1, 0, 1], [0, 2, 0], [0, -2, 1]], np.float32)
    # (1, 0) -> (2, 0), (5, 5) -> (6, 6), (2, 0) -> (3, 3): the third after the first starts where it ends
    reordered = np.array([[1, 0, 0], [1, 0, 1], [3, 5, 0], [1, 1, 1], [-4, -6, 0], [1, 3, 1]], np.float32)
    check = _cudnn_mask_check()
    for sketch, kind in ((backwards, "reverse_strokes"), (reordered, "shuffle_strokes")):
        rows, lengths = np.tile(sketch, (60, 1)), np.full(60, len(sketch))
        moved, new_lengths = augment_rows(rows, lengths, Augmentation(**{kind: 0.5}), np.random.default_rng(0))
        assert np.array_equal(new_lengths, lengths)
        parts = np.split(moved, np.cumsum(lengths)[:-1])
        still = sum(int(np.sum(np.all(np.abs(part[1:, :2]) < 1e-3, axis=1))) for part in parts)
        assert still >= 5, kind  # the case happened: points where the pen did not move...
        assert not np.any(np.all(moved == 0, axis=1)), kind  # ...and none of them reads as padding
        check(pad_batch(parts))
    with_zero = np.tile(backwards, (2, 1))
    with_zero[2] = 0.0  # a move of nothing in the middle of a sketch: what cuDNN refuses
    with pytest.raises(tf.errors.InvalidArgumentError, match="right-padded"):
        check(pad_batch([with_zero[:4], with_zero[4:]]))


def test_augmented_training_batches_pass_keras_cudnn_mask_check(tiny_features):
    """Every training batch, with every kind of augmentation at full strength, passes the check Keras runs
    before its cuDNN LSTM/GRU kernel (its default on a GPU; a CPU never runs the check)."""
    from pipeline.features import Augmentation, make_dataset

    every = Augmentation(scale=0.3, rotation=30, jitter=0.05, stroke_dropout=0.5, reverse_strokes=0.5,
                         point_dropout=0.5, shuffle_strokes=0.5)  # fmt: skip
    check = _cudnn_mask_check()
    dataset = make_dataset(tiny_features, "train", batch_size=16, shuffle=True, augmentation=every)
    batches = 0
    for _ in range(2):  # two epochs: each draws new augmentation
        for strokes, _ in dataset:
            check(strokes)
            batches += 1
    assert batches == 2 * int(dataset.cardinality())


def test_augmentation_reaches_training_batches_only_and_is_reproducible(tiny_features):
    from pipeline.features import Augmentation, BlockBatches

    def first_block(augmentation, seed=0):
        batches = BlockBatches(tiny_features, "train", 16, shuffle=True, seed=seed, bucket_boundaries=(10, 20),
                               augmentation=augmentation)  # fmt: skip
        return next(iter(batches.blocks()))

    plain = first_block(None)
    augmented = first_block(Augmentation(scale=0.1, rotation=10, jitter=0.01))
    assert np.array_equal(plain[1], augmented[1]) and np.array_equal(plain[2], augmented[2])
    assert not np.allclose(plain[0], augmented[0])
    again = first_block(Augmentation(scale=0.1, rotation=10, jitter=0.01))
    assert np.array_equal(augmented[0], again[0])  # seeded by seed and epoch


def test_training_config_passes_augmentation_only_when_asked(dataset_settings):
    from pipeline.stages.training import training_config

    assert training_config(dataset_settings, "lstm").augmentation is None
    config = training_config(
        dataset_settings.replace(
            augment_rotation=15.0,
            augment_stroke_dropout=0.1,
            augment_reverse_strokes=0.2,
            augment_point_dropout=0.3,
            augment_shuffle_strokes=0.4,
        ),
        "lstm",
    )
    assert config.augmentation.rotation == 15.0 and config.augmentation.stroke_dropout == 0.1
    assert config.augmentation.reverse_strokes == 0.2 and config.augmentation.point_dropout == 0.3
    assert config.augmentation.shuffle_strokes == 0.4
    assert config.as_params()["augment_rotation"] == 15.0


def test_a_validation_sample_is_a_fixed_subset_and_the_same_every_epoch(tiny_features):
    from pipeline.features import BlockBatches, make_dataset

    whole = BlockBatches(tiny_features, "valid", batch_size=8, bucket_boundaries=None)
    sample = BlockBatches(tiny_features, "valid", batch_size=8, bucket_boundaries=None, seed=4, sample=10)
    assert len(sample.labels) == 10 and len(sample) == 2
    # each sampled sketch is one of the split's, rows and label together
    starts = whole.starts.tolist()
    for start, length, label in zip(sample.starts, sample.lengths, sample.labels, strict=True):
        at = starts.index(int(start))
        assert whole.lengths[at] == length and whole.labels[at] == label
    again = BlockBatches(tiny_features, "valid", batch_size=8, bucket_boundaries=None, seed=4, sample=10)
    assert np.array_equal(again.starts, sample.starts)
    other = BlockBatches(tiny_features, "valid", batch_size=8, bucket_boundaries=None, seed=5, sample=10)
    assert not np.array_equal(other.starts, sample.starts)
    larger = BlockBatches(tiny_features, "valid", batch_size=8, bucket_boundaries=None, sample=10_000)
    assert len(larger.labels) == len(whole.labels)
    dataset = make_dataset(tiny_features, "valid", 8, seed=4, sample=10)
    first = np.sort(np.concatenate([labels.numpy() for _, labels in dataset]))
    second = np.sort(np.concatenate([labels.numpy() for _, labels in dataset]))
    assert np.array_equal(first, second) and np.array_equal(first, np.sort(sample.labels))


def test_a_repeated_training_set_runs_pass_after_pass_each_a_new_shuffle_of_the_whole_split(tiny_features):
    from pipeline.features import BlockBatches, make_dataset

    batches = BlockBatches(tiny_features, "train", 16, shuffle=True, seed=2, bucket_boundaries="auto")
    per_pass = len(batches)
    dataset = make_dataset(tiny_features, "train", 16, shuffle=True, seed=2, repeat=True)
    served = [labels.numpy() for _, labels in dataset.take(3 * per_pass + 1)]
    assert len(served) == 3 * per_pass + 1  # runs on past the end of a pass
    passes = [np.concatenate(served[i * per_pass : (i + 1) * per_pass]) for i in range(3)]
    for labels in passes:  # every pass serves the whole split once
        assert np.array_equal(np.sort(labels), np.sort(batches.labels))
    assert not np.array_equal(passes[0], passes[1])
