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
        2: np.array([[1, 1, 1]], np.float32),  # too few points
        5: np.array([[1, np.inf, 0], [1, 1, 1]], np.float32),  # not finite
        7: np.array([[1, 1, 2], [1, 1, 1]], np.float32),  # pen value 2
        9: np.array([[5000, 1, 0], [1, 1, 1]], np.float32),  # huge step
    }
    folder = _dataset(tmp_path, bad, labels={11: 7}, ids={12: "dup", 13: "dup"})
    report = validate_dataset(folder, tmp_path / "out", max_invalid_fraction=0.5)
    assert report.records_in == 40
    assert report.quarantined == 7
    assert report.accepted + report.quarantined == report.records_in
    lines = [json.loads(line) for line in report.quarantine_path.read_text().splitlines()]
    reasons = {(q["row"], q["expectation"]) for q in lines}
    assert (2, "expect_column_values_to_be_between") in reasons
    assert (5, "expect_column_values_to_be_in_set") in reasons
    assert (7, "expect_column_values_to_be_in_set") in reasons
    assert (9, "expect_column_values_to_be_between") in reasons
    assert (11, "expect_column_values_to_be_in_set") in reasons
    assert {(12, "expect_column_values_to_be_unique"), (13, "expect_column_values_to_be_unique")} <= reasons
    assert all(q["id"] and q["dataset"] == "toy" for q in lines)
    accepted = report.accepted_indices("train")
    assert not {2, 5, 7, 9, 11, 12, 13} & set(accepted.tolist())
    assert len(accepted) + len(report.accepted_indices("test")) == 33


def test_too_many_failures_stop_with_one_clear_message(tmp_path):
    bad = {i: np.array([[1, 1, 1]], np.float32) for i in range(5)}
    folder = _dataset(tmp_path, bad)
    with pytest.raises(DataValidationError, match=r"12\.5% of 40 records .* failed validation \(limit 5\.0%\)"):
        validate_dataset(folder, tmp_path / "out", max_invalid_fraction=0.05)
    assert len((tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()) == 5


def test_clean_synthetic_data_passes(tiny_report):
    assert tiny_report.success and tiny_report.quarantined == 0
    assert tiny_report.records_in == 4 * (60 + 15 + 20)
