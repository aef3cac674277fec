"""The whole training flow at the sketch-rnn size: ingest to promotion, every architecture, in one run.

Builds sketch-rnn class files at the official split sizes from the real drawings in
``../shared/data/quickdraw-raw-345`` (each class's drawings tiled: copy n has its first offset moved by n,
so every sketch is a distinct record), then runs ``sketchpipe run`` with the real-data profile
(``configs/quickdraw.yaml``) and a bounded number of batches per epoch, in a process of its own, and
reports each stage's wall time (first start to last end of its Prefect task runs) and the process's peak
resident memory while the stage ran. Then, each in a fresh process, evaluation of one trained serving model
on a tenth of the test split and on all of it (peak memory, sketches/s), beside ``model.predict`` on the
same padded batches, and the size of each architecture's artifacts (its run's and its logged model's).

    .venv/bin/python benchmarks/full_scale.py                    # 345 x (2,000 / 2,500 / 2,500), 7 architectures
    .venv/bin/python benchmarks/full_scale.py --classes 20 --train 200 --valid 100 --test 100 \\
        --architectures lstm,wavenet --work DIR                  # a small run of the same script

Writes ``benchmarks/results/<--name>.json`` and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._common import print_table, write_results  # noqa: E402

REAL = ROOT.parent / "shared" / "data" / "quickdraw-raw-345"
ARCHITECTURES = "wavenet,conv_lstm,lstm,gru,bilstm,simple_rnn,transformer"
MODEL_NAME = "full-scale"


def build_class_files(folder: Path, classes: int, sizes: dict[str, int]) -> Path:
    """Write ``classes`` sketch-rnn files of ``sizes`` sketches per split, tiled from each class's real
    drawings (simplified as ingest simplifies them); kept when a folder of the same sizes is there."""
    from pipeline.serving import read_sketch_files
    from pipeline.strokes import write_sketchrnn_npz

    marker = folder / "sizes.json"
    wanted = {"classes": classes, **sizes}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(REAL.glob("*.ndjson"))[:classes]:
        drawings = [s.astype(np.int16) for s in read_sketch_files([str(path)]).values()]
        splits, copy = {}, 0
        for split, count in sizes.items():
            tiled = []
            for _ in range(count):
                sketch = drawings[copy % len(drawings)].copy()
                sketch[0, 0] += copy // len(drawings)  # the copy's number: a distinct record, the same drawing
                tiled.append(sketch)
                copy += 1
            splits[split] = tiled
        write_sketchrnn_npz(folder / f"{path.stem}.npz", splits)
    marker.write_text(json.dumps(wanted))
    return folder


class Sampler:
    """Samples this process's resident memory every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.5):
        import psutil

        self.process, self.every, self.samples = psutil.Process(), every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.time(), self.process.memory_info().rss))
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self, start: float = 0.0, end: float = float("inf")) -> int:
        return max((rss for t, rss in self.samples if start <= t <= end), default=0)


def flow_phase(args) -> None:
    """Run ``sketchpipe run`` in this process; print one JSON line: stages, peak memory, the runs."""
    import yaml

    from flows.cli import main

    config = yaml.safe_load((ROOT / "configs" / "quickdraw.yaml").read_text())
    config.update(work_dir=str(args.work / "work"), tracking_uri=f"sqlite:///{args.work / 'mlflow.db'}")
    config_file = args.work / "full_scale.yaml"
    config_file.write_text(yaml.safe_dump(config))
    argv = [
        "run", "--config", str(config_file), "--source", "sketchrnn", "--data-dir", str(args.data),
        "--registered-model-name", MODEL_NAME, "--architectures", args.architectures, "--epochs", str(args.epochs),
        "--steps-per-epoch", str(args.steps_per_epoch), "--progress", "off",
    ]  # fmt: skip
    started = time.time()
    with Sampler() as sampler:
        main(argv)
        ended = time.time()
        stages = _stage_windows(started)
    rows = []
    for name, (first, last, runs, busy) in sorted(stages.items(), key=lambda item: item[1][0]):
        rows.append({
            "stage": name, "task_runs": runs, "wall_s": round(last - first, 1), "task_s": round(busy, 1),
            "peak_rss_mb": round(sampler.peak(first, last) / 2**20),
        })  # fmt: skip
    whole = {"stage": "whole flow", "task_runs": sum(r["task_runs"] for r in rows), "wall_s": round(ended - started, 1)}
    rows.append({**whole, "task_s": 0.0, "peak_rss_mb": round(sampler.peak() / 2**20)})
    print("FLOW " + json.dumps(rows), flush=True)


def _stage_windows(since: float) -> dict[str, tuple[float, float, int, float]]:
    """Return stage -> (first start, last end, task runs, summed seconds) of the task runs started since."""
    import datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    after = datetime.datetime.fromtimestamp(since, datetime.UTC)
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=after)), limit=200
        )
    stages: dict[str, tuple[float, float, int, float]] = {}
    for run in sorted(task_runs, key=lambda r: r.start_time or after):  # each task run, from the flow's start
        if run.start_time is not None and run.end_time is not None:
            began, ended = run.start_time.timestamp() - since, run.end_time.timestamp() - since
            print(f"TASK {run.name:<28} {began:8.1f} s -> {ended:8.1f} s", flush=True)
    for run in task_runs:
        if run.start_time is None or run.end_time is None:
            continue
        name = run.task_key.rsplit("-", 1)[0].removesuffix("_task")
        first, last = run.start_time.timestamp(), run.end_time.timestamp()
        seen = stages.get(name, (first, last, 0, 0.0))
        stages[name] = (min(seen[0], first), max(seen[1], last), seen[2] + 1, seen[3] + last - first)
    return stages


def eval_phase(args) -> None:
    """Evaluate one architecture's serving model on the first ``--limit`` test sketches, as the flow's
    evaluation does, then ``model.predict`` on the same padded batches; print one JSON line."""
    from pipeline.config import configure_runtime

    configure_runtime()
    import keras

    from pipeline.dataset import open_split
    from pipeline.evaluation import EVAL_CHUNK_SKETCHES, evaluate_chunks, split_chunks
    from pipeline.features import padded, read_spec, record_indices, segment_starts

    features = Path(args.features)
    spec = read_spec(features)
    model = keras.saving.load_model(args.model, compile=False)
    indices = record_indices(features, "test")[: args.limit]
    labels = np.asarray(open_split(spec.dataset_dir, "test").labels)[indices]
    started = time.perf_counter()
    evaluation, _ = evaluate_chunks(
        model, split_chunks(spec.dataset_dir, indices), labels, len(spec.classes), 0, spec.max_len
    )
    seconds = time.perf_counter() - started
    peak = _high_water_mark()
    # the anchor: model.predict on the batches evaluation made of the first chunks (length-sorted, padded)
    batches = []
    for rows, lengths in split_chunks(spec.dataset_dir, indices[: 4 * EVAL_CHUNK_SKETCHES]):
        starts, order = segment_starts(lengths), np.argsort(lengths, kind="stable")
        batches += [
            padded(rows, starts[order[b : b + 256]], lengths[order[b : b + 256]], spec.max_len)
            for b in range(0, len(order), 256)
        ]
    model.predict(batches[0], verbose=0)
    begun = time.perf_counter()
    for batch in batches:
        model.predict(batch, verbose=0)
    anchor = sum(len(b) for b in batches) / (time.perf_counter() - begun)
    print("EVAL " + json.dumps({
        "sketches": len(indices), "seconds": round(seconds, 1), "sketches_per_s": round(len(indices) / seconds),
        "model_predict_per_s": round(anchor), "x_model_predict": round(len(indices) / seconds / anchor, 2),
        "peak_rss_mb": round(peak / 2**20), "accuracy": round(evaluation.accuracy, 4),
    }), flush=True)  # fmt: skip


def _high_water_mark() -> int:
    """Return this process's peak resident bytes (``VmHWM``: ``ru_maxrss`` would keep, across the exec, the
    peak of the process that started this one)."""
    with open("/proc/self/status") as status:
        return 1024 * next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def _child(phase: str, *extra: str, args) -> dict | list:
    """Run a phase of this script in a fresh process; return what it printed."""
    command = [sys.executable, __file__, "--phase", phase, "--work", str(args.work), *extra]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=6 * 3600)
    tag = {"flow": "FLOW ", "eval": "EVAL "}[phase]
    print("\n".join(line for line in done.stdout.splitlines() if line.startswith("TASK")), flush=True)
    line = next((line for line in done.stdout.splitlines() if line.startswith(tag)), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"{phase} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(line[len(tag) :])


def _serving_model(args, architecture: str) -> Path:
    """Return the serving model file that the flow evaluated for ``architecture``."""
    from pipeline import tracking

    client = tracking.client_for(f"sqlite:///{args.work / 'mlflow.db'}")
    for path in sorted((args.work / "work" / "models").rglob("serving.keras")):
        if client.get_run(path.parent.name).data.tags.get("architecture") == architecture:
            return path
    raise RuntimeError(f"no serving model of {architecture}")


def _artifacts(args) -> list[dict]:
    """Return each registered architecture's artifact bytes: its run's and its logged model's."""
    from pipeline import tracking

    client = tracking.client_for(f"sqlite:///{args.work / 'mlflow.db'}")
    rows = []
    for version in client.search_model_versions(f"name = '{MODEL_NAME}'"):
        run_dir = Path(client.get_run(version.run_id).info.artifact_uri.removeprefix("file://"))
        folders = [run_dir]
        if version.source.startswith("file://"):  # the logged model, beside the run's artifacts
            folders.append(Path(version.source.removeprefix("file://")))
        elif version.model_id:
            folders.append(Path(client.get_logged_model(version.model_id).artifact_location.removeprefix("file://")))
        size = sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file())
        rows.append({"architecture": version.tags.get("architecture", "?"), "version": version.version,
                     "artifacts_mb": round(size / 2**20, 1)})  # fmt: skip
    return sorted(rows, key=lambda r: int(r["version"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--classes", type=int, default=345)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--valid", type=int, default=2500)
    parser.add_argument("--test", type=int, default=2500)
    parser.add_argument("--architectures", default=ARCHITECTURES)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps-per-epoch", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/sketchpipe-full-scale"))
    parser.add_argument("--name", default="full_scale")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the JSON")
    parser.add_argument("--phase", choices=("all", "flow", "eval"), default="all")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--features")
    parser.add_argument("--model")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    args.work = args.work.resolve()
    if args.phase == "flow":
        return flow_phase(args)
    if args.phase == "eval":
        return eval_phase(args)
    if not REAL.is_dir():
        raise SystemExit(f"full_scale: {REAL} is not there (the real sample this benchmark tiles)")
    for leftover in ("work", "mlflow.db"):  # each run from ingest on
        subprocess.run(["rm", "-rf", str(args.work / leftover)], check=True)
    sizes = {"train": args.train, "valid": args.valid, "test": args.test}
    started = time.perf_counter()
    data = build_class_files(args.work / "classes", args.classes, sizes)
    built = time.perf_counter() - started
    stages = _child("flow", "--data", str(data), "--architectures", args.architectures, "--epochs", str(args.epochs),
                    "--steps-per-epoch", str(args.steps_per_epoch), args=args)  # fmt: skip
    features = next((args.work / "work" / "features").rglob("spec.json")).parent
    first = _serving_model(args, args.architectures.split(",")[0])
    total = args.classes * args.test
    evals = []
    for limit in (total // 10, total):
        measured = _child("eval", "--features", str(features), "--model", str(first), "--limit", str(limit), args=args)
        evals.append({"limit": limit, **measured})
    artifacts = _artifacts(args)
    print(f"\nclass files: {args.classes} x {sizes} in {built:.0f} s\n")
    print_table(stages)
    print()
    print_table(evals)
    flat = evals[1]["peak_rss_mb"] / evals[0]["peak_rss_mb"]
    print(f"evaluation peak RSS, all / a tenth of the test split: {flat:.2f}x\n")
    print_table(artifacts)
    params = {**vars(args), "work": str(args.work), "data": str(data), "sizes": sizes}
    params = {k: v for k, v in params.items() if k not in ("phase", "features", "model", "limit", "results")}
    extra = {"evaluation": evals, "evaluation_rss_ratio": round(flat, 2), "artifacts": artifacts, "model": str(first)}
    path = write_results(args.name, params, stages, extra, folder=args.results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
