"""Ingest: read a source into a canonical dataset folder (see :mod:`pipeline.dataset`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import Settings
from pipeline.dataset import SketchRecord, write_dataset
from pipeline.strokes import SPLITS, StrokeFormatError, load_sketchrnn_npz
from pipeline.synthetic import SHAPES, write_synthetic_npz


def select_classes(available: list[str], classes: tuple[str, ...] | None, num_classes: int) -> list[str]:
    """Return the classes to use: the named ones (all must exist), else the first ``num_classes``."""
    if classes:
        missing = [c for c in classes if c not in available]
        if missing:
            raise ValueError(f"unknown class {', '.join(missing)}; available: {', '.join(available)}")
        return list(classes)
    if num_classes > len(available):
        raise ValueError(f"asked for {num_classes} classes but the source has {len(available)}")
    return available[:num_classes]


def iter_sketchrnn_records(files: dict[str, Path], max_per_class: int | None = None) -> Iterator[SketchRecord]:
    """Yield every sketch of sketch-rnn class files (class name -> path), capped per class and split."""
    for label, path in enumerate(files.values()):
        splits = load_sketchrnn_npz(path)
        for split in SPLITS:
            for index, sketch in enumerate(splits.get(split, [])[:max_per_class]):
                yield SketchRecord(split, label, f"{path.name}:{split}[{index}]", sketch)


def sketchrnn_class_files(data_dir: Path) -> dict[str, Path]:
    """Return class name -> ``NAME.npz`` for a folder of sketch-rnn class files, sorted by name."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise StrokeFormatError(f"{data_dir}: no such folder")
    files = {p.stem: p for p in sorted(data_dir.glob("*.npz"))}
    if not files:
        raise StrokeFormatError(f"{data_dir}: holds no .npz class files")
    return files


def synthetic_source_dir(settings: Settings, classes: list[str]) -> Path:
    """Write (once) the synthetic class files for these settings and return their folder."""
    key = json.dumps({"classes": classes, "per_split": dict(settings.synthetic_per_split), "seed": settings.seed})
    folder = Path(settings.work_dir) / "raw" / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    done = folder / "params.json"
    if not done.exists():
        write_synthetic_npz(folder, classes, dict(settings.synthetic_per_split), settings.seed)
        done.write_text(key)
    return folder


def ingest(settings: Settings) -> Path:
    """Read the configured source into a dataset folder under ``<work_dir>/datasets``; return it."""
    if settings.source == "synthetic":
        classes = select_classes(list(SHAPES), settings.classes, settings.num_classes)
        files = sketchrnn_class_files(synthetic_source_dir(settings, classes))
        name = "synthetic"
    elif settings.source == "sketchrnn":
        available = sketchrnn_class_files(Path(settings.data_dir))
        classes = select_classes(list(available), settings.classes, settings.num_classes)
        files = {c: available[c] for c in classes}
        name = "sketchrnn"
    else:
        raise NotImplementedError(f"source {settings.source!r} is not implemented yet")
    files = {c: files[c] for c in classes}
    return write_dataset(
        Path(settings.work_dir) / "datasets",
        name,
        settings.source,
        classes,
        iter_sketchrnn_records(files, settings.max_per_class),
    )
