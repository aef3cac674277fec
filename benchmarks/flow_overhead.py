"""Overhead of the whole training flow (Prefect + validation + MLflow) over a bare Keras ``fit``.

    .venv/bin/python benchmarks/flow_overhead.py [--per-class 800] [--epochs 5] [--architecture lstm]

Both sides train the same architecture on the same tf.data tensors for the same epochs. The bare
side is ``model.fit`` alone. The flow side is one ``training_pipeline`` run (ingest of unchanged data,
GX validation, preprocessing, training with callbacks and MLflow logging, evaluation, registration,
promotion), timed after a warm-up flow has started Prefect's ephemeral server and the MLflow store's
schema migration has run (a deployed setup has both); the server start is reported on its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import prepared_features, print_table, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=800)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--architecture", default="lstm")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    overrides = {
        "architectures": args.architecture,
        "epochs": args.epochs,
        "early_stopping_patience": args.epochs + 1,  # both sides run every epoch
        "tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
    }
    settings, features = prepared_features(work, args.per_class, **overrides)

    import keras
    from prefect import flow

    from flows.training_pipeline import training_pipeline
    from pipeline import stages
    from pipeline.features import make_dataset, read_spec
    from pipeline.models import build_model
    from pipeline.training import compile_model

    spec = read_spec(features)
    config = stages.training_config(settings, args.architecture)
    keras.utils.set_random_seed(config.seed)
    model = compile_model(build_model(args.architecture, len(spec.classes), config.model_params), 3e-3, 1.0)
    train = make_dataset(features, "train", config.batch_size, shuffle=True, seed=config.seed)
    valid = make_dataset(features, "valid", config.batch_size)
    # warm TensorFlow up first: the flow's fit runs in an already warm process, so a cold bare fit
    # would flatter the flow
    warm = compile_model(build_model(args.architecture, len(spec.classes), config.model_params), 3e-3, 1.0)
    warm.fit(train, validation_data=valid, epochs=1, shuffle=False, verbose=0)
    started = time.perf_counter()
    model.fit(train, validation_data=valid, epochs=args.epochs, shuffle=False, verbose=0)
    bare = time.perf_counter() - started

    import mlflow

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
    started = time.perf_counter()
    result = training_pipeline(overrides=flow_overrides)
    whole = time.perf_counter() - started
    train_in_flow = result.rows[0].train_seconds

    rows = [
        {"what": "bare model.fit", "seconds": bare, "overhead_pct": 0.0},
        {
            "what": "fit inside the flow (callbacks + MLflow)",
            "seconds": train_in_flow,
            "overhead_pct": 100 * (train_in_flow - bare) / bare,
        },
        {"what": "whole training_pipeline flow", "seconds": whole, "overhead_pct": 100 * (whole - bare) / bare},
        {"what": "(Prefect ephemeral server start, once)", "seconds": server_start, "overhead_pct": float("nan")},
    ]
    path = write_results("flow_overhead", {**vars(args), "train_sketches": spec.counts["train"]}, rows)
    print_table(rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
