"""Batch scoring at scale: ``sketchpipe score`` against the model's own batch throughput and against
``predict``, in one run; ``sketchpipe monitor`` on the 100k batch.

Two anchors, both the serving model alone on the same sketches, the input padded in memory beforehand:
``model.predict`` on batches of 256 in input order, and the most the model can do (one traced graph on
length-sorted batches: almost no padding). ``score`` and ``predict`` are timed end to end, process
start, reading, descriptors and writing included.

The sketches are real drawings from ``../shared/data/quickdraw-raw-345`` (simplified as ingest does),
tiled into sketch-rnn class files of 100,000 and 1,000,000 sketches in all (345 files each). The model is
the champion of ``DIR/mlflow/mlflow.db``: without one, the real-data profile is trained there first
(``sketchpipe run --config configs/quickdraw.yaml --source ndjson --data-dir ../shared/data/quickdraw-raw-345
--epochs 2``). Each ``score`` and ``predict`` runs in its own process (peak RSS is that process's); the
anchors run in this process.

    .venv/bin/python benchmarks/scoring.py                        # 100k and 1M
    .venv/bin/python benchmarks/scoring.py --sizes 100000 --work DIR

Writes ``benchmarks/results/scoring.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import print_table, write_results
from benchmarks.serving import NAME, REAL, _ensure_store

RUN_MEASURED = """
import resource, sys, time
from flows.cli import main
started = time.perf_counter()
try:
    main(sys.argv[1:])
finally:
    print("BENCH", time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, flush=True)
"""


def _real_sketches() -> list[np.ndarray]:
    from pipeline.serving import read_sketch_files

    return [s.astype(np.int16) for s in read_sketch_files(sorted(str(p) for p in REAL.glob("*.ndjson"))).values()]


def _tiled(folder: Path, sketches: list[np.ndarray], total: int) -> Path:
    """Write ``total`` sketches (the real ones repeated) as 345 sketch-rnn files; return the folder."""
    from pipeline.strokes import write_sketchrnn_npz

    if folder.is_dir() and len(list(folder.glob("*.npz"))) == 345:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    order = np.arange(total) % len(sketches)
    for index, part in enumerate(np.array_split(order, 345)):
        write_sketchrnn_npz(folder / f"part{index:03d}.npz", {"test": [sketches[i] for i in part]})
    return folder


def _measured(argv: list[str], work: Path) -> tuple[float, int, str]:
    """Run a sketchpipe command in its own process; return its seconds, peak RSS and output."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_MEASURED, *argv], cwd=work, capture_output=True, text=True, timeout=7200
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH"))
    _, seconds, rss = line.split()
    return float(seconds), int(rss), done.stdout


def _model_limits(uri: str, sketches: list[np.ndarray], count: int) -> tuple[float, float]:
    """Return sketches/s of the serving model alone, the input padded in memory beforehand: ``model.predict``
    on batches of 256 in input order (the anchor), and one traced graph on length-sorted batches of 256
    (the most the model can do: almost no padding)."""
    from pipeline import registry, tracking
    from pipeline.evaluation import compiled_inference
    from pipeline.features import pad_batch
    from pipeline.strokes import drop_noop_points

    model_uri = f"models:/{NAME}@champion"
    local = registry.download_model(tracking.client_for(uri), model_uri, Path(tempfile.mkdtemp()))
    import keras
    import yaml

    conf = yaml.safe_load((Path(local) / "MLmodel").read_text())
    model = keras.saving.load_model(Path(local) / conf["flavors"]["keras"]["data"] / "model.keras", compile=False)
    max_len = int(conf["metadata"]["max_len"])
    chosen = [drop_noop_points(sketches[i % len(sketches)].astype(np.float32))[:max_len] for i in range(count)]
    in_order = [pad_batch(chosen[b : b + 256]) for b in range(0, count, 256)]
    model.predict(in_order[0], verbose=0)
    started = time.perf_counter()
    for batch in in_order:
        model.predict(batch, verbose=0)
    anchor = count / (time.perf_counter() - started)
    del in_order
    order = np.argsort([len(s) for s in chosen], kind="stable")
    batches = [pad_batch([chosen[i] for i in order[b : b + 256]]) for b in range(0, count, 256)]
    infer = compiled_inference(model)
    infer(batches[0])  # traced
    started = time.perf_counter()
    for batch in batches:
        infer(batch).numpy()
    return anchor, count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sketchpipe-bench-scoring"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs when a champion is needed")
    parser.add_argument("--predict-up-to", type=int, default=100_000, help="largest size also run through predict")
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    uri = _ensure_store(work, args.epochs)
    config = ["--tracking-uri", uri]
    model = ["--model-uri", f"models:/{NAME}@champion"]
    sketches = _real_sketches()
    anchor, limit = _model_limits(uri, sketches, min(100_000, max(args.sizes)))
    rows, peaks = [], {}
    for size in sorted(args.sizes):
        folder = _tiled(work / f"tiled-{size}", sketches, size)
        out = work / f"scores-{size}.parquet"
        seconds, rss, _ = _measured(["score", *config, *model, "--output", str(out), str(folder)], work)
        peaks[size] = rss
        rate = size / seconds
        rows.append({"command": "score", "sketches": size, "seconds": round(seconds, 1), "sketches/s": round(rate),
                     "x predict": round(rate / anchor, 3), "x limit": round(rate / limit, 3),
                     "peak RSS MB": rss >> 20})  # fmt: skip
        if size <= args.predict_up_to:
            seconds, rss, _ = _measured(["predict", *config, *model, "--format", "csv", str(folder)], work)
            rows.append({"command": "predict", "sketches": size, "seconds": round(seconds, 1),
                         "sketches/s": round(size / seconds), "x predict": round(size / seconds / anchor, 3),
                         "x limit": round(size / seconds / limit, 3), "peak RSS MB": rss >> 20})  # fmt: skip
        if size == 100_000:
            seconds, rss, _printed = _measured(["monitor", *config, "--scores", str(out)], work)
            rows.append({"command": "monitor", "sketches": size, "seconds": round(seconds, 1), "sketches/s": "",
                         "x predict": "", "x limit": "", "peak RSS MB": rss >> 20})  # fmt: skip
    first = min(100_000, max(args.sizes))
    rows[:0] = [
        {"command": "model.predict, batches in input order", "sketches": first, "seconds": "",
         "sketches/s": round(anchor), "x predict": 1.0, "x limit": round(anchor / limit, 3), "peak RSS MB": ""},
        {"command": "model alone, length-sorted (limit)", "sketches": first, "seconds": "",
         "sketches/s": round(limit), "x predict": round(limit / anchor, 3), "x limit": 1.0, "peak RSS MB": ""},
    ]  # fmt: skip
    extra = {"model_predict_sketches_per_s": anchor, "model_limit_sketches_per_s": limit}
    if len(peaks) > 1:
        extra["rss_ratio_largest_to_smallest"] = peaks[max(peaks)] / peaks[min(peaks)]
        print(f"peak RSS {max(peaks):,} / {min(peaks):,} sketches: {extra['rss_ratio_largest_to_smallest']:.3f}x")
    path = write_results("scoring", {"sizes": args.sizes, "work": str(work), "store": uri}, rows, extra)
    print_table(rows)
    print(json.dumps({"results": str(path)}))


if __name__ == "__main__":
    main()
