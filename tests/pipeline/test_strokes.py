import pickle
import zipfile

import numpy as np
import pytest

from pipeline.strokes import (
    StrokeFormatError,
    load_sketchrnn_npz,
    polylines_to_stroke3,
    quantize_stroke3,
    simplify_rdp,
    stroke3_to_polylines,
    write_sketchrnn_npz,
)


def test_polylines_round_trip_through_stroke3():
    strokes = [np.array([[10.0, 10], [20, 15], [30, 10]]), np.array([[5.0, 40], [6, 60]])]
    sketch = polylines_to_stroke3(strokes)
    assert sketch.shape == (5, 3)
    assert sketch[:, 2].tolist() == [0, 0, 1, 0, 1]
    back = stroke3_to_polylines(sketch)
    assert len(back) == 2
    for original, restored in zip(strokes, back, strict=True):
        np.testing.assert_allclose(restored, original)


def test_quantize_does_not_drift():
    rng = np.random.default_rng(0)
    sketch = np.column_stack([rng.uniform(-3, 3, 500), rng.uniform(-3, 3, 500), np.zeros(500)])
    quantized = quantize_stroke3(sketch)
    assert quantized.dtype == np.int16
    drift = np.abs(np.cumsum(quantized[:, :2], axis=0) - np.cumsum(sketch[:, :2], axis=0))
    assert drift.max() <= 0.5


def test_rdp_keeps_corners_and_drops_collinear_points():
    line = np.column_stack([np.linspace(0, 10, 11), np.zeros(11)])
    corner = np.vstack([line, [[10, 10]]])
    simplified = simplify_rdp(corner, epsilon=0.5)
    assert simplified.tolist() == [[0, 0], [10, 0], [10, 10]]


def test_npz_round_trip(tmp_path):
    sketches = [np.array([[1, 2, 0], [3, -4, 1]], dtype=np.int16), np.array([[0, 0, 1]], dtype=np.int16)]
    path = tmp_path / "cat.npz"
    write_sketchrnn_npz(path, {"train": sketches, "valid": sketches[:1], "test": []})
    loaded = load_sketchrnn_npz(path)
    assert set(loaded) == {"train", "valid", "test"}
    assert len(loaded["test"]) == 0
    for a, b in zip(sketches, loaded["train"], strict=True):
        np.testing.assert_array_equal(a, b)


class _Exploit:
    """Unpickled, it would create the file at ``marker``."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_npz_with_a_foreign_pickle_is_refused_and_nothing_runs(tmp_path):
    target = tmp_path / "evil.npz"
    marker = tmp_path / "pwned"
    column = np.empty(2, dtype=object)
    column[:] = [np.zeros((2, 3), np.int16), _Exploit(str(marker))]
    np.savez(target, train=column)
    with pytest.raises(StrokeFormatError, match=r"evil\.npz.*refused to load global .*open"):
        load_sketchrnn_npz(target)
    assert not marker.exists()


def test_truncated_npz_names_the_file(tmp_path):
    path = tmp_path / "dog.npz"
    write_sketchrnn_npz(path, {"train": [np.zeros((3, 3), np.int16)] * 5})
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(StrokeFormatError, match=r"dog\.npz"):
        load_sketchrnn_npz(path)


def test_an_npz_with_arrays_that_are_not_splits_is_refused_by_name_not_half_read(tmp_path):
    """A file whose training sketches sit under another name would lose them unseen and uncounted."""
    sketches = np.empty(2, dtype=object)
    sketches[:] = [np.array([[1, 2, 1]], np.int16)] * 2
    np.savez(tmp_path / "cat.npz", training=sketches, valid=sketches, test=sketches)
    with pytest.raises(StrokeFormatError, match=r"cat\.npz: holds 'training', not one of the splits train, valid"):
        load_sketchrnn_npz(tmp_path / "cat.npz")
    np.savez(tmp_path / "none.npz", strokes=sketches)
    with pytest.raises(StrokeFormatError, match=r"none\.npz: holds 'strokes'"):
        load_sketchrnn_npz(tmp_path / "none.npz")


def test_record_of_wrong_shape_names_split_and_index(tmp_path):
    path = tmp_path / "owl.npz"
    column = np.empty(2, dtype=object)
    column[:] = [np.zeros((2, 3), np.int16), np.zeros((4, 2), np.int16)]
    with zipfile.ZipFile(path, "w") as archive, archive.open("train.npy", "w") as member:
        np.lib.format.write_array(member, column, allow_pickle=True)
    with pytest.raises(StrokeFormatError, match=r"owl\.npz: record train\[1\]"):
        load_sketchrnn_npz(path)


def test_pickle_module_is_not_used_unrestricted():
    # the restricted unpickler refuses anything but numpy reconstruction, even builtins
    import io

    from pipeline.strokes import _NumpyOnlyUnpickler

    with pytest.raises(pickle.UnpicklingError):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(print))).load()


def test_flat_loading_matches_record_by_record(tmp_path):
    from pipeline.strokes import load_sketchrnn_flat

    rng = np.random.default_rng(0)
    sketches = [rng.integers(-50, 50, (int(rng.integers(1, 20)), 3)).astype(np.int16) for _ in range(30)]
    write_sketchrnn_npz(tmp_path / "cat.npz", {"train": sketches, "test": []})
    flat = load_sketchrnn_flat(tmp_path / "cat.npz", limit=25)
    rows, lengths, total = flat["train"]
    assert total == 30 and lengths.tolist() == [len(s) for s in sketches[:25]]
    assert np.array_equal(rows, np.concatenate(sketches[:25]))
    assert flat["test"][2] == 0 and flat["test"][0].shape == (0, 3)
    # sketches of one length saved as one (n, points, 3) array, as np.savez does with a plain list
    np.savez(tmp_path / "same.npz", train=np.stack([s[:1] for s in sketches]))
    rows, lengths, total = load_sketchrnn_flat(tmp_path / "same.npz")["train"]
    assert lengths.tolist() == [1] * 30 and np.array_equal(rows, np.concatenate([s[:1] for s in sketches]))


def test_flat_loading_names_the_bad_record(tmp_path):
    from pipeline.strokes import load_sketchrnn_flat

    column = np.empty(3, dtype=object)
    column[:] = [np.zeros((4, 3), np.int16), np.zeros((4, 3), np.int16), np.zeros((4, 2), np.int16)]
    np.savez(tmp_path / "bad.npz", train=column)
    with pytest.raises(StrokeFormatError, match=r"bad\.npz: record train\[2\] is not an \(n, 3\) numeric array"):
        load_sketchrnn_flat(tmp_path / "bad.npz")
