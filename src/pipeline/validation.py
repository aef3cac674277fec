"""Data validation with Great Expectations over a per-sketch table, with a quarantine for failures.

Great Expectations is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.dataset import open_split, read_info
from pipeline.files import published_dir
from pipeline.strokes import SPLITS


class DataValidationError(RuntimeError):
    """Too large a share of the sketches failed validation."""


@dataclasses.dataclass(frozen=True)
class ValidationReport:
    """The outcome of validating one dataset: counts, failures per expectation and where they went."""

    dataset_dir: str
    output_dir: str
    records_in: int
    accepted: int
    quarantined: int
    skipped: dict[str, int]
    failures: dict[str, int]
    class_counts: dict[str, int]
    class_balance_ok: bool
    invalid_fraction: float
    success: bool

    @property
    def quarantine_path(self) -> Path:
        """Return the JSON-lines file of quarantined sketches."""
        return Path(self.output_dir) / "quarantine.jsonl"

    def accepted_indices(self, split: str) -> np.ndarray:
        """Return the indices of the sketches of ``split`` that passed validation."""
        return np.load(Path(self.output_dir) / f"{split}_accepted.npy")


def _per_sketch(rows: np.ndarray, offsets: np.ndarray, reducer: np.ufunc, empty) -> np.ndarray:
    """Return ``reducer`` over each sketch's rows (``empty`` for a sketch without rows)."""
    lengths = np.diff(offsets)
    if len(rows) == 0:
        return np.full(len(lengths), empty)
    reduced = reducer.reduceat(rows, np.minimum(offsets[:-1], len(rows) - 1))
    return np.where(lengths > 0, reduced, empty)


def sketch_table(dataset_dir: Path) -> pd.DataFrame:
    """Return one row per sketch: split, row, id, label, point count, finiteness, pen values, largest step."""
    info = read_info(dataset_dir)
    frames = []
    for split in SPLITS:
        arrays = open_split(dataset_dir, split)
        if len(arrays) == 0:
            continue
        strokes = np.asarray(arrays.strokes)
        offsets = np.asarray(arrays.offsets)
        finite_rows = np.isfinite(strokes).all(axis=1)
        pen_rows = np.isin(strokes[:, 2], (0.0, 1.0))
        magnitude = np.where(np.isfinite(strokes[:, :2]), np.abs(strokes[:, :2]), np.inf).max(axis=1, initial=0)
        lengths = np.diff(offsets)

        labels = np.asarray(arrays.labels)
        names = np.array([*info.classes, "<unknown>"])[
            np.where((labels >= 0) & (labels < len(info.classes)), labels, -1)
        ]
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "row": np.arange(len(lengths)),
                    "id": np.asarray(arrays.ids),
                    "label": names,
                    "n_points": lengths,
                    "finite": _per_sketch(finite_rows, offsets, np.logical_and, True),
                    "pen_valid": _per_sketch(pen_rows, offsets, np.logical_and, True),
                    "max_abs_delta": _per_sketch(magnitude, offsets, np.maximum, 0.0),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _expectations(classes: list[str], min_points: int, max_points: int, max_abs_delta: float) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        e.ExpectColumnValuesToBeBetween(column="n_points", min_value=min_points, max_value=max_points),
        e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="pen_valid", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="max_abs_delta", min_value=0, max_value=max_abs_delta),
        e.ExpectColumnValuesToBeUnique(column="id"),
    ]


def run_expectations(table: pd.DataFrame, expectations: list) -> list[dict]:
    """Run expectations over the table in a fresh ephemeral GX context; return every failing row.

    Returns:
        One dict per failing (row, expectation): split, row, id, expectation, column, value.
    """
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    batch = context.data_sources.add_pandas("sketches").add_dataframe_asset("per_sketch")
    suite = context.suites.add(gx.ExpectationSuite(name="sketch_quality", expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(
            name="sketch_quality", data=batch.add_batch_definition_whole_dataframe("all"), suite=suite
        )
    )
    result = definition.run(
        batch_parameters={"dataframe": table},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": ["split", "row", "id"]},
    )
    failures = []
    for outcome in result.results:
        if outcome.success:
            continue
        column = outcome.expectation_config.kwargs["column"]
        for row in outcome.result.get("unexpected_index_list") or []:
            value = row.get(column)
            failures.append(
                {
                    "split": row["split"],
                    "row": int(row["row"]),
                    "id": str(row["id"]),
                    "expectation": outcome.expectation_config.type,
                    "column": column,
                    "value": value.item() if isinstance(value, np.generic) else value,
                }
            )
    return failures


def median_class_count(class_counts: dict[str, int]) -> float:
    """Return the median number of training sketches per class (0 without classes)."""
    return float(np.median(list(class_counts.values()))) if class_counts else 0.0


def class_balance_failures(class_counts: dict[str, int], max_ratio: float) -> list[dict]:
    """Return the classes with fewer than ``1/max_ratio`` of the median class's training sketches (via GX).

    Measured against the median, not the largest class: real Quick, Draw! classes differ in size
    (in the raw sample, ``line`` has ten times the drawings of ``beard``), and one large class must
    not fail a dataset whose classes are otherwise alike; a starved class still does.
    """
    import great_expectations as gx

    typical = median_class_count(class_counts)
    table = pd.DataFrame(
        {
            "split": "train",
            "row": range(len(class_counts)),
            "id": list(class_counts),
            "count": list(class_counts.values()),
        }
    )
    expectation = gx.expectations.ExpectColumnValuesToBeBetween(column="count", min_value=typical / max_ratio)
    return run_expectations(table, [expectation])


def validate_dataset(
    dataset_dir: Path,
    output_dir: Path,
    min_points: int = 2,
    max_points: int = 1000,
    max_abs_delta: float = 1000.0,
    max_invalid_fraction: float = 0.05,
    max_class_imbalance: float = 10.0,
) -> ValidationReport:
    """Validate a dataset folder; write accepted indices, the quarantine and a summary to ``output_dir``.

    The quarantine holds the records ingest could not read and the sketches that failed an
    expectation; records in = accepted + quarantined (+ records skipped on purpose, counted by reason).

    Raises:
        DataValidationError: the share of quarantined records exceeds ``max_invalid_fraction``, or a
            class has fewer than ``1/max_class_imbalance`` of the median class's training sketches
            (the quarantine and summary are written first, so the cause can be read).
    """
    info = read_info(dataset_dir)
    output_dir = Path(output_dir)
    with published_dir(output_dir) as staging:  # concurrent runs never read a half-written report
        report = _validate_into(
            staging, output_dir, info, dataset_dir, min_points, max_points, max_abs_delta, max_invalid_fraction,
            max_class_imbalance,
        )  # fmt: skip
    if report.invalid_fraction > max_invalid_fraction:
        raise DataValidationError(
            f"{report.invalid_fraction:.1%} of {report.records_in} records in {info.name} failed validation "
            f"(limit {max_invalid_fraction:.1%}); see {report.quarantine_path}"
        )
    if not report.class_balance_ok:
        typical = median_class_count(report.class_counts)
        small = [f"{name} ({n})" for name, n in report.class_counts.items() if n < typical / max_class_imbalance]
        shown = ", ".join(small[:10]) + (f" and {len(small) - 10} more" if len(small) > 10 else "")
        raise DataValidationError(
            f"classes out of balance in {info.name}: {shown} have under 1/{max_class_imbalance:g} of the "
            f"median class's {typical:g} training sketches; see {report.output_dir}/summary.json"
        )
    return report


def _validate_into(
    staging: Path,
    output_dir: Path,
    info,
    dataset_dir: Path,
    min_points: int,
    max_points: int,
    max_abs_delta: float,
    max_invalid_fraction: float,
    max_class_imbalance: float,
) -> ValidationReport:
    """Run the expectations and write the outcome into ``staging``; the report names ``output_dir``."""
    table = sketch_table(dataset_dir)
    failures = run_expectations(table, _expectations(info.classes, min_points, max_points, max_abs_delta))

    bad_rows = {(f["split"], f["row"]) for f in failures}
    for split in SPLITS:
        count = int((table["split"] == split).sum())
        keep = np.array([i for i in range(count) if (split, i) not in bad_rows], dtype=np.int64)
        np.save(staging / f"{split}_accepted.npy", keep)
    with open(staging / "quarantine.jsonl", "w") as sink:
        ingest_quarantine = Path(dataset_dir) / "ingest_quarantine.jsonl"
        if ingest_quarantine.exists():
            for line in ingest_quarantine.read_text().splitlines():
                sink.write(json.dumps({"dataset": info.name, "stage": "ingest", **json.loads(line)}) + "\n")
        for failure in failures:
            sink.write(json.dumps({"dataset": info.name, "stage": "validate", **failure}, default=str) + "\n")

    per_expectation: dict[str, int] = {f"ingest: {reason}": n for reason, n in info.rejected.items()}
    for failure in failures:
        per_expectation[failure["expectation"]] = per_expectation.get(failure["expectation"], 0) + 1
    class_counts = {name: n for name, n in info.counts["train"].items() if name in info.classes}
    imbalanced = class_balance_failures(class_counts, max_class_imbalance) if class_counts else []
    records_in = len(table) + info.num_rejected
    quarantined = len(bad_rows) + info.num_rejected
    fraction = quarantined / max(records_in, 1)
    report = ValidationReport(
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        records_in=records_in,
        accepted=records_in - quarantined,
        quarantined=quarantined,
        skipped=dict(info.skipped),
        failures=per_expectation,
        class_counts=class_counts,
        class_balance_ok=not imbalanced,
        invalid_fraction=fraction,
        success=fraction <= max_invalid_fraction and not imbalanced,
    )
    (staging / "summary.json").write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return report


def read_report(output_dir: Path) -> ValidationReport:
    """Return the report that :func:`validate_dataset` wrote to ``output_dir``."""
    return ValidationReport(**json.loads((Path(output_dir) / "summary.json").read_text()))
