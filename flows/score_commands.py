"""The ``score`` and ``monitor`` commands of the ``sketchpipe`` CLI."""

from __future__ import annotations

import argparse
import json

from pipeline.config import ConfigError


def add_parsers(commands, positive, non_negative) -> None:
    """Add ``score`` and ``monitor`` to the CLI's subcommands."""
    score = commands.add_parser(
        "score", help="score sketch files with a registered model into Parquet (a Prefect flow, tracked in MLflow)"
    )
    score.add_argument("--config", metavar="FILE", help="YAML settings file (default: ./sketchpipe.yaml)")
    score.add_argument("--tracking-uri", dest="tracking_uri", metavar="URI", help="MLflow tracking URI")
    score.add_argument(
        "--model-uri", metavar="URI", help="models:/NAME/VERSION or models:/NAME@ALIAS (default: champion)"
    )
    score.add_argument("--output", required=True, metavar="FILE.parquet", help="the scores table to write")
    score.add_argument("--top-k", type=positive, default=3, metavar="K", help="classes kept per sketch (default 3)")
    score.add_argument(
        "--parts", type=positive, metavar="N", help="parts scored at once by the task runner (default: one per core)"
    )
    score.add_argument("--task-runner", dest="task_runner", metavar="NAME", help="thread (default), dask or ray")
    score.add_argument(
        "inputs", nargs="+", metavar="INPUT",
        help=".ndjson[.gz] (simplified or raw), .npz (sketch-rnn), .tfrecord, .json (stroke-3) files or folders",
    )  # fmt: skip

    monitor = commands.add_parser(
        "monitor", help="drift of a scored batch against its model's reference profile (Evidently report)"
    )
    monitor.add_argument("--config", metavar="FILE", help="YAML settings file (default: ./sketchpipe.yaml)")
    monitor.add_argument("--tracking-uri", dest="tracking_uri", metavar="URI", help="MLflow tracking URI")
    monitor.add_argument("--scores", required=True, metavar="FILE.parquet", help="a table written by `score`")
    monitor.add_argument(
        "--model-uri", metavar="URI", help="models:/NAME/VERSION whose reference to compare with (default: the scorer)"
    )
    monitor.add_argument(
        "--drift-share", dest="drift_share", type=float, metavar="X",
        help="share of monitored columns that must drift for drift_detected (default 0.3)",
    )  # fmt: skip
    monitor.add_argument(
        "--retrain-on-drift", dest="retrain_on_drift", action="store_const", const=True,
        help="on drift, start the training deployment (training_pipeline/scheduled-training)",
    )  # fmt: skip
    monitor.add_argument(
        "--retrain-data-dir", metavar="DIR", help="with --retrain-on-drift: the training run's data_dir (new data)"
    )


def cmd_score(args: argparse.Namespace) -> None:
    from flows import cli
    from pipeline.stages.scoring import plan, resolve_model
    from pipeline.strokes import StrokeFormatError

    settings, overrides = cli._settings(args, ["tracking_uri", "task_runner"])
    try:  # within seconds, before Prefect or TensorFlow start: the inputs, the output, the model
        parts = plan(settings, args.inputs, args.output, args.parts)
        cli._require_store(settings)
        name, version = resolve_model(settings, args.model_uri)
    except ConfigError as exc:
        cli._fail(f"--{exc.field.replace('_', '-')}: {exc}")
    except StrokeFormatError as exc:
        cli._fail(str(exc))
    cli._import_tensorflow_quietly(settings, args)
    from flows.scoring import score_with_task_runner

    with cli._flow_errors():
        summary = score_with_task_runner(settings, len(parts))(
            parts, args.output, name, version, args.top_k, args.config, overrides
        )
    print(
        f"scored {summary.scored:,} of {summary.records_in:,} sketches with {name} v{version} "
        f"({summary.sketches_per_second:,.0f} sketches/s); {summary.quarantined:,} quarantined"
    )
    print(f"scores: {summary.output}")
    print(f"quarantine: {summary.quarantine}")
    print(f"MLflow run {summary.run_id} in experiment {settings.experiment_name + '-inference'!r}")


def cmd_monitor(args: argparse.Namespace) -> None:
    from flows import cli
    from pipeline.stages.monitoring import drift_paths, reference_of, scored_by
    from pipeline.stages.scoring import resolve_model

    settings, overrides = cli._settings(args, ["tracking_uri", "drift_share", "retrain_on_drift"])
    try:
        scorer = scored_by(args.scores)
        cli._require_store(settings)
        if args.model_uri or scorer is None:
            if not args.model_uri:
                raise ConfigError("model_uri", "the scores file names no model (it holds no row); give --model-uri")
            name, version = resolve_model(settings, args.model_uri)
        else:
            name, version = scorer
        from pipeline.serving import _cache_dir

        reference_of(settings, name, version, _cache_dir(settings, f"models:/{name}/{version}") / "reference")
    except ConfigError as exc:
        cli._fail(f"--{exc.field.replace('_', '-')}: {exc}")
    from flows.scoring import monitor_flow

    retrain = {"data_dir": args.retrain_data_dir} if args.retrain_data_dir else None
    with cli._flow_errors():
        summary, run_id, started = monitor_flow(args.scores, name, version, args.config, overrides, retrain)
    html, summary_path = drift_paths(args.scores)
    verdict = "DRIFT DETECTED" if summary.drift_detected else "no drift"
    print(
        f"{verdict}: {len(summary.drifted_columns)} of {len(summary.columns)} columns drifted "
        f"(share {summary.drift_share:.2f}, threshold {summary.threshold_share:.2f}); "
        f"{summary.current_rows:,} scored vs {summary.reference_rows:,} reference sketches of {name} v{version}"
    )
    for column, result in summary.columns.items():
        mark = "drifted" if result["drifted"] else ""
        print(f"  {column:<16} {result['score']:>9.4f}  {result['method']} (threshold {result['threshold']}) {mark}")
    print(f"report: {html}")
    print(f"summary: {summary_path}")
    print(f"MLflow run {run_id}")
    if started:
        print(f"retraining: started flow run {started} of training_pipeline/scheduled-training")
    if args.verbose:
        print(json.dumps({"drifted_columns": summary.drifted_columns}))
