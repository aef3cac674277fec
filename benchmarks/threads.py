"""Training throughput of the real-data profile under TensorFlow thread settings, each in its own process.

    .venv/bin/python benchmarks/threads.py [--config configs/quickdraw.yaml] [--architecture wavenet]
        [--threads 0/0,1/0] [--rounds 3] [--epochs 6] [--name threads]

A process sizes TensorFlow's thread pools once, before its first operation, so every setting
(``INTRA/INTER``: ``intra_op_threads`` / ``inter_op_threads``, 0 = TensorFlow's own choice) trains in a
process of its own: the pipeline's ``train_model`` on the real sample
(``../shared/data/quickdraw-raw-345``, prepared as ``real_accuracy.py`` does), sketches per second over
the epochs after the first, the validation pass excluded. The settings take turns, round after round
(A B A B ...), so that a machine that speeds up or slows down during the run moves every setting
alike; the table reports each setting's median over the rounds, every round's number and the ratio
to the first setting (the anchor: TensorFlow's default, ``0/0``). Results:
``benchmarks/results/<name>.json`` and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import real_accuracy
from _common import print_table, write_results

HERE = Path(__file__).resolve().parent


def worker(args: argparse.Namespace) -> None:
    """Train once under ``args.threads`` (one ``INTRA/INTER``) and print the result as one JSON line."""
    intra, inter = _setting(args.threads)
    ours, _, features = real_accuracy.prepare(
        Path(args.work_dir), args.config, args.epochs, intra_op_threads=intra, inter_op_threads=inter
    )
    row = real_accuracy.measure(args.architecture, ours, features, Path(tempfile.mkdtemp(dir=args.work_dir)))
    print(json.dumps({"train_sketches_per_s": row["train_sketches_per_s"]}))


def _setting(text: str) -> tuple[int, int]:
    """Return ``(intra, inter)`` from ``INTRA/INTER`` (whole numbers, 0: TensorFlow's choice)."""
    intra, _, inter = text.partition("/")
    if not (intra.isdigit() and inter.isdigit()):
        raise SystemExit(f"--threads: expected INTRA/INTER settings such as 1/0, got {text!r}")
    return int(intra), int(inter)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickdraw.yaml")
    parser.add_argument("--architecture", default="wavenet")
    parser.add_argument("--threads", default="0/0,1/0", help="INTRA/INTER settings, comma-separated; the first: anchor")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--name", default="threads")
    parser.add_argument("--work-dir", default=None, help="default: a new temporary folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not real_accuracy.REAL_SAMPLE.resolve().is_dir():
        raise SystemExit(f"no real sample at {real_accuracy.REAL_SAMPLE.resolve()} (the shared data folder)")
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="threads-")
    if args.worker:
        worker(args)
        return
    settings = args.threads.split(",")
    for setting in settings:
        _setting(setting)  # a typo stops here, not in the first worker
    # each worker's pools are its setting's alone (0: TensorFlow's choice), not a TF_NUM_* of this shell
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
    speeds: dict[str, list[float]] = {s: [] for s in settings}
    for round_ in range(args.rounds):
        for setting in settings:
            command = [sys.executable, str(HERE / "threads.py"), "--worker", "--threads", setting]
            command += ["--config", args.config, "--architecture", args.architecture, "--epochs", str(args.epochs)]
            done = subprocess.run([*command, "--work-dir", args.work_dir], capture_output=True, text=True, env=env)
            if done.returncode:
                raise SystemExit(f"{setting} (round {round_ + 1}) failed:\n{done.stderr[-3000:]}")
            speeds[setting].append(json.loads(done.stdout.strip().splitlines()[-1])["train_sketches_per_s"])
            print(f"round {round_ + 1}, {setting}: {speeds[setting][-1]:,.0f} sketches/s", flush=True)
    median = {s: statistics.median(v) for s, v in speeds.items()}
    rows = [
        {
            "intra/inter": s,
            "median_sketches_per_s": median[s],
            "x_anchor": median[s] / median[settings[0]],
            "rounds": " ".join(f"{v:.0f}" for v in speeds[s]),
        }
        for s in settings
    ]
    path = write_results(args.name, {k: v for k, v in vars(args).items() if k != "worker"}, rows)
    print()
    print_table(rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
