"""What a run prints and writes: results table, comparison CSV, winner note, validation summary."""

import csv

from pipeline.promotion import PromotionDecision
from pipeline.report import (
    ArchitectureResult,
    results_table,
    validation_markdown,
    winner_markdown,
    write_comparison_csv,
)


def _row(architecture: str, accuracy: float, version: str) -> ArchitectureResult:
    return ArchitectureResult(
        architecture, accuracy, accuracy + 0.1, accuracy - 0.05, 12.34, 5, 50952, 2.44, "r", version
    )


def test_the_table_is_aligned_and_best_first():
    table = results_table([_row("lstm", 0.5, "1"), _row("wavenet", 0.75, "2")]).splitlines()
    assert table[0].split()[:3] == ["architecture", "test", "acc"]
    assert set(table[1]) == {"-", " "}
    assert table[2].split() == ["wavenet", "0.7500", "0.8500", "0.7000", "12.3", "5", "50,952", "2.4", "2"]
    assert table[3].startswith("lstm ")
    assert len({len(line) for line in table}) == 1


def test_the_comparison_csv_has_every_field_best_first(tmp_path):
    path = write_comparison_csv([_row("lstm", 0.5, "1"), _row("gru", 0.6, "2")], tmp_path / "out" / "c.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["architecture"] for r in rows] == ["gru", "lstm"]
    assert rows[0]["model_version"] == "2" and float(rows[0]["test_accuracy"]) == 0.6


def test_the_winner_note_says_who_won_and_what_the_gate_did():
    decision = PromotionDecision("2", 0.6, "1", 0.4, 0.012, "champion", "accuracy gain +0.2000", "abc/test")
    note = winner_markdown([_row("lstm", 0.5, "1"), _row("gru", 0.6, "2")], decision, "m")
    assert note.startswith("# gru wins this run\n")
    assert "Runner-up: lstm at 0.5000 (+0.1000 for the winner)" in note
    assert "m version 2 -> `@champion`: accuracy gain +0.2000" in note
    assert "0.6000 vs 0.4000, McNemar p=0.012" in note


def test_the_validation_summary_counts_every_record(tiny_report):
    text = validation_markdown(tiny_report)
    assert text.startswith(f"# Validation of `{tiny_report.dataset_dir.split('/')[-1]}`")
    assert f"{tiny_report.records_in} records in: {tiny_report.accepted} accepted, 0 quarantined" in text
    assert "circle 60, square 60, triangle 60, star 60" in text
