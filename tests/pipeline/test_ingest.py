"""Ingest: choosing classes and reading each source into a canonical dataset, and its failure paths."""

import numpy as np
import pytest

from pipeline.dataset import read_info
from pipeline.ingest import ingest, select_classes
from pipeline.strokes import StrokeFormatError, write_sketchrnn_npz
from tests.conftest import tiny_settings


def test_named_classes_must_exist_and_be_named_once():
    available = ["cat", "dog", "The Eiffel Tower"]
    assert select_classes(available, ("The Eiffel Tower", "cat"), None) == ["The Eiffel Tower", "cat"]
    with pytest.raises(ValueError, match="unknown class unicorn; available: cat, dog, The Eiffel Tower"):
        select_classes(available, ("cat", "unicorn"), None)
    with pytest.raises(ValueError, match="class cat named twice"):
        select_classes(available, ("cat", "cat"), None)


def test_a_sketchrnn_folder_is_read_with_all_its_classes_by_default(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("ant", "bee", "cat"):
        splits = {split: [rng.integers(-9, 9, (5, 3)).astype(np.int16) for _ in range(n)]
                  for split, n in (("train", 4), ("valid", 1), ("test", 2))}  # fmt: skip
        write_sketchrnn_npz(tmp_path / "raw" / f"{name}.npz", splits)
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db").replace(
        source="sketchrnn", data_dir=str(tmp_path / "raw"), num_classes=None
    )
    info = read_info(ingest(settings))
    assert info.classes == ["ant", "bee", "cat"]
    assert info.counts["train"] == {"ant": 4, "bee": 4, "cat": 4} and info.num_sketches == 21
    capped = read_info(ingest(settings.replace(max_per_class=1, classes=("cat", "bee"))))
    assert capped.classes == ["cat", "bee"]
    assert capped.counts == {split: {"cat": 1, "bee": 1} for split in ("train", "valid", "test")}


def test_the_same_settings_give_the_same_dataset_folder(tmp_path):
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db", num_classes=2)
    assert ingest(settings) == ingest(settings)


@pytest.mark.parametrize("source", ["sketchrnn", "ndjson", "tfrecord"])
def test_a_missing_or_empty_folder_is_one_error_naming_it(tmp_path, source):
    empty = tmp_path / "empty"
    empty.mkdir()
    base = tiny_settings(tmp_path / "work", tmp_path / "unused.db")
    for folder, message in ((tmp_path / "missing", "no such folder"), (empty, "holds no")):
        with pytest.raises(StrokeFormatError, match=f"{folder}: {message}"):
            ingest(base.replace(source=source, data_dir=str(folder)))


def test_reading_ahead_in_a_helper_process_writes_the_same_dataset(tmp_path, monkeypatch):
    """Large class files are read by a second process while the first writes: same folder, same arrays."""
    import pipeline.ingest as ingest_module
    from pipeline.dataset import open_split

    rng = np.random.default_rng(1)
    for name in ("ant", "bee", "cat"):
        sketches = [rng.integers(-9, 9, (int(rng.integers(2, 30)), 3)).astype(np.int16) for _ in range(50)]
        write_sketchrnn_npz(tmp_path / "raw" / f"{name}.npz", {"train": sketches[:40], "test": sketches[40:]})
    settings = tiny_settings(tmp_path / "inline", tmp_path / "unused.db").replace(
        source="sketchrnn", data_dir=str(tmp_path / "raw"), num_classes=None, max_per_class=30
    )
    inline = ingest(settings)
    monkeypatch.setattr(ingest_module, "READ_AHEAD_FROM_BYTES", 0)
    ahead = ingest(settings.replace(work_dir=str(tmp_path / "ahead")))
    assert inline.name == ahead.name  # named after the content
    assert read_info(ahead).skipped == {"over max_per_class in train": 30}
    for split in ("train", "test"):
        a, b = open_split(inline, split), open_split(ahead, split)
        assert np.array_equal(np.asarray(a.strokes), np.asarray(b.strokes))
        assert np.array_equal(a.labels, b.labels) and list(a.ids) == list(b.ids)
    (tmp_path / "raw" / "bee.npz").write_bytes(b"PK\x03\x04 not a zip")  # an error in the helper reaches the caller
    with pytest.raises(StrokeFormatError, match=r"bee\.npz: not a readable sketch-rnn npz file"):
        ingest(settings.replace(work_dir=str(tmp_path / "broken")))


def test_reading_ndjson_files_in_helper_processes_writes_the_same_dataset(tmp_path, monkeypatch):
    """Class files read by processes of their own give the records one process gives, in the same order:
    the same dataset folder (named after its content), the same quarantine, the same counts."""
    import gzip
    import json

    import pipeline.ingest as ingest_module
    from pipeline.dataset import open_split
    from pipeline.quickdraw_formats import write_ndjson
    from pipeline.synthetic import draw_sketch

    rng = np.random.default_rng(2)
    data = tmp_path / "data"
    for index, name in enumerate(("circle", "square", "star", "triangle")):
        sketches = [draw_sketch(name, rng) for _ in range(40)]
        path = write_ndjson(data / f"{name}.ndjson", name, sketches, raw=index % 2 == 1, first_key=1000 * index)
        with open(path, "a") as lines:  # a broken line, an unrecognised drawing, a repeated key in each file
            lines.write(json.dumps({"word": name})[:-1] + ', "drawing": [[[1, 2\n')
            unrecognised = {"word": name, "recognized": False, "key_id": "x", "drawing": [[[0, 5], [0, 5]]]}
            lines.write(json.dumps(unrecognised) + "\n")
            lines.write(path.read_text().splitlines()[0] + "\n")
    (data / "star.ndjson").write_bytes(gzip.compress((data / "star.ndjson").read_bytes()))  # read through gzip
    settings = tiny_settings(tmp_path / "inline", tmp_path / "unused.db").replace(
        source="ndjson", data_dir=str(data), num_classes=None, max_per_class=25
    )
    files = {name: data / f"{name}.ndjson" for name in ("circle", "square", "star", "triangle")}
    assert ingest_module.ndjson_workers(files) == 1  # small files are read in this process
    inline = ingest(settings)
    monkeypatch.setattr(ingest_module, "READ_AHEAD_FROM_BYTES", 0)
    monkeypatch.setattr(ingest_module.os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert ingest_module.ndjson_workers(files) == 3  # a process per core, at most one per file
    submitted = []

    class WatchedPool(ingest_module.ProcessPoolExecutor):  # the real pool, its submissions counted
        def submit(self, function, *args, **kwargs):
            submitted.append(args[0].name)
            return super().submit(function, *args, **kwargs)

    monkeypatch.setattr(ingest_module, "ProcessPoolExecutor", WatchedPool)
    apart = ingest(settings.replace(work_dir=str(tmp_path / "apart")))
    assert submitted == ["circle.ndjson", "square.ndjson", "star.ndjson", "triangle.ndjson"]
    assert inline.name == apart.name  # the same content, in the same order
    info = read_info(apart)
    assert info.skipped == read_info(inline).skipped and info.skipped["not recognized"] == 4
    assert info.rejected == {"not JSON": 4, "duplicate key_id": 4}
    assert (apart / "ingest_quarantine.jsonl").read_text() == (inline / "ingest_quarantine.jsonl").read_text()
    for split in ("train", "valid", "test"):
        a, b = open_split(inline, split), open_split(apart, split)
        assert np.array_equal(np.asarray(a.strokes), np.asarray(b.strokes)) and list(a.ids) == list(b.ids)
    (data / "square.ndjson").unlink()
    (data / "square.ndjson").mkdir()  # refused by name before any helper process starts
    with pytest.raises(StrokeFormatError, match=r"square\.ndjson: not a regular file"):
        ingest(settings.replace(work_dir=str(tmp_path / "broken")))
