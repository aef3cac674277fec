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
