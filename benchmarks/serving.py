"""Serving under load: ``sketchpipe serve-model`` beside plain ``mlflow models serve`` on the same version.

Both servers are started by this script on 127.0.0.1, one after the other (they would share the same two
cores), and sent the documented request (``dataframe_records``, two real drawings of random length each,
from ``../shared/data/quickdraw-raw-345``) by 1, 10 and 50 concurrent clients (threads) for a bounded
time each. Then, with a load running against ``serve-model``, ``sketchpipe promote --version N`` moves
the champion: the table says how long until ``GET /model`` names N, and how many requests failed across
the swap. Last, the limit: the model's own batch throughput in this process (256 sketches a call).

    .venv/bin/python benchmarks/serving.py                      # trains a real-data model first if needed
    .venv/bin/python benchmarks/serving.py --work DIR --seconds 20

The store is ``DIR/mlflow/mlflow.db``; without a champion there, it first runs
``sketchpipe run --config configs/quickdraw.yaml --source ndjson --data-dir ../shared/data/quickdraw-raw-345
--epochs 2`` in DIR. The swap needs a second version: one is registered from the champion's files.
Writes ``benchmarks/results/serving.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import print_table, write_results

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "quickdraw-raw-345"
NAME = "quickdraw-sketch-classifier"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _cli(*argv: str, work: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv], cwd=work, capture_output=True, text=True, check=True, **kwargs
    )


def _ensure_store(work: Path, epochs: int) -> str:
    """Return the store's URI, training the real-data profile there first if it has no champion."""
    import mlflow

    uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    if (work / "mlflow" / "mlflow.db").is_file():
        client = mlflow.MlflowClient(uri, uri)
        try:
            client.get_model_version_by_alias(NAME, "champion")
            return uri
        except mlflow.exceptions.MlflowException:
            pass
    print(f"training the real-data profile on {REAL} ({epochs} epochs) in {work} ...", flush=True)
    _cli("run", "--config", str(REPO / "configs" / "quickdraw.yaml"), "--source", "ndjson", "--data-dir", str(REAL),
         "--epochs", str(epochs), work=work, timeout=3600)  # fmt: skip
    return uri


def _second_version(uri: str) -> tuple[str, str]:
    """Return (champion version, another version of the same files), registering the other if needed."""
    import mlflow

    client = mlflow.MlflowClient(uri, uri)
    champion = client.get_model_version_by_alias(NAME, "champion")
    for version in client.search_model_versions(f"name = '{NAME}'"):
        if version.version != champion.version and version.tags.get("label_space") == champion.tags.get("label_space"):
            return str(champion.version), str(version.version)
    copy = client.create_model_version(NAME, champion.source, run_id=champion.run_id, tags=champion.tags)
    return str(champion.version), str(copy.version)


def _requests_of(count: int, seed: int) -> list[bytes]:
    """Return ``count`` request bodies of two random real drawings each (the documented request form)."""
    from pipeline.serving import read_sketch_files

    sketches = list(read_sketch_files(sorted(str(p) for p in REAL.glob("*.ndjson"))).values())
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        pair = rng.sample(sketches, 2)
        records = [{"strokes": sketch.astype(int).tolist()} for sketch in pair]
        bodies.append(json.dumps({"dataframe_records": records, "params": {"k": 3}}).encode())
    return bodies


def _load(url: str, bodies: list[bytes], clients: int, seconds: float, timeout: float) -> dict:
    """Send requests from ``clients`` threads for ``seconds``; return throughput, latency and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        rng = random.Random(index)
        while time.monotonic() < stop:
            body = rng.choice(bodies)
            started = time.perf_counter()
            try:
                answer = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=timeout)
                ok = answer.status_code == 200 and len(answer.json()["predictions"]) == 2
                reason = None if ok else f"HTTP {answer.status_code}"
            except (requests.RequestException, ValueError, KeyError) as exc:
                reason = type(exc).__name__
            with lock:
                if reason is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors.append(reason)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout + 5)
    wall = time.perf_counter() - started
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "requests_per_s": len(latencies) / wall,
        "sketches_per_s": 2 * len(latencies) / wall,
        "p50_ms": 1000 * quantiles[49],
        "p95_ms": 1000 * quantiles[94],
        "p99_ms": 1000 * quantiles[98],
    }


class _Server:
    """A server process on 127.0.0.1, its output in a log file, stopped on exit."""

    def __init__(self, command: list[str], work: Path, env: dict, log: Path):
        self.log = log
        self.out = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, cwd=work, env=env, stdout=self.out, stderr=subprocess.STDOUT)

    def wait_ready(self, url: str, timeout: float = 300) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{url} did not answer within {timeout} s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.out.close()


def _promote(work: Path, env: dict, version: str) -> None:
    """Move the champion the way a user does: ``sketchpipe promote --version N``."""
    subprocess.run([sys.executable, "-m", "flows.cli", "promote", "--config", str(work / "serving.yaml"), "--version",
                    version], cwd=work, env=env, check=True, capture_output=True, timeout=120)  # fmt: skip


def _swap(work: Path, env: dict, port: int, bodies: list[bytes], target: str, seconds: float) -> dict:
    """Promote ``target`` while 10 clients load the server; return how long until ``GET /model`` named it."""
    result: dict = {}
    loader = threading.Thread(
        target=lambda: result.update(_load(f"http://127.0.0.1:{port}/invocations", bodies, 10, seconds, 60))
    )
    loader.start()
    time.sleep(seconds / 4)
    _promote(work, env, target)
    promoted = time.monotonic()
    seen = None
    while time.monotonic() - promoted < 60:
        if requests.get(f"http://127.0.0.1:{port}/model", timeout=5).json()["version"] == target:
            seen = time.monotonic() - promoted
            break
        time.sleep(0.1)
    loader.join()
    return {"version": target, "seconds_until_served": seen, **result}


def _model_limit(uri: str, bodies: list[bytes]) -> float:
    """Return the champion's own throughput (sketches/s) in batches of 256, in this process."""
    from pipeline.config import load_settings
    from pipeline.evaluation import compiled_inference
    from pipeline.features import pad_batch
    from pipeline.serving import load_classifier

    settings = load_settings(overrides={"tracking_uri": uri, "registered_model_name": NAME}, environ={})
    classifier = load_classifier(settings)
    infer = compiled_inference(classifier.model)
    sketches = [s["strokes"] for body in bodies for s in json.loads(body)["dataframe_records"]]
    import numpy as np

    batches = [
        pad_batch([np.asarray(s, np.float32)[: classifier.max_len] for s in sketches[i : i + 256]])
        for i in range(0, len(sketches) - 255, 256)
    ]
    infer(batches[0])
    started = time.perf_counter()
    for batch in batches:
        infer(batch).numpy()
    return 256 * len(batches) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/sketchpipe-serving-benchmark"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs if a model must be trained first")
    parser.add_argument("--seconds", type=float, default=20, help="load time per server and client count")
    parser.add_argument("--clients", default="1,10,50")
    parser.add_argument("--name", default="serving")
    args = parser.parse_args()
    if not REAL.is_dir():
        sys.exit(f"needs the real sample at {REAL}")
    args.work.mkdir(parents=True, exist_ok=True)
    uri = _ensure_store(args.work, args.epochs)
    champion, other = _second_version(uri)
    bodies = _requests_of(400, seed=0)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}  # fmt: skip
    config = args.work / "serving.yaml"
    config.write_text(f"registered_model_name: {NAME}\ntracking_uri: {uri}\n")
    rows = []
    swap = None
    servers = {
        "sketchpipe serve-model": [sys.executable, "-m", "flows.cli", "serve-model", "--config", str(config),
                                   "--poll-seconds", "2"],
        "mlflow models serve": [sys.executable, "-m", "mlflow", "models", "serve", "-m",
                                f"models:/{NAME}/{champion}", "--env-manager", "local", "--host", "127.0.0.1"],
    }  # fmt: skip
    for server, command in servers.items():
        port = _free_port()
        running = _Server([*command, "--port", str(port)], args.work, env, args.work / f"{server.split()[0]}.log")
        try:
            start_seconds = running.wait_ready(f"http://127.0.0.1:{port}/ping")
            url = f"http://127.0.0.1:{port}/invocations"
            _load(url, bodies, 2, 3, 60)  # warm-up, not counted
            for clients in [int(c) for c in args.clients.split(",")]:
                row = {"server": server, "clients": clients, **_load(url, bodies, clients, args.seconds, 60)}
                row["start_s"] = start_seconds
                rows.append(row)
                print_table([row])
            if server.startswith("sketchpipe"):
                swap = _swap(args.work, env, port, bodies, other, args.seconds)
                _promote(args.work, env, champion)
        finally:
            running.stop()
    limit = _model_limit(uri, bodies)
    ours = {r["clients"]: r for r in rows if r["server"].startswith("sketchpipe")}
    anchor = {r["clients"]: r for r in rows if r["server"].startswith("mlflow")}
    ratios = {c: ours[c]["requests_per_s"] / anchor[c]["requests_per_s"] for c in ours if anchor.get(c)}
    path = write_results(
        args.name,
        {"seconds": args.seconds, "clients": args.clients, "model": f"models:/{NAME}/{champion}",
         "sketches_per_request": 2},
        rows,
        {"swap": swap, "model_sketches_per_s": limit, "requests_per_s_ratio": ratios},
    )  # fmt: skip
    print()
    print_table(rows)
    print(f"\nrequests/s against mlflow models serve: {', '.join(f'{c} clients {r:.1f}x' for c, r in ratios.items())}")
    if swap:
        print(
            f"swap to version {swap['version']}: named by GET /model after {swap['seconds_until_served']} s; "
            f"{swap['errors']} errors in {swap['requests']} requests across it"
        )
    print(f"the model alone: {limit:,.0f} sketches/s in batches of 256\nresults: {path}")


if __name__ == "__main__":
    main()
