import json

import numpy as np
import pytest

from pipeline.dataset import SketchRecord, write_dataset
from pipeline.validation import DataValidationError, sketch_table, validate_dataset


def _good(i: int) -> np.ndarray:
    return np.array([[i % 7, 1, 0], [2, -3, 0], [4, 4, 1]], dtype=np.float32)


def _dataset(tmp_path, bad: dict[int, np.ndarray], labels: dict[int, int] | None = None, ids=None):
    records = []
    for i in range(40):
        strokes = bad.get(i, _good(i))
        label = (labels or {}).get(i, i % 2)
        record_id = (ids or {}).get(i, f"src.npz:train[{i}]")
        records.append(SketchRecord("train" if i < 30 else "test", label, record_id, strokes))
    return write_dataset(tmp_path / "ds", "toy", "synthetic", ["a", "b"], records)


def test_table_describes_each_sketch(tmp_path):
    folder = _dataset(tmp_path, {3: np.array([[np.nan, 0, 1], [1, 1, 1]], np.float32)})
    table = sketch_table(folder)
    assert len(table) == 40
    row = table[(table.split == "train") & (table.row == 3)].iloc[0]
    assert not row.finite and row.n_points == 2
    assert table[table.row == 4].iloc[0].finite


def test_every_bad_sketch_is_quarantined_with_its_reason(tmp_path):
    bad = {
        2: np.array([[1, 1, 1]], np.float32),  # too few points for min_points=2
        5: np.array([[1, np.inf, 0], [1, 1, 1]], np.float32),  # not finite
        7: np.array([[1, 1, 2], [1, 1, 1]], np.float32),  # pen value 2
        9: np.array([[5000, 1, 0], [1, 1, 1]], np.float32),  # huge step
    }
    folder = _dataset(tmp_path, bad, labels={11: 7}, ids={12: "dup", 13: "dup"})
    report = validate_dataset(folder, tmp_path / "out", min_points=2, max_invalid_fraction=0.5)
    assert report.records_in == 40
    assert report.quarantined == 6  # of the two sketches with id "dup", the first is kept
    assert report.accepted + report.quarantined == report.records_in
    lines = [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]
    reasons = {(q["row"], q["expectation"]) for q in lines}
    assert (2, "expect_column_values_to_be_between") in reasons
    assert (5, "expect_column_values_to_be_in_set") in reasons
    assert (7, "expect_column_values_to_be_in_set") in reasons
    assert (9, "expect_column_values_to_be_between") in reasons
    assert (11, "expect_column_values_to_be_in_set") in reasons
    assert (13, "expect_column_values_to_be_null") in reasons
    assert not any(row == 12 for row, _ in reasons)
    assert [q["value"] for q in lines if q["row"] == 13] == ["train[12]"]
    assert all(q["id"] and q["dataset"] == "toy" for q in lines)
    accepted = report.accepted_indices("train")
    assert not {2, 5, 7, 9, 11, 13} & set(accepted.tolist()) and 12 in accepted
    assert len(accepted) + len(report.accepted_indices("test")) == 34


def _outcome(report) -> tuple:
    quarantine = sorted((q["split"], q["row"], q["expectation"], str(q["value"])) for q in _lines(report))
    accepted = {split: report.accepted_indices(split).tolist() for split in ("train", "valid", "test")}
    return report.accepted, report.quarantined, quarantine, accepted


def _lines(report) -> list[dict]:
    return [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]


def test_chunked_validation_matches_one_chunk(tmp_path, monkeypatch):
    """Chunks of 7 rows: duplicates are found across chunks and across splits, and nothing else changes."""
    import pipeline.validation as validation

    bad = {3: np.array([[1, 1, 2]], np.float32), 20: np.array([[1, np.nan, 0], [1, 1, 1]], np.float32)}
    ids = {5: "same", 18: "same", 33: "same", 10: "twice", 36: "twice"}  # 33 and 36 are test sketches
    folder = _dataset(tmp_path, bad, ids=ids)
    whole = _outcome(validate_dataset(folder, tmp_path / "whole", max_invalid_fraction=0.5))
    monkeypatch.setattr(validation, "CHUNK_SKETCHES", 7)
    chunked = validate_dataset(folder, tmp_path / "chunked", max_invalid_fraction=0.5)
    assert _outcome(chunked) == whole
    duplicates = {(q["split"], q["row"]): q["value"] for q in _lines(chunked) if q["column"] == "duplicate_of"}
    assert duplicates == {("train", 18): "train[5]", ("test", 3): "train[5]", ("test", 6): "train[10]"}
    assert chunked.quarantined == 5 and chunked.accepted == 35


def test_a_hash_collision_is_not_a_duplicate(tmp_path, monkeypatch):
    import pipeline.validation as validation

    monkeypatch.setattr(validation, "hash_ids", lambda ids, starts=None: np.zeros(len(ids), dtype=np.uint64))
    folder = _dataset(tmp_path, {}, ids={4: "dup", 9: "dup"})
    report = validate_dataset(folder, tmp_path / "out", max_invalid_fraction=0.5)
    assert [(q["row"], q["value"]) for q in _lines(report)] == [(9, "train[4]")]


def test_hash_ids_tells_ids_apart():
    from pipeline.validation import hash_ids

    ids = np.array([f"cat.ndjson:{i}:{i * 7919}" for i in range(20_000)] + ["a", "b", "ab", "ba", ""])
    hashes = hash_ids(ids)
    assert len(np.unique(hashes)) == len(ids)
    assert (hash_ids(ids[::-1])[::-1] == hashes).all()  # a function of the id alone
    # of the string, not of the array's width (splits' id arrays have their own widths)
    assert (hash_ids(ids.astype("U80")) == hashes).all()
    # from a start on: the part before it does not count
    assert (
        hash_ids(np.array(["x.ndjson:7:123", "y.ndjson:12:123"]), np.array([11, 12]))[0]
        == hash_ids(np.array(["123"]))[0]
    )


def test_hash_sketches_is_a_function_of_each_sketchs_rows_in_order():
    from pipeline.validation import hash_sketches

    a = np.array([[1, 2, 0], [3, 4, 1]], np.float32)
    b = a[::-1].copy()  # the same rows in another order: another drawing
    c = np.array([[1, 2, 0], [3, 4, 1], [0, 1, 1]], np.float32)
    sketches = [a, b, c, a, np.array([[1, 2, 0]], np.float32)]
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in sketches])])
    hashes = hash_sketches(np.concatenate(sketches), offsets)
    assert hashes[0] == hashes[3] and len(set(hashes.tolist())) == 4
    assert hash_sketches(a, np.array([0, 2]))[0] == hashes[0]  # whatever comes before it


def test_too_many_failures_stop_with_one_clear_message(tmp_path):
    bad = {i: np.array([[1, 1, 2]], np.float32) for i in range(5)}  # pen value 2
    folder = _dataset(tmp_path, bad)
    with pytest.raises(DataValidationError) as failed:
        validate_dataset(folder, tmp_path / "out", max_invalid_fraction=0.05)
    assert str(failed.value) == (  # the main reason, how often, and where to look first
        '12.5% of 40 records in toy failed validation (limit 5.0%), most often "expect_column_values_to_be_in_set '
        f'(pen_valid)" (5 records; the first: train sketch src.npz:train[0], pen_valid False); see '
        f"{tmp_path / 'out' / 'quarantine.jsonl'}"
    )
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 5


def test_clean_synthetic_data_passes(tiny_report):
    assert tiny_report.success and tiny_report.quarantined == 0
    assert tiny_report.records_in == 4 * (60 + 15 + 20)
