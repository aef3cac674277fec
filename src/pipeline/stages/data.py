"""Data stages: download -> ingest -> validate -> preprocess."""

from __future__ import annotations

from pathlib import Path

from pipeline import progress
from pipeline.config import Settings
from pipeline.dataset import read_info
from pipeline.download import DownloadedFile, download_classes, resolve_classes
from pipeline.features import write_features
from pipeline.files import parameters_digest
from pipeline.fingerprints import VALIDATE_FIELDS
from pipeline.ingest import ClassSelectionError, ingest
from pipeline.strokes import SPLITS
from pipeline.validation import ValidationReport, validate_dataset

__all__ = ["download", "ingest", "outputs_present", "preprocess", "validate", "validation_dir"]


def download(settings: Settings) -> list[DownloadedFile]:
    """Download the official class files the settings select that ``data_dir`` does not hold yet.

    The classes are ``classes`` when named, else the first ``num_classes`` official ones, else all
    345. Does nothing unless ``download`` is on.
    """
    if not settings.download:
        return []
    return download_classes(
        resolve_classes(settings.classes, settings.num_classes),
        settings.resolved_download_format,
        Path(settings.data_dir),
        base_url=settings.download_base_url,
        workers=settings.download_workers,
        retries=settings.io_retries + 2,
        backoff_seconds=settings.retry_backoff_seconds,
        show_progress=progress.enabled(settings.progress),
    )


def validation_dir(settings: Settings, dataset_dir: Path) -> Path:
    """Return ``<work_dir>/validation/<dataset>-<hash of the validation settings>``.

    Named after everything that decides which sketches are accepted, so different settings never
    share (or overwrite) a report, and the features made from it are named after it in turn.
    """
    thresholds = {name: getattr(settings, name) for name in VALIDATE_FIELDS if name != "work_dir"}
    return Path(settings.work_dir) / "validation" / f"{Path(dataset_dir).name}-v{parameters_digest(thresholds)}"


def validate(settings: Settings, dataset_dir: Path) -> ValidationReport:
    """Validate a dataset folder into :func:`validation_dir`; see :func:`pipeline.validation.validate_dataset`."""
    return validate_dataset(
        dataset_dir,
        validation_dir(settings, dataset_dir),
        min_points=settings.min_points,
        max_points=settings.max_points,
        max_abs_delta=settings.max_abs_delta,
        max_invalid_fraction=settings.max_invalid_fraction,
        max_class_imbalance=settings.max_class_imbalance,
    )


def check_source(settings: Settings) -> None:
    """Raise what a run of these settings would meet first with its source (a missing folder, a class it
    lacks, a single class), from the file names alone; a source still to be downloaded is not checked."""
    if settings.download:
        return
    from pipeline.ingest import source_classes

    _require_two_classes(settings, source_classes(settings))


def _require_two_classes(settings: Settings, classes: list[str]) -> None:
    if len(classes) < 2:  # a classifier of one class learns nothing (and is always right)
        field = "classes" if settings.classes else "num_classes" if settings.num_classes else "data_dir"
        held = f"one class ({classes[0]})" if classes else "no class"
        raise ClassSelectionError(field, f"the dataset has {held}; training needs at least 2")


def preprocess(settings: Settings, report: ValidationReport) -> Path:
    """Write the model-ready features (flat arrays per split) of the accepted sketches; return their folder."""
    dataset_dir = Path(report.dataset_dir)
    _require_two_classes(settings, read_info(dataset_dir).classes)
    # named after the validation report (dataset + thresholds) and the crop length
    out_dir = Path(settings.work_dir) / "features" / f"{Path(report.output_dir).name}-len{settings.max_len}"
    accepted = {split: report.accepted_indices(split) for split in SPLITS}
    write_features(dataset_dir, accepted, out_dir, settings.max_len)
    return out_dir


def outputs_present(result: Path | ValidationReport) -> bool:
    """Return whether the files a data stage's result points at are all still there.

    A cached result outlives its files when the work folder is deleted; the flow checks it with this
    before handing it on, and recomputes the stage when it fails.
    """
    if isinstance(result, ValidationReport):
        summary = Path(result.output_dir) / "summary.json"
        return summary.is_file() and (Path(result.dataset_dir) / "dataset.json").is_file()
    return any((Path(result) / name).is_file() for name in ("dataset.json", "spec.json"))
