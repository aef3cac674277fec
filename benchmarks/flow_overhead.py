"""Overhead of the whole training flow (Prefect + validation + MLflow) over a bare Keras ``fit``.

    .venv/bin/python benchmarks/flow_overhead.py [--per-class 800] [--epochs 5] [--repeats 3]

Both sides train the same architecture on the same tf.data tensors for the same epochs. The bare
side is ``model.fit`` alone. The flow side is one ``training_pipeline`` run (ingest, GX validation and
preprocessing recomputed, not served from Prefect's cache; training with callbacks and MLflow
logging; evaluation; registration; promotion), timed after a warm-up flow has started Prefect's
ephemeral server and the MLflow store's schema migration has run (a deployed setup has both); the
server start is reported on its own. Bare fits and flow runs alternate ``--repeats`` times and the
medians are reported, because one fit on a shared 2-core machine varies by several seconds.

The overhead is a fixed part (data stages, evaluation, registration, promotion, task orchestration)
plus a part proportional to training (callbacks, per-epoch logging). The last row solves for the bare
fit time at which the whole flow's overhead falls to 10%. A second table gives each Prefect task's
median run time, to show where the fixed part goes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import prepared_features, print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--architecture", default="lstm")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    overrides = {
        "architectures": args.architecture,
        "epochs": args.epochs,
        "early_stopping_patience": args.epochs + 1,  # both sides run every epoch
        "lr_patience": args.epochs + 1,  # at one rate
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
    }
    settings, features = prepared_features(work, args.per_class, **overrides)

    import keras
    import mlflow
    from prefect import flow
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.training_pipeline import training_pipeline
    from pipeline.features import make_dataset, read_spec
    from pipeline.models import build_model
    from pipeline.stages import training
    from pipeline.training import compile_model

    spec = read_spec(features)
    config = training.training_config(settings, args.architecture)

    def bare_fit(epochs: int) -> float:
        keras.utils.set_random_seed(config.seed)
        model = build_model(args.architecture, len(spec.classes), config.model_params)
        compile_model(model, config.learning_rate, config.clipnorm)
        train = make_dataset(features, "train", config.batch_size, shuffle=True, seed=config.seed)
        valid = make_dataset(features, "valid", config.batch_size)
        started = time.perf_counter()
        model.fit(train, validation_data=valid, epochs=epochs, shuffle=False, verbose=0)
        return time.perf_counter() - started

    # warm TensorFlow up first: the flow's fit runs in an already warm process, so a cold bare fit
    # would flatter the flow
    bare_fit(1)
    mlflow.MlflowClient(overrides["tracking_uri"]).search_experiments()  # a deployed store is already migrated

    @flow
    def warm_up() -> None:
        """Start the ephemeral Prefect server."""

    started = time.perf_counter()
    warm_up()
    server_start = time.perf_counter() - started

    flow_overrides = {
        **overrides,
        "work_dir": str(work),
        "num_classes": 8,
        "synthetic_per_split": dict(settings.synthetic_per_split),
    }
    bare, in_flow, whole = [], [], []
    task_seconds: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        bare.append(bare_fit(args.epochs))
        with temporary_settings({PREFECT_TASKS_REFRESH_CACHE: True}):  # validation is part of the overhead
            started = time.perf_counter()
            state = training_pipeline(overrides=flow_overrides, return_state=True)
            whole.append(time.perf_counter() - started)
        in_flow.append(state.result().rows[0].train_seconds)
        for name, seconds in _task_seconds(state.state_details.flow_run_id).items():
            task_seconds.setdefault(name, []).append(seconds)

    bare_s, in_flow_s, whole_s = (statistics.median(x) for x in (bare, in_flow, whole))
    proportional = max(0.0, (in_flow_s - bare_s) / bare_s)
    fixed = whole_s - in_flow_s
    break_even = fixed / (0.10 - proportional) if proportional < 0.10 else float("inf")

    def pct(seconds: float) -> float:
        return 100 * (seconds - bare_s) / bare_s

    rows = [
        {"what": "bare model.fit", "median_s": bare_s, "runs_s": _runs(bare), "overhead_pct": 0.0},
        {
            "what": "fit inside the flow (callbacks + MLflow)",
            "median_s": in_flow_s,
            "runs_s": _runs(in_flow),
            "overhead_pct": pct(in_flow_s),
        },
        {
            "what": "whole training_pipeline flow",
            "median_s": whole_s,
            "runs_s": _runs(whole),
            "overhead_pct": pct(whole_s),
        },
        {"what": "fixed part (flow - fit in flow)", "median_s": fixed, "runs_s": "", "overhead_pct": float("nan")},
        {"what": "bare fit at which flow overhead = 10%", "median_s": break_even, "runs_s": "", "overhead_pct": 10.0},
        {"what": "(Prefect server start, once)", "median_s": server_start, "runs_s": "", "overhead_pct": float("nan")},
    ]
    tasks = [
        {"task": name, "median_s": statistics.median(seconds), "runs_s": _runs(seconds)}
        for name, seconds in task_seconds.items()
    ]
    path = write_results(
        "flow_overhead", {**vars(args), "train_sketches": spec.counts["train"]}, rows, extra={"tasks": tasks}
    )
    print_table(rows)
    print("\nPrefect task run times inside the flow (plot-evaluation runs beside register and promote):\n")
    print_table(tasks)
    print(f"\nwritten: {path}")


def _runs(seconds: list[float]) -> str:
    return " ".join(f"{s:.1f}" for s in seconds)


def _task_seconds(flow_run_id) -> dict[str, float]:
    """Return task name -> run time of one flow run's task runs, in the order they started."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = sorted(runs, key=lambda r: r.start_time or r.expected_start_time)
    # run names end in a random suffix or the architecture: "validate-318", "train-lstm"
    return {run.name.rsplit("-", 1)[0]: run.total_run_time.total_seconds() for run in runs}


if __name__ == "__main__":
    main()
