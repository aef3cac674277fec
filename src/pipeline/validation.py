"""Data validation with Great Expectations over a per-sketch table, with a quarantine for failures.

Great Expectations is imported inside the functions: it takes seconds to import.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.dataset import SplitArrays, open_split, read_info
from pipeline.files import published_dir
from pipeline.quickdraw_formats import ndjson_key_starts
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


CHUNK_SKETCHES = 1_000_000  # rows of the per-sketch table validated at once


def _per_sketch(rows: np.ndarray, offsets: np.ndarray, reducer: np.ufunc, empty) -> np.ndarray:
    """Return ``reducer`` over each sketch's rows (``empty`` for a sketch without rows)."""
    lengths = np.diff(offsets)
    if len(rows) == 0:
        return np.full(len(lengths), empty)
    reduced = reducer.reduceat(rows, np.minimum(offsets[:-1], len(rows) - 1))
    return np.where(lengths > 0, reduced, empty)


def hash_ids(ids: np.ndarray, starts: np.ndarray | None = None) -> np.ndarray:
    """Return a 64-bit hash of each string of a unicode array from position ``starts`` (default 0) on
    (FNV-1a over its code points, then a final mix), vectorised over the array: one numpy pass per
    character position. The array's padding is not hashed, so a string hashes the same in any width."""
    ids = np.ascontiguousarray(ids)
    if ids.dtype.kind != "U":
        ids = ids.astype(str)
    width = ids.dtype.itemsize // 4
    hashes = np.full(len(ids), 0xCBF29CE484222325, dtype=np.uint64)
    if width == 0 or len(ids) == 0:
        return hashes
    codes = np.ascontiguousarray(ids.view(np.uint32).reshape(len(ids), width).T)
    for position, code in enumerate(codes):
        mixed = (hashes ^ code) * np.uint64(0x100000001B3)
        hashed = code != 0
        if starts is not None:
            hashed &= starts <= position
        hashes = np.where(hashed, mixed, hashes)
    hashes ^= hashes >> np.uint64(33)
    hashes *= np.uint64(0xFF51AFD7ED558CCD)
    hashes ^= hashes >> np.uint64(33)
    return hashes


def hash_sketches(rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Return a 64-bit hash of each sketch's rows (stroke-3, concatenated; ``offsets`` into them from 0),
    vectorised: each row's three float32 values and its place in its sketch are mixed into one number,
    and a sketch's numbers are summed."""
    lengths = np.diff(offsets)
    bits = np.ascontiguousarray(rows, dtype=np.float32).view(np.uint32).reshape(-1, 3).astype(np.uint64)
    place = (np.arange(len(bits)) - np.repeat(offsets[:-1], lengths)).astype(np.uint64)
    mixed = (
        bits[:, 0] * np.uint64(0x9E3779B97F4A7C15)
        + bits[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)
        + bits[:, 2] * np.uint64(0x165667B19E3779F9)
        + place * np.uint64(0xD6E8FEB86659FD93)
    )
    mixed ^= mixed >> np.uint64(33)
    mixed *= np.uint64(0xFF51AFD7ED558CCD)
    mixed ^= mixed >> np.uint64(29)
    total = np.concatenate([np.zeros(1, np.uint64), np.cumsum(mixed, dtype=np.uint64)])
    return total[offsets[1:]] - total[offsets[:-1]]


def _mix_in_strokes(hashes: np.ndarray, splits: list[tuple[str, SplitArrays]]) -> None:
    """Mix each sketch's strokes (:func:`hash_sketches`) into its hash, in place, for the sketches whose
    hash another sketch shares; the rows of a chunk are read only if it holds such a sketch."""
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    shared = np.zeros(len(hashes), dtype=bool)
    shared[order[1:][same]] = shared[order[:-1][same]] = True
    del order, ordered, same
    done = 0
    for _, arrays in splits:
        for start in range(0, len(arrays), CHUNK_SKETCHES):
            stop = min(start + CHUNK_SKETCHES, len(arrays))
            chosen = shared[done : done + stop - start]
            if chosen.any():
                part = hashes[done : done + stop - start]  # a view: written in place
                part[chosen] ^= hash_sketches(*arrays.rows(start, stop))[chosen]
            done += stop - start


def duplicate_ids(dataset_dir: Path) -> dict[str, dict[int, str]]:
    """Return split -> {row: "split[row]" of the first sketch that is the same drawing} for every repeat.

    The same drawing means the same id; for ndjson, the same ``key_id`` and the same strokes: a drawing
    copied into another class file, under one label or two (the value then also names the first
    record's id: its file and line). A ``key_id`` used again for another drawing is no copy. Over all
    splits at once, in chunks: identities are hashed (8 bytes a sketch held, whatever the ids' length),
    equal hashes are found by sorting, and each candidate is confirmed by comparing the identities
    themselves, so a hash collision never quarantines a sketch. The first occurrence (in split order,
    then row order) is kept; later ones are duplicates.
    """
    by_key_and_strokes = read_info(dataset_dir).source == "ndjson"
    splits = [(split, open_split(dataset_dir, split)) for split in SPLITS]
    hashes = np.empty(sum(len(arrays) for _, arrays in splits), dtype=np.uint64)
    done = 0
    for _, arrays in splits:
        for start in range(0, len(arrays), CHUNK_SKETCHES):
            ids = arrays.id_range(start, min(start + CHUNK_SKETCHES, len(arrays)))
            chunk = hash_ids(ids, ndjson_key_starts(ids)) if by_key_and_strokes else hash_ids(ids)
            hashes[done : done + len(chunk)] = chunk
            done += len(chunk)
    found: dict[str, dict[int, str]] = {split: {} for split in SPLITS}
    if len(hashes) < 2:
        return found
    if by_key_and_strokes:  # the strokes count only where a key_id repeats (real key_ids never do)
        _mix_in_strokes(hashes, splits)
    order = np.argsort(hashes, kind="stable")  # equal hashes side by side, in dataset order
    ordered = hashes[order]
    del hashes  # 16 bytes a sketch held from here on
    repeats = np.flatnonzero(ordered[1:] == ordered[:-1]) + 1
    group_first = np.searchsorted(ordered, ordered[repeats], side="left")
    bounds = np.cumsum([0] + [len(arrays) for _, arrays in splits])

    def locate(position: int) -> tuple[str, SplitArrays, int]:
        which = int(np.searchsorted(bounds, position, side="right")) - 1
        split, arrays = splits[which]
        return split, arrays, position - int(bounds[which])

    def identity_of(arrays: SplitArrays, row: int) -> tuple[str, object]:
        record_id = arrays.id_of(row)
        if not by_key_and_strokes:
            return record_id, record_id
        key = record_id[int(ndjson_key_starts(np.array([record_id]))[0]) :]
        return record_id, (key, arrays.sketch(row).tobytes())

    for place, first in zip(repeats.tolist(), group_first.tolist(), strict=True):
        split, arrays, row = locate(int(order[place]))
        own_id, own = identity_of(arrays, row)
        for earlier in order[first:place].tolist():
            first_split, first_arrays, first_row = locate(earlier)
            first_id, first_identity = identity_of(first_arrays, first_row)
            if first_identity == own:
                where = f"{first_split}[{first_row}]"
                found[split][row] = where if first_id == own_id else f"{where} {first_id}"
                break
    return found


STATS_CHUNK = 50_000  # sketches whose rows are read and reduced at once, within a table chunk (about 25 MB)


def _chunk_table(
    info, split: str, arrays: SplitArrays, start: int, stop: int, duplicates: dict[int, str]
) -> pd.DataFrame:
    """Return rows ``start:stop`` of the per-sketch table of one split (see :func:`sketch_table`)."""
    finite, pen_valid, largest = [], [], []
    for first in range(start, stop, STATS_CHUNK):  # the rows of a table chunk can be gigabytes: in parts
        strokes, offsets = arrays.rows(first, min(first + STATS_CHUNK, stop))
        x, y, pen = strokes.T  # column by column: numpy reductions along a row of 3 are slow
        finite_rows = np.isfinite(x) & np.isfinite(y) & np.isfinite(pen)
        pen_rows = (pen == 0.0) | (pen == 1.0)
        magnitude = np.maximum(np.abs(x), np.abs(y))
        magnitude[~(np.isfinite(x) & np.isfinite(y))] = np.inf
        finite.append(_per_sketch(finite_rows, offsets, np.logical_and, True))
        pen_valid.append(_per_sketch(pen_rows, offsets, np.logical_and, True))
        largest.append(_per_sketch(magnitude, offsets, np.maximum, 0.0))
    labels = arrays.label_range(start, stop)
    known = np.where((labels >= 0) & (labels < len(info.classes)), labels, len(info.classes))
    names = pd.Categorical.from_codes(known, [*info.classes, "<unknown>"])  # a code per row, not a string
    duplicate_of = np.full(stop - start, None, dtype=object)
    for row, first in duplicates.items():
        if start <= row < stop:
            duplicate_of[row - start] = first
    return pd.DataFrame(
        {
            "split": split,
            "row": np.arange(start, stop),
            "label": names,
            "n_points": np.diff(arrays.offset_range(start, stop)),
            "finite": np.concatenate(finite),
            "pen_valid": np.concatenate(pen_valid),
            "max_abs_delta": np.concatenate(largest).astype(np.float64),  # GX is vectorised for float64 only
            "duplicate_of": duplicate_of,
        }
    )


def sketch_tables(dataset_dir: Path, chunk: int | None = None) -> Iterator[pd.DataFrame]:
    """Yield the per-sketch table in chunks of at most ``chunk`` rows (:data:`CHUNK_SKETCHES`), split by split.

    Columns: split, row, id, label, point count, finiteness, pen values, largest step, and
    ``duplicate_of`` (the first sketch that is the same drawing, else None; found over the whole dataset,
    see :func:`duplicate_ids`).
    Memory holds one chunk, whatever the dataset's size.
    """
    chunk = chunk or CHUNK_SKETCHES
    info = read_info(dataset_dir)
    duplicates = duplicate_ids(dataset_dir)
    for split in SPLITS:
        arrays = open_split(dataset_dir, split)
        for start in range(0, len(arrays), chunk):
            yield _chunk_table(info, split, arrays, start, min(start + chunk, len(arrays)), duplicates[split])


def sketch_table(dataset_dir: Path) -> pd.DataFrame:
    """Return the whole per-sketch table (see :func:`sketch_tables`); for small datasets and inspection."""
    return pd.concat(list(sketch_tables(dataset_dir)), ignore_index=True)


def _expectations(classes: list[str], min_points: int, max_points: int, max_abs_delta: float) -> list:
    import great_expectations as gx

    e = gx.expectations
    return [
        e.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        e.ExpectColumnValuesToBeBetween(column="n_points", min_value=min_points, max_value=max_points),
        e.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
        e.ExpectColumnValuesToBeInSet(column="pen_valid", value_set=[True]),
        e.ExpectColumnValuesToBeBetween(column="max_abs_delta", min_value=0, max_value=max_abs_delta),
        e.ExpectColumnValuesToBeNull(column="duplicate_of"),
    ]


class ExpectationRunner:
    """A suite of expectations in an ephemeral GX context, run over one table (or chunk) at a time.

    A failure names its row by ``index_columns`` (which the table must have).
    """

    def __init__(self, expectations: list, index_columns: tuple[str, ...] = ("split", "row", "id")):
        self._index_columns = list(index_columns)
        import great_expectations as gx

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = {"globally": False}
        batch = context.data_sources.add_pandas("sketches").add_dataframe_asset("per_sketch")
        suite = context.suites.add(gx.ExpectationSuite(name="sketch_quality", expectations=expectations))
        self._definition = context.validation_definitions.add(
            gx.ValidationDefinition(
                name="sketch_quality", data=batch.add_batch_definition_whole_dataframe("all"), suite=suite
            )
        )

    def failures(self, table: pd.DataFrame) -> list[dict]:
        """Return one dict per failing (row, expectation): split, row, id, expectation, column, value."""
        result = self._definition.run(
            batch_parameters={"dataframe": table},
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": self._index_columns},
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
                        "id": str(row.get("id", "")),
                        "expectation": outcome.expectation_config.type,
                        "column": column,
                        "value": value.item() if isinstance(value, np.generic) else value,
                    }
                )
        return failures


def run_expectations(table: pd.DataFrame, expectations: list) -> list[dict]:
    """Run expectations over the table in a fresh ephemeral GX context; return every failing row.

    Returns:
        One dict per failing (row, expectation): split, row, id, expectation, column, value.
    """
    return ExpectationRunner(expectations).failures(table)


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
    min_points: int = 1,
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
            f"(limit {max_invalid_fraction:.1%}){_most_common_failure(report)}; see {report.quarantine_path}"
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


def _failure_key(failure: dict) -> str:
    """Return how the report counts a failing row: its expectation and column, e.g.
    ``expect_column_values_to_be_in_set (pen_valid)`` (one expectation type checks several columns)."""
    return f"{failure['expectation']} ({failure['column']})" if failure.get("column") else str(failure["expectation"])


def _most_common_failure(report: ValidationReport, scan_lines: int = 1_000_000) -> str:
    """Return ``', most often "REASON" (N records; the first: WHERE)'`` for the reason that quarantined the most.

    ``WHERE`` is the first such record in the quarantine (file and line, or split and sketch id), looked
    for in its first ``scan_lines`` lines.
    """
    if not report.failures:
        return ""
    reason, count = max(report.failures.items(), key=lambda item: item[1])
    where = ""
    with open(report.quarantine_path) as lines:
        for line in itertools.islice(lines, scan_lines):
            entry = json.loads(line)
            if entry.get("stage") == "ingest" and f"ingest: {entry.get('reason')}" == reason:
                source, record = str(entry.get("source")), str(entry.get("record"))
                where = record if record.startswith(source) else f"{source} {record}"  # "cat.npz:train[3]"
            elif entry.get("stage") == "validate" and _failure_key(entry) == reason:
                column = f", {entry['column']} {entry.get('value')}" if entry.get("column") else ""
                where = f"{entry.get('split')} sketch {entry.get('id')}{column}"
            if where:
                break
    return f', most often "{reason}" ({count:,} records{"; the first: " + where if where else ""})'


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
    splits = {split: open_split(dataset_dir, split) for split in SPLITS}
    accepted = {split: np.ones(len(arrays), dtype=bool) for split, arrays in splits.items()}
    failures_by_expectation: dict[str, int] = {}
    with open(staging / "quarantine.jsonl", "w") as sink:
        ingest_quarantine = Path(dataset_dir) / "ingest_quarantine.jsonl"
        if ingest_quarantine.exists():
            with open(ingest_quarantine) as lines:
                for line in lines:
                    sink.write(json.dumps({"dataset": info.name, "stage": "ingest", **json.loads(line)}) + "\n")
        runner = ExpectationRunner(_expectations(info.classes, min_points, max_points, max_abs_delta), ("split", "row"))
        for table in sketch_tables(dataset_dir):
            for failure in runner.failures(table):
                failure["id"] = splits[failure["split"]].id_of(failure["row"])  # looked up for failures only
                accepted[failure["split"]][failure["row"]] = False
                name = _failure_key(failure)
                failures_by_expectation[name] = failures_by_expectation.get(name, 0) + 1
                sink.write(json.dumps({"dataset": info.name, "stage": "validate", **failure}, default=str) + "\n")
    for split in SPLITS:
        np.save(staging / f"{split}_accepted.npy", np.flatnonzero(accepted[split]).astype(np.int64))
    num_sketches = sum(len(mask) for mask in accepted.values())
    num_failed = sum(int((~mask).sum()) for mask in accepted.values())

    per_expectation: dict[str, int] = {f"ingest: {reason}": n for reason, n in info.rejected.items()}
    per_expectation.update(failures_by_expectation)
    class_counts = {name: n for name, n in info.counts["train"].items() if name in info.classes}
    imbalanced = class_balance_failures(class_counts, max_class_imbalance) if class_counts else []
    records_in = num_sketches + info.num_rejected
    quarantined = num_failed + info.num_rejected
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
