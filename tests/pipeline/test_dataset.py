import numpy as np

from pipeline.dataset import SketchRecord, open_split, read_info, write_dataset


def _records(offset: float = 0.0):
    rng = np.random.default_rng(0)
    for i in range(6):
        strokes = rng.integers(-5, 5, size=(3 + i, 3)).astype(np.float32) + offset
        yield SketchRecord(("train", "valid", "test")[i % 3], i % 2, f"f.npz:x[{i}]", strokes)


def test_write_and_read_back(tmp_path):
    folder = write_dataset(tmp_path, "toy", "synthetic", ["a", "b"], _records())
    info = read_info(folder)
    assert info.classes == ["a", "b"]
    assert info.counts == {"train": {"a": 1, "b": 1}, "valid": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}}
    assert info.num_sketches == 6
    train = open_split(folder, "train")
    originals = [r for r in _records() if r.split == "train"]
    assert len(train) == 2
    for i, record in enumerate(originals):
        np.testing.assert_array_equal(train.sketch(i), record.strokes)
        assert train.ids[i] == record.record_id
    assert train.lengths().tolist() == [len(r.strokes) for r in originals]


def test_fingerprint_follows_content(tmp_path):
    a = write_dataset(tmp_path / "1", "toy", "synthetic", ["a", "b"], _records())
    b = write_dataset(tmp_path / "2", "toy", "synthetic", ["a", "b"], _records())
    c = write_dataset(tmp_path / "3", "toy", "synthetic", ["a", "b"], _records(offset=1.0))
    assert read_info(a).fingerprint == read_info(b).fingerprint
    assert read_info(a).fingerprint != read_info(c).fingerprint
    assert a.name == b.name != c.name


def test_rewriting_the_same_content_reuses_the_folder(tmp_path):
    first = write_dataset(tmp_path, "toy", "synthetic", ["a", "b"], _records())
    second = write_dataset(tmp_path, "toy", "synthetic", ["a", "b"], _records())
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
