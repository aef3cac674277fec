"""The ``quickdraw_sketch_rnn`` TFDS builder, with TFDS's own builder test case, offline."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from pipeline.strokes import write_sketchrnn_npz
from pipeline.tfds_quickdraw import QuickdrawSketchRnn, QuickdrawSketchRnnConfig


def _write_local_files(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for name in ("bee", "cat"):
        splits = {split: [rng.integers(-20, 20, (n, 3)).astype(np.int16) for n in range(3, 3 + count)]
                  for split, count in (("train", 3), ("valid", 1), ("test", 2))}  # fmt: skip
        write_sketchrnn_npz(folder / f"{name}.npz", splits)
    return folder


class QuickdrawSketchRnnLocalTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = QuickdrawSketchRnn
    BUILDER_CONFIG_NAMES_TO_TEST = ["local"]
    SPLITS = {"train": 6, "validation": 2, "test": 4}
    SKIP_CHECKSUMS = True  # nothing is downloaded
    MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False  # the npz reader uses zipfile and its restricted unpickler

    @classmethod
    def setUpClass(cls):
        cls.EXAMPLE_DIR = str(_write_local_files(Path(tempfile.mkdtemp())))
        super().setUpClass()


class QuickdrawSketchRnnSyntheticTest(tfds.testing.DatasetBuilderTestCase):
    DATASET_CLASS = QuickdrawSketchRnn
    BUILDER_CONFIG_NAMES_TO_TEST = [
        QuickdrawSketchRnnConfig(name="synthetic_tiny", num_classes=3, per_split={"train": 4, "valid": 2, "test": 2})
    ]
    SPLITS = {"train": 12, "validation": 6, "test": 6}
    SKIP_CHECKSUMS = True

    @classmethod
    def setUpClass(cls):
        cls.EXAMPLE_DIR = tempfile.mkdtemp()
        super().setUpClass()


def test_tfds_load_works_offline_and_keeps_the_strokes(tmp_path):
    manual = _write_local_files(tmp_path / "manual")
    dataset, info = tfds.load(
        "quickdraw_sketch_rnn/local",
        split="train",
        data_dir=str(tmp_path / "tfds"),
        try_gcs=False,
        with_info=True,
        download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=str(manual))},
    )
    assert info.features["label"].names == ["bee", "cat"]
    examples = {e["key_id"].decode(): e for e in tfds.as_numpy(dataset)}
    assert len(examples) == 6
    from pipeline.strokes import load_sketchrnn_npz

    expected = load_sketchrnn_npz(manual / "cat.npz")["train"][1]
    got = examples["cat/train/1"]
    assert got["strokes"].dtype == np.int16 and got["label"] == 1
    np.testing.assert_array_equal(got["strokes"], expected)


def test_without_a_manual_folder_the_builder_downloads_the_official_files(tmp_path):
    from pipeline.strokes import load_sketchrnn_npz
    from tests.bucket_server import FakeBucket

    files = _write_local_files(tmp_path / "bucket")
    with FakeBucket() as bucket:
        bucket.put("sketchrnn/bee.npz", (files / "bee.npz").read_bytes())
        bucket.put("sketchrnn/The Eiffel Tower.npz", (files / "cat.npz").read_bytes())
        config = QuickdrawSketchRnnConfig(
            name="official_tiny", source="local", classes=("bee", "The Eiffel Tower"), base_url=bucket.url
        )
        builder = QuickdrawSketchRnn(config=config, data_dir=str(tmp_path / "tfds"))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "none")))
        fetched = sorted(r.path for r in bucket.requests)
    assert fetched == ["sketchrnn/The Eiffel Tower.npz", "sketchrnn/bee.npz"]
    assert builder.info.features["label"].names == ["bee", "The Eiffel Tower"]
    examples = {e["key_id"].decode(): e for e in tfds.as_numpy(builder.as_dataset(split="test"))}
    assert len(examples) == 4
    expected = load_sketchrnn_npz(files / "cat.npz")["test"][1]
    np.testing.assert_array_equal(examples["The Eiffel Tower/test/1"]["strokes"], expected)
    assert examples["The Eiffel Tower/test/1"]["label"] == 1


def test_a_second_manual_folder_with_other_files_is_refused_not_answered_with_the_first(tmp_path):
    def prepare(manual):
        builder = QuickdrawSketchRnn(config="local", data_dir=str(tmp_path / "tfds"))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
        return builder

    first = _write_local_files(tmp_path / "first")
    assert len(list(tfds.as_numpy(prepare(first).as_dataset(split="train")))) == 6
    assert len(list(tfds.as_numpy(prepare(first).as_dataset(split="train")))) == 6  # the same folder: reused
    other = _write_local_files(tmp_path / "other")
    (other / "bee.npz").unlink()
    refused = r"was prepared from .*first; .*other holds other files: give it its own data_dir"
    with pytest.raises(ValueError, match=refused):
        prepare(other)


def test_tfds_load_of_a_second_manual_folder_is_refused_and_the_first_still_loads(tmp_path):
    def load(manual):
        return tfds.load(
            "quickdraw_sketch_rnn/local",
            split="train",
            data_dir=str(tmp_path / "tfds"),
            try_gcs=False,
            download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(manual_dir=str(manual))},
        )

    first = _write_local_files(tmp_path / "first")
    assert len(list(tfds.as_numpy(load(first)))) == 6
    other = _write_local_files(tmp_path / "other")
    (other / "bee.npz").unlink()
    with pytest.raises(ValueError, match=r"was prepared from .*first; .*other holds other files: give it its own"):
        load(other)
    assert len(list(tfds.as_numpy(load(first)))) == 6  # the same folder: the prepared data, reused
    labels = {int(e["label"]) for e in tfds.as_numpy(load(first))}
    assert labels == {0, 1}
