"""Drift of a scored batch against the reference profile of the model that scored it, with Evidently.

Each monitored column is compared on its own (Evidently's ``ValueDrift``, whose method it picks by the
column's type and the sample sizes: Kolmogorov-Smirnov or chi-square up to 1,000 rows, Wasserstein or
Jensen-Shannon distance above); the projected penultimate-layer embeddings together
(``EmbeddingsDrift``: a classifier told apart reference from current better than chance). The batch has
drifted when at least ``drift_share`` of these (the embeddings counting as one) have.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from pipeline.scoring.descriptors import DESCRIPTORS

CATEGORICAL = ("predicted_class", "format")
NUMERICAL = (*DESCRIPTORS, "confidence")
EMBEDDINGS = "embeddings"
MAX_CURRENT_ROWS = 100_000  # a larger batch is compared through a seeded sample of this many rows


@dataclasses.dataclass
class DriftSummary:
    """What ``monitor`` found: the overall verdict, the share of columns that drifted, and per column its
    score, method, threshold and whether it drifted."""

    drift_detected: bool
    drift_share: float
    drifted_columns: list[str]
    columns: dict[str, dict]
    threshold_share: float
    reference_rows: int
    current_rows: int
    model_name: str = ""
    model_version: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def read_scores(path: Path, max_rows: int = MAX_CURRENT_ROWS, seed: int = 0):
    """Return the monitored columns of a scores file as a DataFrame, a seeded sample of ``max_rows`` rows
    when it has more (read a row group at a time: memory stays bounded by the sample)."""
    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    names = source.schema_arrow.names
    wanted = [n for n in (*NUMERICAL, *CATEGORICAL, "model_name", "model_version") if n in names]
    wanted += [n for n in names if n.startswith("embedding_")]
    total = source.metadata.num_rows
    keep = None
    if total > max_rows:
        keep = np.zeros(total, dtype=bool)
        keep[np.random.default_rng(seed).choice(total, max_rows, replace=False)] = True
    frames, offset = [], 0
    for index in range(source.num_row_groups):
        table = source.read_row_group(index, columns=wanted)
        if keep is not None:
            table = table.filter(keep[offset : offset + table.num_rows])
        offset += source.metadata.row_group(index).num_rows
        frames.append(table.to_pandas())
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=wanted)
    for name in (*CATEGORICAL, "model_name", "model_version"):
        if name in frame:
            frame[name] = frame[name].astype(str)
    return frame, total


def compare(current, reference, drift_share: float, html: Path | None = None) -> DriftSummary:
    """Return the drift of ``current`` against ``reference`` (DataFrames of scores); write Evidently's HTML
    report to ``html``."""
    os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry
    from evidently import DataDefinition, Dataset, Report
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import model as model_method
    from evidently.metrics import EmbeddingsDrift, ValueDrift

    numerical = [c for c in NUMERICAL if _usable(current, c) and _usable(reference, c)]
    categorical = [c for c in CATEGORICAL if c in current and c in reference]
    embedded = sorted(
        (c for c in current if c.startswith("embedding_") and c in reference), key=lambda c: int(c.split("_")[1])
    )
    columns = numerical + categorical + embedded
    definition = DataDefinition(
        numerical_columns=numerical + embedded,
        categorical_columns=categorical,
        embeddings={EMBEDDINGS: embedded} if embedded else None,
    )
    metrics = [ValueDrift(column=c) for c in numerical]
    # one kind of input against another is drift however few rows show it: no chi-square on 1 category
    metrics += [ValueDrift(column=c, method="jensenshannon" if c == "format" else None) for c in categorical]
    small = min(len(current), len(reference)) < 1000
    if embedded:  # a classifier's ROC AUC; on small samples against its own value on shuffled labels
        metrics.append(EmbeddingsDrift(embeddings_name=EMBEDDINGS, drift_method=model_method(bootstrap=small)))
    report = Report(metrics, include_tests=True)
    snapshot = report.run(
        Dataset.from_pandas(current[columns], data_definition=definition),
        Dataset.from_pandas(reference[columns], data_definition=definition),
    )
    if html is not None:
        snapshot.save_html(str(html))
    results = _column_results(snapshot.dict(), numerical + categorical, bool(embedded), small)
    drifted = [name for name, result in results.items() if result["drifted"]]
    share = len(drifted) / len(results) if results else 0.0
    return DriftSummary(
        drift_detected=share >= drift_share,
        drift_share=round(share, 4),
        drifted_columns=drifted,
        columns=results,
        threshold_share=drift_share,
        reference_rows=len(reference),
        current_rows=len(current),
    )


def _usable(frame, column: str) -> bool:
    """Return whether a numeric column has values to compare (``duration_s`` exists only for raw drawings)."""
    return column in frame and frame[column].notna().any()


def _column_results(snapshot: dict, columns: list[str], embedded: bool, small: bool) -> dict[str, dict]:
    """Return column -> {score, method, threshold, drifted} from an Evidently snapshot's dict."""
    failed = {test["metric_config"]["params"]["column"] for test in snapshot.get("tests", []) if _failed(test)}
    results = {}
    for metric in snapshot["metrics"]:
        config = metric["config"]
        if config["type"].endswith("ValueDrift"):
            column = config["column"]
            results[column] = {
                "score": round(float(metric["value"]), 6),
                "method": config.get("method"),
                "threshold": config.get("threshold"),
                "drifted": column in failed,
            }
        elif config["type"].endswith("EmbeddingsDrift"):
            score = float(metric["value"])
            results[EMBEDDINGS] = {
                "score": round(score, 6),
                "method": "model ROC AUC" + (" (bootstrap)" if small else ""),
                "threshold": 0.55,
                "drifted": score > 0.55,
            }
    return {c: results[c] for c in [*columns, *([EMBEDDINGS] if embedded else [])] if c in results}


def _failed(test: dict) -> bool:
    return str(test.get("status", "")).upper().endswith("FAIL")
