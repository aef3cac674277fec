"""What a pipeline run returns and how it is printed: the results table, the winner note, the
validation summary."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: printing results needs neither GX nor SciPy
    from pipeline.promotion import PromotionDecision
    from pipeline.validation import ValidationReport


@dataclasses.dataclass(frozen=True)
class ArchitectureResult:
    """One row of the results table."""

    architecture: str
    test_accuracy: float
    top3_accuracy: float
    macro_f1: float
    train_seconds: float
    epochs_run: int
    num_params: int
    latency_p50_ms: float
    run_id: str
    model_version: str


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """The outcome of one ``training_pipeline`` run."""

    dataset_dir: str
    features_dir: str
    parent_run_id: str
    records_in: int
    quarantined: int
    rows: list[ArchitectureResult]
    promoted_version: str
    promoted_alias: str
    promotion_reason: str


def results_table(rows: list[ArchitectureResult]) -> str:
    """Return the results as an aligned text table, best test accuracy first."""
    header = ("architecture", "test acc", "top-3 acc", "macro F1", "train s", "epochs", "params", "p50 ms", "version")
    lines = [header]
    for row in sorted(rows, key=lambda r: -r.test_accuracy):
        lines.append(
            (
                row.architecture,
                f"{row.test_accuracy:.4f}",
                f"{row.top3_accuracy:.4f}",
                f"{row.macro_f1:.4f}",
                f"{row.train_seconds:.1f}",
                str(row.epochs_run),
                f"{row.num_params:,}",
                f"{row.latency_p50_ms:.1f}",
                row.model_version,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rendered = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    rendered.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(rendered)


def promotion_line(result: PipelineResult, model_name: str) -> str:
    """Return one sentence saying which version got which alias, and why."""
    return f"{model_name} version {result.promoted_version} -> @{result.promoted_alias} ({result.promotion_reason})"


def write_comparison_csv(rows: list[ArchitectureResult], path: Path) -> Path:
    """Write one CSV line per architecture (every field of :class:`ArchitectureResult`); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as sink:
        writer = csv.DictWriter(sink, fieldnames=[f.name for f in dataclasses.fields(ArchitectureResult)])
        writer.writeheader()
        for row in sorted(rows, key=lambda r: -r.test_accuracy):
            writer.writerow(dataclasses.asdict(row))
    return path


def winner_markdown(rows: list[ArchitectureResult], decision: PromotionDecision, model_name: str) -> str:
    """Return a short markdown note: which architecture won this run, and what the promotion gate did."""
    best = max(rows, key=lambda r: (r.test_accuracy, -int(r.model_version)))
    others = sorted((r for r in rows if r is not best), key=lambda r: -r.test_accuracy)
    lines = [
        f"# {best.architecture} wins this run",
        "",
        f"Test accuracy **{best.test_accuracy:.4f}** (top-3 {best.top3_accuracy:.4f}, macro F1 {best.macro_f1:.4f}), "
        f"{best.num_params:,} parameters, {best.latency_p50_ms:.1f} ms p50 per sketch.",
    ]
    if others:
        runner_up = others[0]
        lines.append(
            f"Runner-up: {runner_up.architecture} at {runner_up.test_accuracy:.4f} "
            f"({best.test_accuracy - runner_up.test_accuracy:+.4f} for the winner)."
        )
    lines += [
        "",
        f"Promotion: {model_name} version {decision.candidate_version} -> `@{decision.alias}`: {decision.reason}.",
    ]
    if decision.champion_version is not None and decision.champion_accuracy is not None:
        from pipeline.promotion import format_p

        lines.append(
            f"Compared with champion version {decision.champion_version} on test set {decision.test_set}: "
            f"{decision.candidate_accuracy:.4f} vs {decision.champion_accuracy:.4f}, "
            f"McNemar {format_p(decision.p_value)}."
        )
    return "\n".join(lines) + "\n"


def validation_markdown(report: ValidationReport) -> str:
    """Return the validation summary as a short markdown report."""
    lines = [
        f"# Validation of `{Path(report.dataset_dir).name}`",
        "",
        f"{report.records_in} records in: {report.accepted} accepted, {report.quarantined} quarantined "
        f"({report.invalid_fraction:.2%}); quarantine: `{report.quarantine_path}`.",
    ]
    if report.skipped:
        lines.append("Skipped on purpose: " + ", ".join(f"{reason}: {n}" for reason, n in report.skipped.items()) + ".")
    if report.failures:
        lines += ["", "| reason | records |", "| --- | --- |"]
        lines += [f"| {reason} | {count} |" for reason, count in sorted(report.failures.items())]
    lines += ["", "Training sketches per class: " + ", ".join(f"{c} {n}" for c, n in report.class_counts.items())]
    return "\n".join(lines) + "\n"
