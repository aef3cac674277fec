"""Ingest of Quick, Draw! ndjson class files: one process (the anchor) against a process per core.

    .venv/bin/python benchmarks/ingest_ndjson.py [--workers N] [--tile 10] [--repeats 3]

Inputs: the real raw sample in ``../shared/data/quickdraw-raw-345`` (345 class files, raw drawings: each
is aligned, scaled, resampled and RDP-simplified on the way in), and the same drawings written as the
published ``simplified`` files, tiled ``--tile`` times with new key_ids (writing them is not timed). Each
input is ingested into a new dataset folder (parse, check, simplify, write, fingerprint: what
``sketchpipe run`` does before validation) by ``iter_ndjson_parallel`` with 1 worker (read in this
process, as every ingest did before) and with ``--workers`` (default: one per core), alternating, in
the same process; best of ``--repeats``. Both must write the same dataset (the same fingerprint).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import print_table, write_results

REAL_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "quickdraw-raw-345"


def _write_simplified(out: Path, tile: int) -> None:
    """Write the real sample as simplified ndjson (``full_simplified_<class>.ndjson``), ``tile`` copies
    of each drawing under new key_ids."""
    from pipeline.dataset import SketchRecord
    from pipeline.quickdraw_formats import NDJSON_PREFIXES, class_files, iter_ndjson_records
    from pipeline.strokes import stroke3_to_polylines

    files = class_files(REAL_SAMPLE, "*.ndjson", NDJSON_PREFIXES)
    out.mkdir(parents=True)
    for word, path in files.items():
        lines = []
        for record in iter_ndjson_records({word: path}, list(files), recognized_only=False):
            if not isinstance(record, SketchRecord):
                continue
            key = int(record.record_id.rsplit(":", 1)[1])
            drawing = [[poly[:, 0].astype(int).tolist(), poly[:, 1].astype(int).tolist()]
                       for poly in stroke3_to_polylines(record.strokes)]  # fmt: skip
            for copy in range(tile):
                item = {"word": word, "countrycode": "US", "recognized": True, "key_id": str(key * 100 + copy),
                        "drawing": drawing}  # fmt: skip
                lines.append(json.dumps(item))
        (out / f"full_simplified_{word}.ndjson").write_text("\n".join(lines) + "\n")


def _ingest(data_dir: Path, out: Path, workers: int) -> tuple[float, str, int]:
    """Ingest every class file of ``data_dir`` into a new dataset under ``out``; return (seconds,
    fingerprint, records in)."""
    from pipeline.dataset import read_info, write_dataset
    from pipeline.ingest import iter_ndjson_parallel
    from pipeline.quickdraw_formats import NDJSON_PREFIXES, class_files

    files = class_files(data_dir, "*.ndjson", NDJSON_PREFIXES)
    classes = list(files)
    started = time.perf_counter()
    records = iter_ndjson_parallel(files, classes, workers, recognized_only=False, valid_share=0.1, test_share=0.2)
    folder = write_dataset(out, "ndjson", "ndjson", classes, records)
    seconds = time.perf_counter() - started
    info = read_info(folder)
    shutil.rmtree(folder)
    return seconds, info.fingerprint, info.num_sketches + info.num_rejected + sum(info.skipped.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    parser.add_argument("--workers", type=int, default=cores)
    parser.add_argument("--tile", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not REAL_SAMPLE.is_dir():
        raise SystemExit(f"the real sample is not at {REAL_SAMPLE}")
    work = Path(tempfile.mkdtemp())
    _write_simplified(work / "simplified", args.tile)
    rows = []
    for name, folder in (("raw", REAL_SAMPLE), (f"simplified x{args.tile}", work / "simplified")):
        best: dict[int, float] = {}
        prints: dict[int, str] = {}
        for _ in range(args.repeats):
            for workers in (1, args.workers):
                seconds, fingerprint, records = _ingest(folder, work / "out", workers)
                best[workers] = min(best.get(workers, float("inf")), seconds)
                prints[workers] = fingerprint
        if prints[1] != prints[args.workers]:
            raise SystemExit(f"{name}: {args.workers} workers wrote another dataset than one")
        for workers in (1, args.workers):
            rows.append(
                {
                    "input": name,
                    "workers": workers,
                    "records": records,
                    "seconds": round(best[workers], 2),
                    "records_per_s": round(records / best[workers]),
                    "speedup": round(best[1] / best[workers], 2),
                }
            )
    shutil.rmtree(work)
    print_table(rows)
    path = write_results("ingest_ndjson", {"workers": args.workers, "tile": args.tile, "repeats": args.repeats}, rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
