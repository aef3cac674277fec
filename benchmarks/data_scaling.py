"""Data stages at scale: ingest, validate, preprocess (sketches/s, peak RSS) and the training input
pipeline against the book's TFRecord pipeline.

    .venv/bin/python benchmarks/data_scaling.py [--sizes 1000000,5000000] [--classes 100]
        [--input-sketches 200000] [--batch-size 64] [--repeats 5]
    .venv/bin/python benchmarks/data_scaling.py --sizes 25875000 --classes 345 --input-sketches 0   # full size

Sketches: real Quick, Draw! drawings when ``../shared/data/quickdraw-raw-345`` is there (the raw
sample, simplified as the published data was: about 7,000 distinct sketches), else synthetic ones;
tiled into sketch-rnn class files of ``size / classes`` sketches each (90% train, 5% valid, 5% test),
each sketch a separate array, as in the published files. Writing them is not timed.

Each stage of each size runs in its own process, started after the previous one finished, so the
peak RSS reported is that stage's own (imports included) and the time is the stage's call alone
(imports excluded). Stages: ingest (sketch-rnn files -> canonical dataset), validate (Great
Expectations over the per-sketch table in chunks, duplicate ids over the whole dataset), preprocess
(normalising scale, normalise and crop, flat feature arrays).

Input pipeline: the first ``--input-sketches`` training sketches of the first size (all of its
training split where that holds fewer), as our features
(``make_dataset``: whole-split shuffle, length buckets, padded batches) and as tutorial-format
TFRecord shards read by the book's pipeline (Geron, Hands-On Machine Learning, chapter 16 exercise:
``TFRecordDataset`` -> shuffle -> ``batch`` -> ``parse_example`` -> ``sparse.to_dense`` -> ``reshape``,
crop to 100 steps), the anchor, built only here. Both are iterated for one epoch, alternating, in
the same process; medians of ``--repeats``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table, write_results

REAL_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "quickdraw-raw-345"
SHARES = {"train": 0.90, "valid": 0.05, "test": 0.05}
DISTINCT_FILES = 10  # class files with their own content; the others are hard links to them (tiled data)


# --- setup (untimed) ---------------------------------------------------------------------------------


def _pool(path: Path) -> str:
    """Write the pool of distinct sketches (flat rows + lengths) to ``path``; return where it came from."""
    import numpy as np

    sketches = []
    source = "synthetic"
    if REAL_SAMPLE.is_dir():
        from pipeline.quickdraw_formats import NDJSON_PREFIXES, class_files, iter_ndjson_records

        files = class_files(REAL_SAMPLE, "*.ndjson", NDJSON_PREFIXES)
        for record in iter_ndjson_records(files, list(files), recognized_only=False):
            strokes = getattr(record, "strokes", None)
            if strokes is not None and len(strokes) >= 2:
                sketches.append(np.asarray(strokes, dtype=np.int16))
        source = f"real ({REAL_SAMPLE.name}, simplified)"
    if not sketches:
        from pipeline.synthetic import SHAPES, synthetic_split

        sketches = [s for name in SHAPES for s in synthetic_split(name, "train", 500, seed=0)]
    np.savez(path, rows=np.concatenate(sketches), lengths=[len(s) for s in sketches])
    return source


def _setup(size: int, classes: int, work: Path, pool_path: Path) -> None:
    """Write sketch-rnn class files of ``size`` sketches over ``classes`` classes into ``work/raw``."""
    import numpy as np

    pool = np.load(pool_path)
    rows, lengths = pool["rows"], pool["lengths"]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    per_class = size // classes
    raw = work / "raw"
    raw.mkdir(parents=True)
    for label in range(classes):
        path = raw / f"class{label:03d}.npz"
        if label >= DISTINCT_FILES:
            os.link(raw / f"class{label % DISTINCT_FILES:03d}.npz", path)
            continue
        arrays = {}
        first = label * 7919
        taken = 0
        for split, share in SHARES.items():
            count = int(per_class * share) if split != "test" else per_class - taken
            picks = (first + taken + np.arange(count)) % len(lengths)
            column = np.empty(count, dtype=object)
            column[:] = [rows[starts[i] : starts[i + 1]].copy() for i in picks]  # one array per sketch
            arrays[split] = column
            taken += count
        np.savez(path, **arrays)


# --- one stage, in its own process --------------------------------------------------------------------


def _settings(work: Path, classes: int):
    from pipeline.config import load_settings

    return load_settings(
        overrides={
            "source": "sketchrnn",
            "data_dir": str(work / "raw"),
            "num_classes": classes,
            "work_dir": str(work / "work"),
            "progress": "off",
        },
        environ={},
    )


def _stage(stage: str, work: Path, classes: int) -> dict:
    from pipeline.config import configure_runtime

    configure_runtime()
    from pipeline.stages import data
    from pipeline.validation import read_report

    settings = _settings(work, classes)
    state_path = work / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if stage == "validate":
        import great_expectations  # noqa: F401 - imported before timing, as the other stages' libraries are
    started = time.perf_counter()
    if stage == "ingest":
        state["dataset"] = str(data.ingest(settings))
    elif stage == "validate":
        state["validation"] = data.validate(settings, Path(state["dataset"])).output_dir
    else:
        state["features"] = str(data.preprocess(settings, read_report(Path(state["validation"]))))
    seconds = time.perf_counter() - started
    state_path.write_text(json.dumps(state))
    from pipeline.dataset import read_info

    info = read_info(Path(state["dataset"]))
    return {"seconds": seconds, "sketches": info.num_sketches, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    """Return this process's peak RSS plus its largest helper's (ingest reads ahead in a second process)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (own + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


# --- the input pipeline against the book's ------------------------------------------------------------


def _subset_features(features: Path, count: int, out: Path) -> Path:
    """Write a features folder holding the first ``count`` training sketches of ``features``."""
    import numpy as np

    (out / "train").mkdir(parents=True)
    offsets = np.load(features / "train" / "offsets.npy")[: count + 1]
    strokes = np.load(features / "train" / "strokes.npy", mmap_mode="r")[: offsets[-1]]
    np.save(out / "train" / "strokes.npy", strokes)
    np.save(out / "train" / "offsets.npy", offsets)
    for name in ("labels", "indices"):
        np.save(out / "train" / f"{name}.npy", np.load(features / "train" / f"{name}.npy")[:count])
    shutil.copy(features / "spec.json", out / "spec.json")
    return out


def _book_shards(features: Path, out: Path, shards: int = 10) -> list[str]:
    """Write the subset's sketches as tutorial-format TFRecord shards (``ink``, ``shape``, ``class_index``)."""
    import numpy as np

    from pipeline.quickdraw_formats import write_tfrecord

    offsets = np.load(features / "train" / "offsets.npy")
    strokes = np.load(features / "train" / "strokes.npy")
    labels = np.load(features / "train" / "labels.npy")
    sketches = [strokes[offsets[i] : offsets[i + 1]] for i in range(len(labels))]
    paths = []
    for shard in range(shards):
        path = out / f"training.tfrecord-{shard:05d}-of-{shards:05d}"
        write_tfrecord(path, sketches[shard::shards], labels[shard::shards])
        paths.append(str(path))
    return paths


def book_dataset(filepaths: list[str], batch_size: int, shuffle_buffer_size: int = 10_000):
    """The book's pipeline (chapter 16 exercise solution), verbatim in its steps."""
    import tensorflow as tf

    def parse(data_batch):
        feature_descriptions = {
            "ink": tf.io.VarLenFeature(dtype=tf.float32),
            "shape": tf.io.FixedLenFeature([2], dtype=tf.int64),
            "class_index": tf.io.FixedLenFeature([1], dtype=tf.int64),
        }
        examples = tf.io.parse_example(data_batch, feature_descriptions)
        flat_sketches = tf.sparse.to_dense(examples["ink"])
        sketches = tf.reshape(flat_sketches, shape=[tf.size(data_batch), -1, 3])
        lengths = examples["shape"][:, 0]
        labels = examples["class_index"][:, 0]
        return sketches, lengths, labels

    dataset = tf.data.TFRecordDataset(filepaths, num_parallel_reads=5)
    dataset = dataset.shuffle(shuffle_buffer_size)
    dataset = dataset.batch(batch_size)
    dataset = dataset.map(parse, num_parallel_calls=5)
    dataset = dataset.prefetch(1)
    return dataset.map(lambda inks, lengths, labels: (inks[:, :100], labels))  # crop_long_sketches


def _input(work: Path, count: int, batch_size: int, repeats: int) -> dict:
    from pipeline.config import configure_runtime

    configure_runtime()
    import numpy as np
    import tensorflow as tf  # noqa: F401

    from pipeline.features import make_dataset

    features = Path(json.loads((work / "state.json").read_text())["features"])
    # the training split is only part of the first size: asked for more, the comparison takes all of it
    count = min(count, len(np.load(features / "train" / "labels.npy", mmap_mode="r")))
    subset = _subset_features(features, count, work / "input" / "ours")
    shards = _book_shards(subset, work / "input" / "book")

    def epoch(dataset) -> tuple[float, int]:
        started = time.perf_counter()
        seen = sum(int(labels.shape[0]) for _, labels in dataset)
        return time.perf_counter() - started, seen

    ours_dataset = make_dataset(subset, "train", batch_size, shuffle=True, seed=0)
    book = book_dataset(shards, batch_size)
    epoch(ours_dataset), epoch(book)  # warm-up: tracing, first reads
    ours_runs, book_runs = [], []
    for _ in range(repeats):  # later epochs of the same datasets, as in training
        seconds, seen = epoch(ours_dataset)
        ours_runs.append(seen / seconds)
        seconds, seen_book = epoch(book)
        book_runs.append(seen_book / seconds)
        assert seen == seen_book == count, (seen, seen_book, count)
    ours, book = ours_runs, book_runs
    return {
        "sketches": count,
        "batch_size": batch_size,
        "ours_sketches_per_s": statistics.median(ours),
        "book_sketches_per_s": statistics.median(book),
        "ratio": statistics.median(ours) / statistics.median(book),
        "ours_runs": ours,
        "book_runs": book,
    }


# --- driver -------------------------------------------------------------------------------------------


def _child(*args: str) -> dict:
    child = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if child.returncode != 0:
        sys.stderr.write(child.stderr[-4000:])
        raise SystemExit(f"benchmark step {args} failed")
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,5000000")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--input-sketches", type=int, default=200_000, help="0 skips the input pipeline comparison")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", help="where the files go (a temporary folder by default; removed after)")
    parser.add_argument("--name", default="data_scaling", help="results file name")
    parser.add_argument("--keep", action="store_true", help="keep each size's files (needs --work)")
    parser.add_argument("--internal", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.internal:
        kind, *rest = args.internal
        if kind == "pool":
            print(json.dumps({"source": _pool(Path(rest[0]))}))
        elif kind == "setup":
            started = time.perf_counter()
            _setup(int(rest[0]), args.classes, Path(rest[1]), Path(rest[2]))
            print(json.dumps({"seconds": time.perf_counter() - started}))
        elif kind == "stage":
            print(json.dumps(_stage(rest[0], Path(rest[1]), args.classes)))
        else:
            print(json.dumps(_input(Path(rest[0]), args.input_sketches, args.batch_size, args.repeats)))
        return

    root = Path(args.work or tempfile.mkdtemp(prefix="data-scaling-"))
    root.mkdir(parents=True, exist_ok=True)
    pool_path = root / "pool.npz"
    source = _child("--internal", "pool", str(pool_path))["source"]
    import numpy as np

    mean_points = float(np.load(pool_path)["lengths"].mean())
    print(f"sketches: {source}, {mean_points:.1f} points on average")
    rows, input_row = [], None
    try:
        for position, size in enumerate(int(s) for s in args.sizes.split(",")):
            work = root / f"size-{size}"
            shutil.rmtree(work, ignore_errors=True)
            _child("--classes", str(args.classes), "--internal", "setup", str(size), str(work), str(pool_path))
            row = {"sketches": size}
            total = 0.0
            for stage in ("ingest", "validate", "preprocess"):
                result = _child("--classes", str(args.classes), "--internal", "stage", stage, str(work))
                row["sketches"] = result["sketches"]
                row[f"{stage}_per_s"] = round(result["sketches"] / result["seconds"])
                row[f"{stage}_rss_mb"] = round(result["peak_rss_mb"])
                total += result["seconds"]
            row["three_stages_s"] = round(total, 1)
            rows.append(row)
            print_table([row])
            if position == 0 and args.input_sketches:
                input_row = _child(
                    "--internal", "input", str(work), "--input-sketches", str(args.input_sketches),
                    "--batch-size", str(args.batch_size), "--repeats", str(args.repeats),
                )  # fmt: skip
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)
    if len(rows) >= 2:
        for stage in ("ingest", "validate", "preprocess"):
            rows[-1][f"{stage}_rss_vs_first"] = round(rows[-1][f"{stage}_rss_mb"] / rows[0][f"{stage}_rss_mb"], 2)
    params = {**vars(args), "pool": source, "mean_points": round(mean_points, 1)}
    params.pop("internal")
    path = write_results(args.name, params, rows, {"input_pipeline": input_row})
    print()
    print_table(rows)
    if input_row:
        print()
        print_table([{k: v for k, v in input_row.items() if not k.endswith("_runs")}])
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
