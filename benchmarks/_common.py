"""Helpers shared by the benchmark scripts: a prepared synthetic features folder, JSON output, tables."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

from pipeline.config import Settings, configure_runtime, load_settings

RESULTS = Path(__file__).parent / "results"


def prepared_features(work_dir: Path, per_class: int, num_classes: int = 8, **changes) -> tuple[Settings, Path]:
    """Return settings and a features folder of ``num_classes`` x ``per_class`` synthetic training sketches."""
    configure_runtime()
    from pipeline.ingest import ingest
    from pipeline.stages import data

    settings = load_settings(
        overrides={
            "work_dir": str(work_dir),
            "num_classes": num_classes,
            "synthetic_per_split": {
                "train": per_class,
                "valid": max(per_class // 5, 10),
                "test": max(per_class // 4, 10),
            },
            **changes,
        },
        environ={},
    )
    report = data.validate(settings, ingest(settings))
    return settings, data.preprocess(settings, report)


def write_results(name: str, params: dict, rows: list[dict], extra: dict | None = None, folder: Path = RESULTS) -> Path:
    """Write ``<folder>/<name>.json`` (``benchmarks/results`` by default) with the machine, parameters, rows
    and any ``extra`` sections; return its path."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "params": params,
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


def print_table(rows: list[dict]) -> None:
    """Print rows (dicts with the same keys) as an aligned table."""
    if not rows:
        return
    keys = list(rows[0])
    cells = [[f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
