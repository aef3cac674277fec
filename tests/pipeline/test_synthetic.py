import numpy as np
import pytest

from pipeline.strokes import load_sketchrnn_npz
from pipeline.synthetic import SHAPES, class_names, draw_sketch, write_synthetic_npz


def test_at_least_eight_classes():
    assert len(SHAPES) >= 8
    assert class_names(3) == list(SHAPES)[:3]
    with pytest.raises(ValueError):
        class_names(len(SHAPES) + 1)


@pytest.mark.parametrize("name", list(SHAPES))
def test_every_class_draws_valid_stroke3(name):
    rng = np.random.default_rng(1)
    for _ in range(20):
        sketch = draw_sketch(name, rng)
        assert sketch.dtype == np.int16 and sketch.ndim == 2 and sketch.shape[1] == 3
        assert len(sketch) >= 2
        assert set(np.unique(sketch[:, 2])) <= {0, 1}
        assert sketch[-1, 2] == 1  # the last point ends a stroke
        absolute = np.cumsum(sketch[:, :2], axis=0)
        assert absolute.min() >= -1 and absolute.max() <= 256  # inside the 0-255 box


def test_variation_between_sketches_of_one_class():
    rng = np.random.default_rng(2)
    lengths = {len(draw_sketch("square", rng)) for _ in range(30)}
    assert len(lengths) > 3


def test_files_are_deterministic_for_a_seed(tmp_path):
    per_split = {"train": 5, "valid": 2, "test": 2}
    a = write_synthetic_npz(tmp_path / "a", ["circle", "star"], per_split, seed=7)
    b = write_synthetic_npz(tmp_path / "b", ["circle", "star"], per_split, seed=7)
    c = write_synthetic_npz(tmp_path / "c", ["circle", "star"], per_split, seed=8)
    for pa, pb, pc in zip(a, b, c, strict=True):
        la, lb, lc = load_sketchrnn_npz(pa), load_sketchrnn_npz(pb), load_sketchrnn_npz(pc)
        assert {k: len(v) for k, v in la.items()} == per_split
        for x, y in zip(la["train"], lb["train"], strict=True):
            np.testing.assert_array_equal(x, y)
        assert any(x.shape != z.shape or (x != z).any() for x, z in zip(la["train"], lc["train"], strict=True))


def test_class_draws_the_same_whatever_else_is_selected(tmp_path):
    per_split = {"train": 3, "valid": 1, "test": 1}
    alone = write_synthetic_npz(tmp_path / "a", ["star"], per_split, seed=1)[0]
    among = write_synthetic_npz(tmp_path / "b", ["circle", "star"], per_split, seed=1)[1]
    for x, y in zip(load_sketchrnn_npz(alone)["train"], load_sketchrnn_npz(among)["train"], strict=True):
        np.testing.assert_array_equal(x, y)
