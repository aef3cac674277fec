"""Ingest: read a source into a canonical dataset folder (see :mod:`pipeline.dataset`)."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline import progress
from pipeline.config import Settings
from pipeline.dataset import Rejection, SketchBatch, SketchRecord, batched_records, write_dataset
from pipeline.files import published_dir
from pipeline.progress import counted
from pipeline.quickdraw_formats import (
    NDJSON_PREFIXES,
    class_files,
    iter_ndjson_records,
    iter_tfrecord_records,
    tfrecord_classes,
)
from pipeline.strokes import load_sketchrnn_flat
from pipeline.synthetic import SHAPES, write_synthetic_npz

SYNTHETIC_DEFAULT_CLASSES = 8  # real sources default to all their classes


class ClassSelectionError(ValueError):
    """``classes`` or ``num_classes`` (the ``field``) asks for classes the source does not have."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def select_classes(available: list[str], classes: tuple[str, ...] | None, num_classes: int | None) -> list[str]:
    """Return the classes to use: the named ones (all must exist), else the first ``num_classes``,
    else all of them."""
    if classes:
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise ClassSelectionError("classes", f"class {', '.join(repeated)} named twice")
        missing = [c for c in classes if c not in available]
        if missing:
            shown = ", ".join(available[:10]) + (f" and {len(available) - 10} more" if len(available) > 10 else "")
            raise ClassSelectionError("classes", f"unknown class {', '.join(missing)}; available: {shown}")
        return list(classes)
    if num_classes is None:
        return list(available)
    if num_classes > len(available):
        raise ClassSelectionError("num_classes", f"asked for {num_classes} classes but the source has {len(available)}")
    return available[:num_classes]


READ_AHEAD_FROM_BYTES = 64 << 20  # class files smaller than this in all are read in the ingesting process


def iter_sketchrnn_records(
    files: dict[str, Path], max_per_class: int | None = None
) -> Iterator[SketchBatch | Rejection]:
    """Yield the sketches of sketch-rnn class files (class name -> path) as one batch per file and
    split, capped per class and split; the sketches over the cap are counted as skipped.

    With more than :data:`READ_AHEAD_FROM_BYTES` of files, the next file is read and unpickled in a
    helper process while this one's sketches are written: unpickling holds the GIL for the whole
    call, so a thread would not overlap with the writer; a process does, on a second core. (Not in a
    daemonic process, such as a Dask worker's, which may not start one.)
    """
    paths = list(files.values())
    helper: contextlib.AbstractContextManager = contextlib.nullcontext(_InlineReader())
    if sum(p.stat().st_size for p in paths) >= READ_AHEAD_FROM_BYTES and not multiprocessing.current_process().daemon:
        helper = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    with helper as reader:
        pending = reader.submit(load_sketchrnn_flat, paths[0], max_per_class) if paths else None
        for label, path in enumerate(paths):
            loaded = pending.result()
            if label + 1 < len(paths):  # read ahead
                pending = reader.submit(load_sketchrnn_flat, paths[label + 1], max_per_class)
            for split, (rows, lengths, total) in loaded.items():
                if len(lengths):
                    prefix = f"{path.name}:{split}"
                    ids = [f"{prefix}[{index}]" for index in range(len(lengths))]
                    yield SketchBatch(split, np.full(len(lengths), label, dtype=np.int32), ids, rows, lengths)
                if total > len(lengths):
                    yield Rejection(
                        path.name,
                        f"{split}[{len(lengths)}:]",
                        f"over max_per_class in {split}",
                        skipped=True,
                        count=total - len(lengths),
                    )
            del loaded


def ndjson_workers(files: dict[str, Path]) -> int:
    """Return how many processes should read these ndjson class files at once: one per core the process
    may use (at most one per file), once the files are :data:`READ_AHEAD_FROM_BYTES` in all (smaller
    ones do not pay for starting them); 1 means read here, in this process (so too in a daemonic one,
    such as a Dask worker's, which may not start processes)."""
    if (
        multiprocessing.current_process().daemon
        or sum(p.stat().st_size for p in files.values()) < READ_AHEAD_FROM_BYTES
    ):
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, len(files)))


def _ndjson_file(path: Path, classes: list[str], options: dict) -> Iterator[SketchBatch | Rejection]:
    """Yield one ndjson class file's records, its sketches gathered into flat batches per split."""
    return batched_records(iter_ndjson_records({path.stem: path}, classes, **options))


def _read_ndjson_file(path: Path, classes: list[str], options: dict) -> list[SketchBatch | Rejection]:
    """Return what :func:`_ndjson_file` yields, as one list (run in a helper process)."""
    return list(_ndjson_file(path, classes, options))


def iter_ndjson_parallel(
    files: dict[str, Path], classes: list[str], workers: int, **options
) -> Iterator[SketchBatch | Rejection]:
    """Yield the records of ndjson class files (see :func:`~pipeline.quickdraw_formats.iter_ndjson_records`),
    file by file, the sketches in flat batches per split (:func:`~pipeline.dataset.batched_records`),
    with ``workers`` processes reading files at once: parsing JSON and simplifying raw drawings is
    Python work, one core per file. Every number of workers yields the same sequence, so the dataset
    and its fingerprint are the same.

    One worker reads here, streaming. More hold at most ``workers + 1`` files' batches at a time (read
    ahead of the writer, in file order); a class file's sketches are a few hundred bytes each.
    """
    if workers <= 1:
        for path in files.values():
            yield from _ndjson_file(path, classes, options)
        return
    paths = list(files.values())
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: collections.deque[Future] = collections.deque()
        for path in paths:
            pending.append(pool.submit(_read_ndjson_file, path, classes, options))
            if len(pending) > workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


class _InlineReader:
    """Runs a submitted call at once (one file: no helper process worth starting)."""

    def submit(self, function, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # handed on, as an executor would
            future.set_exception(exc)
        return future


def sketchrnn_class_files(data_dir: Path) -> dict[str, Path]:
    """Return class name -> ``NAME.npz`` for a folder of sketch-rnn class files, sorted by name."""
    return class_files(Path(data_dir), "*.npz")


def synthetic_source_dir(settings: Settings, classes: list[str]) -> Path:
    """Write (once) the synthetic class files for these settings and return their folder."""
    key = json.dumps({"classes": classes, "per_split": dict(settings.synthetic_per_split), "seed": settings.seed})
    folder = Path(settings.work_dir) / "raw" / f"synthetic-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if not (folder / "params.json").exists():
        with published_dir(folder) as staging:  # a concurrent run may be drawing the same files
            write_synthetic_npz(staging, classes, dict(settings.synthetic_per_split), settings.seed)
            (staging / "params.json").write_text(key)
    return folder


def source_classes(settings: Settings) -> list[str]:
    """Return the classes a run of these settings would ingest, from the file names alone (nothing is read
    but a TFRecord folder's class list): the checks a run makes first, in a fraction of a second.

    Raises:
        ClassSelectionError, StrokeFormatError: as :func:`ingest` would, before anything is started.
    """
    if settings.source == "synthetic":
        return select_classes(list(SHAPES), settings.classes, settings.num_classes or SYNTHETIC_DEFAULT_CLASSES)
    return select_classes(list(_source_files(settings)), settings.classes, settings.num_classes)


def _source_files(settings: Settings) -> dict[str, Path | None]:
    """Return class name -> file of a real source's folder (``None`` for a TFRecord folder's classes)."""
    data_dir = Path(settings.data_dir)
    if settings.source == "sketchrnn":
        return sketchrnn_class_files(data_dir)
    if settings.source == "ndjson":
        return class_files(data_dir, "*.ndjson", NDJSON_PREFIXES)
    if settings.source == "tfrecord":
        return dict.fromkeys(tfrecord_classes(data_dir)[0])
    raise ValueError(f"unknown source {settings.source!r}")


def ingest(settings: Settings) -> Path:
    """Read the configured source into a dataset folder under ``<work_dir>/datasets``; return it.

    Raises:
        ClassSelectionError: ``classes`` or ``num_classes`` asks for classes the source lacks.
        StrokeFormatError: the source folder is missing or empty, a class is named twice, or a
            sketch-rnn file is corrupt or carries a foreign pickle (naming the file and record).
            Bad records in ndjson and TFRecord files are quarantined instead (see ``dataset.json``).
    """
    out_root = Path(settings.work_dir) / "datasets"
    cap = settings.max_per_class
    classes = source_classes(settings)
    if settings.source in ("synthetic", "sketchrnn"):
        folder = synthetic_source_dir(settings, classes) if settings.source == "synthetic" else settings.data_dir
        files = sketchrnn_class_files(Path(folder))
        records = iter_sketchrnn_records({c: files[c] for c in classes}, cap)
    elif settings.source == "ndjson":
        files = _source_files(settings)
        chosen = {c: files[c] for c in classes}
        records = iter_ndjson_parallel(
            chosen,
            classes,
            ndjson_workers(chosen),
            recognized_only=settings.recognized_only,
            max_per_class=cap,
            valid_share=settings.valid_share,
            test_share=settings.test_share,
        )
    elif settings.source == "tfrecord":
        all_classes, shards = tfrecord_classes(Path(settings.data_dir))
        records = iter_tfrecord_records(
            shards, all_classes, classes, cap, valid_share=settings.valid_share, test_share=settings.test_share
        )
    else:
        raise ValueError(f"unknown source {settings.source!r}")
    records = counted(
        records, f"ingest {settings.source}", "record", show=progress.enabled(settings.progress), weight=_records_in
    )
    return write_dataset(out_root, settings.source, settings.source, classes, records)


def _records_in(item: SketchRecord | SketchBatch | Rejection) -> int:
    """Return how many source records an item of a reader stands for (for the progress bar)."""
    return len(item) if isinstance(item, SketchBatch) else item.count if isinstance(item, Rejection) else 1
