"""Content fingerprints that decide when cached stage outputs are still valid.

A stage's output may be reused when its source data, its parameters and the library code that
made it are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from pipeline.config import Settings

# The settings each cached stage depends on.
INGEST_FIELDS = (
    "source",
    "data_dir",
    "classes",
    "num_classes",
    "max_per_class",
    "recognized_only",
    "valid_share",
    "test_share",
    "synthetic_per_split",
    "seed",
    "work_dir",
)
VALIDATE_FIELDS = (
    "min_points",
    "max_points",
    "max_abs_delta",
    "max_invalid_fraction",
    "max_class_imbalance",
    "work_dir",
)
PREPROCESS_FIELDS = ("max_len", "work_dir")


@cache
def code_version() -> str:
    """Return a hash of the library's source files: changed code invalidates cached outputs."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def source_fingerprint(settings: Settings) -> str:
    """Return a fingerprint of the source files; the synthetic source is fingerprinted by its settings
    alone, since the generator is part of the code.

    Per file: name, size, modification time, and the inode's change time and number. Hashing the
    content of a 25 GB source on every run would cost minutes; the change time moves on every write
    and cannot be set back (``touch -m`` or a copy that keeps mtime and size still changes it), so a
    file rewritten in place with the same size and mtime is still noticed.
    """
    digest = hashlib.sha256(settings.source.encode())
    if settings.source != "synthetic" and settings.data_dir:
        root = Path(settings.data_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(
                f"{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ctime_ns}|{stat.st_ino}".encode()
            )
    return digest.hexdigest()[:16]


def stage_key(stage: str, settings: Settings, fields: tuple[str, ...], *inputs: Any) -> str:
    """Return the cache key of a stage: its name, the fields it reads, its inputs and the code version."""
    chosen = {name: getattr(settings, name) for name in fields}
    chosen["work_dir"] = str(Path(settings.work_dir).resolve())
    payload = json.dumps([stage, chosen, [str(i) for i in inputs], code_version()], sort_keys=True, default=str)
    return f"{stage}-{hashlib.sha256(payload.encode()).hexdigest()[:24]}"
