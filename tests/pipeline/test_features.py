import numpy as np

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
