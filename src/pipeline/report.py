"""What a pipeline run returns and how it is printed."""

from __future__ import annotations

import dataclasses


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
    header = ("architecture", "test acc", "top-3 acc", "macro F1", "train s", "epochs", "params", "version")
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
