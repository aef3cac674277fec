"""Ingest + preprocess throughput (sketches/s) and peak RSS at growing dataset sizes.

    .venv/bin/python benchmarks/ingest_scaling.py [--sizes 10000,100000,1000000]

Each size runs in its own process (so peak RSS is that size's own): sketch-rnn class files holding
N sketches over 8 classes are written first (untimed; a pool of 4,000 distinct synthetic sketches is
tiled, since drawing a million takes longer than ingesting them), then ingest (read the class
files through the restricted unpickler, write the canonical dataset) and preprocess (normalising
scale, normalise and crop, write TFRecords) are timed. Peak RSS is the process's high-water mark.
Validation (GX over a per-sketch table) is not part of this measurement.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, write_results

NUM_CLASSES = 8
POOL = 500  # distinct sketches per class


def _measure(size: int) -> dict:
    """Build files for ``size`` sketches, ingest and preprocess them; return the measurements."""
    import numpy as np

    from pipeline.config import configure_runtime, load_settings

    configure_runtime()
    # untimed, as before: the data stages no longer import TensorFlow themselves, and preprocess's first
    # use of it would otherwise put its import (~3 s) into the timed part
    import tensorflow  # noqa: F401

    from pipeline.features import write_features
    from pipeline.ingest import ingest
    from pipeline.strokes import SPLITS, write_sketchrnn_npz
    from pipeline.synthetic import SHAPES, synthetic_split

    work = Path(tempfile.mkdtemp())
    per_class = size // NUM_CLASSES
    shares = {"train": 0.9, "valid": 0.05, "test": 0.05}
    raw = work / "raw"
    for name in list(SHAPES)[:NUM_CLASSES]:
        pool = synthetic_split(name, "train", POOL, seed=0)
        splits = {split: [pool[i % POOL] for i in range(int(per_class * share))] for split, share in shares.items()}
        write_sketchrnn_npz(raw / f"{name}.npz", splits)
        del pool, splits
    settings = load_settings(
        overrides={"source": "sketchrnn", "data_dir": str(raw), "num_classes": NUM_CLASSES, "work_dir": str(work)},
        environ={},
    )
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    dataset = ingest(settings)
    ingested = time.perf_counter()
    from pipeline.dataset import open_split

    accepted = {split: np.arange(len(open_split(dataset, split))) for split in SPLITS}
    write_features(dataset, accepted, work / "features", settings.max_len)
    finished = time.perf_counter()
    total = sum(len(a) for a in accepted.values())
    return {
        "sketches": total,
        "ingest_s": ingested - started,
        "preprocess_s": finished - ingested,
        "sketches_per_s": total / (finished - started),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_setup_mb": rss_before / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure(args.one)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run(
            [sys.executable, __file__, "--one", str(size)], capture_output=True, text=True, check=True
        )
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print_table(rows[-1:])
    if len(rows) >= 2:
        for row in rows:
            row["rss_vs_previous"] = ""
        for previous, row in itertools.pairwise(rows):
            row["rss_vs_previous"] = f"{row['peak_rss_mb'] / previous['peak_rss_mb']:.2f}x"
    path = write_results("ingest_scaling", {"sizes": args.sizes, "classes": NUM_CLASSES, "pool": POOL}, rows)
    print()
    print_table(rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
