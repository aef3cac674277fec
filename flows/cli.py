"""The ``sketchpipe`` command line: run, tune, validate, download, predict, promote, serve, serve-model, ui.

It lives with the flows, not in the Prefect-free library: ``run``, ``tune``, ``promote`` and ``serve``
start flows, and the other commands call the library.

Wrong values stop at once with one line naming the flag; nothing is started before the settings
are known to be valid.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import sys
from pathlib import Path
from typing import Any, NoReturn

from pipeline.config import ConfigError, Settings, configure_runtime, load_settings

_DATA_FLAGS = ["source", "data_dir", "classes", "num_classes", "max_per_class", "download"]

# Flags whose value is a setting of the same name (dashes for underscores).
_SETTING_FLAGS = {
    "source": dict(metavar="NAME", help="synthetic (default), sketchrnn, ndjson or tfrecord"),
    "data_dir": dict(metavar="DIR", help="folder of source files (all sources but synthetic)"),
    "classes": dict(metavar="A,B,C", help="comma-separated class names to use"),
    "num_classes": dict(
        metavar="N", type=int, help="use the first N classes (default: all of a real source, 8 synthetic)"
    ),
    "max_per_class": dict(metavar="N", type=int, help="at most N sketches per class and split"),
    "download": dict(
        action="store_true", default=None, help="first fetch missing official class files into --data-dir"
    ),
    "architectures": dict(metavar="A,B", help="comma-separated architectures to train"),
    "epochs": dict(metavar="N", type=int, help="training epochs per architecture"),
    "steps_per_epoch": dict(
        metavar="N", type=int, help="batches per epoch (0: one pass over the training split; default)"
    ),
    "max_parallel_architectures": dict(
        metavar="N", type=int, help="architectures trained and evaluated at once (0: by free memory; default)"
    ),
    "tracking_uri": dict(metavar="URI", help="MLflow tracking URI (default: SQLite store under mlflow/)"),
    "registered_model_name": dict(
        metavar="NAME", help="the registered model that versions go to (one per set of classes)"
    ),
    "task_runner": dict(metavar="NAME", help="thread (default), dask or ray"),
    "progress": dict(metavar="MODE", help="progress bars: auto (when stderr is a terminal; default), on, off"),
}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, and which takes no abbreviation of a flag (``--epoch 2``
    is an error, not ``--epochs 2``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fail(message: str) -> NoReturn:
    print(f"sketchpipe: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _port(text: str) -> int:
    """Return a TCP port given on the command line (1-65535), checked when the flags are parsed."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535 (got {text!r})")
    return int(text)


def _cron(text: str) -> str:
    """Return a cron expression given on the command line, checked by Prefect's own schedule."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=text)
    except ValidationError:
        raise argparse.ArgumentTypeError(f'not a cron expression: {text!r} (five fields, e.g. "0 3 * * *")') from None
    return text


def _version_number(text: str) -> str:
    """Return a model version number given on the command line, checked when the flags are parsed."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a version is a whole number from 1 (got {text!r})")
    return str(int(text))


def _non_negative(text: str) -> float:
    """Return a number of seconds or milliseconds given on the command line (0 or more)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more (got {text!r})")
    return value


def _positive(text: str) -> int:
    """Return a whole number of at least 1 given on the command line."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number from 1 (got {text!r})")
    return int(text)


def _add_setting_flags(parser: argparse.ArgumentParser, names: list[str]) -> None:
    parser.add_argument("--config", metavar="FILE", help="YAML settings file (default: ./sketchpipe.yaml)")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **_SETTING_FLAGS[name])


def _settings(args: argparse.Namespace, names: list[str]) -> tuple[Settings, dict[str, Any]]:
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    try:
        return load_settings(args.config, overrides), overrides
    except ConfigError as exc:
        _fail(f"{_where_set(exc, names)}: {exc}")


def _check_resumable(settings: Settings, run_id: str) -> None:
    """Stop in one line, naming ``--resume``, unless ``run_id`` is a pipeline run of the settings' store."""
    _require_store(settings)
    from mlflow.exceptions import MlflowException

    from pipeline import tracking

    try:
        run = tracking.client_for(settings.resolved_tracking_uri).get_run(run_id)
    except MlflowException:
        _fail(f"--resume: no run {run_id} in the tracking store {settings.resolved_tracking_uri}")
    if run.data.tags.get("pipeline") != "training_pipeline":
        name = run.data.tags.get("mlflow.runName", "?")
        _fail(f"--resume: run {run_id} ({name}) is not a pipeline run; give the id `run` printed at its end")
    if run.info.status == "FINISHED":
        _fail(f"--resume: run {run_id} finished; there is nothing to resume (start a new one without --resume)")


def _make_work_dir(settings: Settings) -> None:
    """Create ``work_dir`` now (the command would, a moment later); see :func:`_make_folder`."""
    _make_folder(Path(settings.work_dir), "work_dir")


def _make_folder(folder: Path, named_by: str) -> None:
    """Create ``folder``, failing in one line that names the flag or setting (``named_by``) when it cannot
    be: a bad path otherwise surfaces as a bare ``FileNotFoundError`` mid-run."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"{named_by}: cannot create {folder} ({exc.strerror or exc})")


def _where_set(exc: ConfigError, flags: list[str], flag_names: dict[str, str] | None = None) -> str:
    """Return where the user set the setting an error is about: the flag, the config file or the
    ``SKETCHPIPE_*`` variable (for a value they did not set, such as one checked against another: the
    flag if this command has one, else the setting's name and where it can be set). A setting's flag is
    ``--<name>`` unless ``flag_names`` says otherwise."""
    field = exc.field
    flag = (flag_names or {}).get(field, f"--{field.replace('_', '-')}")
    if field == "config" or exc.origin == "override":
        return flag
    if exc.origin == "environment":
        return f"SKETCHPIPE_{field.upper()}"
    if exc.origin is not None:
        return f"{field} (in {exc.origin})"
    if field in flags:
        return flag
    return f"{field} (config file or SKETCHPIPE_{field.upper()})"


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every subcommand."""
    parser = _Parser(prog="sketchpipe", description="Train and ship sequence classifiers for Quick, Draw! sketches.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run the training pipeline flow")
    _add_setting_flags(run, list(_SETTING_FLAGS))
    run.add_argument("--resume", metavar="RUN_ID", help="continue a stopped pipeline run (its MLflow run id)")

    tune = commands.add_parser(
        "tune", help="search one architecture's hyperparameters (Optuna study, trials as nested MLflow runs)"
    )
    _add_setting_flags(tune, [n for n in _SETTING_FLAGS if n != "architectures"])
    tune.add_argument("--architecture", required=True, metavar="NAME", help="the architecture to tune")
    tune.add_argument("--trials", required=True, type=_positive, metavar="N", help="finished trials the study needs")
    tune.add_argument("--parallel", type=_positive, default=1, metavar="K", help="trials at once (default 1)")
    tune.add_argument("--study", metavar="NAME", help="study name (default tune-<architecture>-<source>); resumes")
    tune.add_argument(
        "--output", metavar="FILE", help="where the best settings go (default <work_dir>/tuned/<architecture>.yaml)"
    )

    validate = commands.add_parser("validate", help="ingest and validate only; print counts and quarantine")
    _add_setting_flags(validate, _DATA_FLAGS)

    download = commands.add_parser("download", help="fetch official Quick, Draw! class files")
    download.add_argument("--config", metavar="FILE", help="YAML settings file")
    download.add_argument(
        "--format",
        dest="download_format",
        metavar="FORMAT",
        required=True,
        help="sketchrnn (sketch-rnn .npz), sketchrnn-full, simplified or raw (ndjson)",
    )
    chosen = download.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--classes", metavar="A,B", help="comma-separated official class names")
    chosen.add_argument("--all", action="store_true", help="all 345 classes")
    download.add_argument("--dest", metavar="DIR", help="target folder (default: <work_dir>/raw/<format>)")
    download.add_argument("--base-url", metavar="URL", help="bucket URL (default: the public quickdraw_dataset)")
    download.add_argument("--workers", type=int, default=None, metavar="N", help="files fetched at once (default 4)")
    download.add_argument(
        "--progress", metavar="MODE", help="progress bar: auto (when stderr is a terminal; default), on, off"
    )

    predict = commands.add_parser("predict", help="top-3 classes per sketch")
    predict.add_argument("--config", metavar="FILE", help="YAML settings file")
    predict.add_argument("--model-uri", metavar="URI", help="default: models:/<registered name>@champion")
    predict.add_argument("--tracking-uri", dest="tracking_uri", metavar="URI", help="MLflow tracking URI")
    predict.add_argument(
        "--format", dest="output_format", choices=["text", "json", "csv"], default="text",
        help="text (default), json (an object per line) or csv",
    )  # fmt: skip
    predict.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help=".npz (sketch-rnn), .ndjson (Quick, Draw!), .json (stroke-3 or a request body), a folder of them, "
        "or - for stdin",
    )

    promote = commands.add_parser("promote", help="move the champion alias by hand")
    promote.add_argument("--config", metavar="FILE", help="YAML settings file")
    promote.add_argument("--tracking-uri", dest="tracking_uri", metavar="URI", help="MLflow tracking URI")
    which = promote.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", metavar="N", type=_version_number, help="make version N the champion")
    which.add_argument("--rollback", action="store_true", help="return champion to the previous one")

    serve = commands.add_parser("serve", help="serve the training flow as a scheduled deployment")
    _add_setting_flags(serve, list(_SETTING_FLAGS))
    serve.add_argument("--cron", required=True, type=_cron, metavar="EXPR", help='cron schedule, e.g. "0 3 * * *"')

    serve_model = commands.add_parser(
        "serve-model",
        help="serve the champion (or --model-uri) over HTTP: MLflow's /invocations, batched, following the alias",
    )
    serve_model.add_argument("--config", metavar="FILE", help="YAML settings file")
    serve_model.add_argument("--tracking-uri", dest="tracking_uri", metavar="URI", help="MLflow tracking URI")
    serve_model.add_argument(
        "--model-uri", metavar="URI", help="e.g. models:/NAME@challenger or models:/NAME/3 (default: NAME@champion)"
    )
    serve_model.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve_model.add_argument("--port", type=_port, default=5001, help="port (default 5001)")
    serve_model.add_argument(
        "--poll-seconds", type=_non_negative, default=5.0, metavar="S",
        help="how often an alias is looked up; a moved alias is loaded and swapped in (default 5; 0: never)",
    )  # fmt: skip
    serve_model.add_argument(
        "--max-batch", type=_positive, default=256, metavar="N", help="sketches per model call (default 256)"
    )
    serve_model.add_argument(
        "--max-wait-ms", type=_non_negative, default=5.0, metavar="MS",
        help="how long a request waits for others to share its model call (default 5)",
    )  # fmt: skip
    from flows.score_commands import add_parsers

    add_parsers(commands, _positive, _non_negative)
    ui = commands.add_parser("ui", help="the MLflow UI and tracking server on 127.0.0.1 over the configured store")
    ui.add_argument("--config", metavar="FILE", help="YAML settings file")
    ui.add_argument("--tracking-uri", dest="tracking_uri", metavar="URI", help="the store to serve (default mlflow/)")
    ui.add_argument(
        "--backend-store-uri", metavar="URI", help="e.g. postgresql://user@host/mlflow (default: the store)"
    )
    ui.add_argument(
        "--artifacts-destination", metavar="URI", help="e.g. s3://bucket/mlflow (default: mlflow/artifacts)"
    )
    ui.add_argument("--port", type=_port, default=5000, help="port (default 5000)")
    for command in commands.choices.values():
        command.add_argument(
            "--verbose", action="store_true", help="show the libraries' logs live (Prefect's INFO lines, TensorFlow's)"
        )
    return parser


@contextlib.contextmanager
def _flow_errors():
    """Turn a flow's failures that the user can act on into one line: exit 2 for a wrong class selection,
    file or download, or data that failed validation (the message names it), 1 for an unreachable store."""
    from pipeline.download import DownloadError
    from pipeline.ingest import ClassSelectionError
    from pipeline.registry import LabelSpaceError
    from pipeline.strokes import StrokeFormatError
    from pipeline.tracking import TrackingStoreUnavailableError
    from pipeline.validation import DataValidationError

    try:
        yield
    except ClassSelectionError as exc:
        _fail(f"--{exc.field.replace('_', '-')}: {exc}")
    except (StrokeFormatError, DownloadError, LabelSpaceError) as exc:  # the message names the file, class or setting
        _fail(str(exc))
    except DataValidationError as exc:  # the user's data: it names the main reason, a record and the details' file
        _fail(str(exc))
    except TrackingStoreUnavailableError as exc:
        print(f"sketchpipe: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


def _cmd_run(args: argparse.Namespace) -> None:
    settings, overrides = _settings(args, list(_SETTING_FLAGS))
    _make_work_dir(settings)
    if args.resume:
        _check_resumable(settings, args.resume)
    _check_source(settings)
    _import_tensorflow_quietly(settings, args)
    from flows.training_pipeline import pipeline_with_task_runner
    from pipeline.report import promotion_line, results_table

    with _flow_errors():
        result = pipeline_with_task_runner(settings)(
            config_file=args.config, overrides=overrides, resume_run_id=args.resume
        )
    print()
    print(f"dataset: {result.dataset_dir} ({result.records_in} sketches, {result.quarantined} quarantined)")
    print(results_table(result.rows))
    print(f"promoted: {promotion_line(result, settings.registered_model_name)}")
    print(f"MLflow run {result.parent_run_id} in experiment {settings.experiment_name!r}")
    print(f"tracking store: {settings.resolved_tracking_uri} (open it with `sketchpipe ui`)")


def _check_source(settings: Settings) -> None:
    """Stop in one line, before Prefect or TensorFlow start, if the source cannot give a run its classes."""
    from pipeline.stages.data import check_source

    if settings.data_dir and not settings.download and not Path(settings.data_dir).is_dir():
        _fail(f"--data-dir: {settings.data_dir}: no such folder")
    with _flow_errors():
        check_source(settings)


def _cmd_tune(args: argparse.Namespace) -> None:
    names = [n for n in _SETTING_FLAGS if n != "architectures"]
    settings, overrides = _settings(args, names)
    _make_work_dir(settings)
    from pipeline.config import ARCHITECTURES

    if args.architecture not in ARCHITECTURES:
        _fail(f"--architecture: unknown architecture {args.architecture!r}; choose from {', '.join(ARCHITECTURES)}")
    if args.study:
        from pipeline.tuning import check_study_name

        try:
            check_study_name(args.study)
        except ValueError as exc:
            _fail(f"--study: {exc}")
    if args.output:  # written after the last trial: a place it cannot go would waste the whole study
        import os

        target = Path(args.output)
        if target.is_dir():
            _fail(f"--output: {target} is a folder; give a file name, such as {target / 'tuned.yaml'}")
        if not target.parent.is_dir():
            _fail(f"--output: no folder {target.parent} to write {target.name} in")
        if not os.access(target.parent, os.W_OK):
            _fail(f"--output: cannot write in {target.parent}")
    _check_source(settings)
    _import_tensorflow_quietly(settings, args)
    from flows.tuning import tuning_with_task_runner
    from pipeline.tuning import OBJECTIVE, trial_line

    with _flow_errors():
        result = tuning_with_task_runner(settings, args.parallel)(
            architecture=args.architecture,
            trials=args.trials,
            config_file=args.config,
            overrides=overrides,
            parallel=args.parallel,
            study_name=args.study,
            output=args.output,
        )
    best = result["best"]
    print()
    if result["resumed_from"]:
        print(f"study {result['study']!r} resumed with {result['resumed_from']} finished trials")
    for trial in result["trials"]:
        print(trial_line(trial))
    print(f"best: trial {best['number']} ({OBJECTIVE} {best['value']:.4f}) of study {result['study']!r}")
    print(f"best settings: {best['path']} (use them with `sketchpipe run --config {best['path']}`)")
    print(f"MLflow run {result['study_run_id']} in experiment {settings.experiment_name!r} (a nested run per trial)")


def _cmd_validate(args: argparse.Namespace) -> None:
    settings, _ = _settings(args, _DATA_FLAGS)
    _make_work_dir(settings)
    from pipeline.download import DownloadError
    from pipeline.ingest import ClassSelectionError
    from pipeline.stages import data
    from pipeline.strokes import StrokeFormatError
    from pipeline.validation import DataValidationError, read_report

    if settings.source == "tfrecord":  # the shards are read with TensorFlow
        _import_tensorflow_quietly(settings, args)
    try:
        data.download(settings)
        dataset_dir = data.ingest(settings)
    except ClassSelectionError as exc:
        _fail(f"--{exc.field.replace('_', '-')}: {exc}")
    except (DownloadError, StrokeFormatError) as exc:
        _fail(str(exc))
    try:
        report = data.validate(settings, dataset_dir)
    except DataValidationError as exc:
        print(f"FAILED: {exc}")
        report = read_report(data.validation_dir(settings, dataset_dir))
    print(f"dataset: {dataset_dir}")
    skipped = sum(report.skipped.values())
    print(
        f"records in: {report.records_in + skipped}  accepted: {report.accepted}  "
        f"quarantined: {report.quarantined}  skipped: {skipped}"
    )
    for reason, count in sorted(report.skipped.items()):
        print(f"  skipped ({reason}): {count}")
    for expectation, count in sorted(report.failures.items()):
        print(f"  {expectation}: {count}")
    with open(report.quarantine_path) as quarantine:
        for line in quarantine:
            print(f"  quarantined: {line.rstrip()}")
    if not report.success:
        raise SystemExit(2)  # as for any other bad input: the user's data failed its checks


def _cmd_download(args: argparse.Namespace) -> None:
    overrides = {"download_format": args.download_format}
    if args.base_url:
        overrides["download_base_url"] = args.base_url
    if args.workers is not None:
        overrides["download_workers"] = args.workers
    if args.progress:
        overrides["progress"] = args.progress
    try:
        settings = load_settings(args.config, overrides)
    except ConfigError as exc:
        flags = {"download_format": "--format", "download_base_url": "--base-url", "download_workers": "--workers"}
        _fail(f"{_where_set(exc, list(flags), flags)}: {exc}")
    from pipeline import progress
    from pipeline.download import DownloadError, download_classes, resolve_classes

    try:
        names = resolve_classes(None if args.all else [c.strip() for c in args.classes.split(",") if c.strip()])
    except ValueError as exc:
        _fail(f"--classes: {exc}")
    dest = Path(args.dest or Path(settings.work_dir) / "raw" / args.download_format)
    _make_folder(dest, "--dest" if args.dest else "work_dir")
    try:
        files = download_classes(
            names,
            args.download_format,
            dest,
            base_url=settings.download_base_url,
            workers=settings.download_workers,
            retries=settings.io_retries + 2,
            backoff_seconds=settings.retry_backoff_seconds,
            show_progress=progress.enabled(settings.progress),
        )
    except DownloadError as exc:
        _fail(str(exc))
    fetched = [f for f in files if not f.skipped]
    size = sum(f.fetched_bytes for f in fetched)
    print(
        f"{len(files)} {args.download_format} class files in {dest}: {len(fetched)} fetched "
        f"({size / 2**20:.1f} MiB), {len(files) - len(fetched)} already complete"
    )


def _cmd_predict(args: argparse.Namespace) -> None:
    settings, _ = _settings(args, ["tracking_uri"])
    from pipeline.serving import format_predictions, lite_cached, load_classifier, read_sketch_files
    from pipeline.strokes import StrokeFormatError

    try:
        sketches = read_sketch_files(args.files)
    except StrokeFormatError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"{exc.filename}: {exc.strerror}")
    if not args.model_uri:
        _require_store(settings)
    if not lite_cached(settings, args.model_uri):  # from the cache, a LiteRT model needs no TensorFlow
        _check_model_uri(settings, args.model_uri)  # in a second or two, before TensorFlow's import
        _import_tensorflow_quietly(settings, args)
    try:
        classifier = load_classifier(settings, args.model_uri, lite=True)
    except Exception as exc:  # an unknown model, alias or store: one line, not a traceback
        _fail_loading(settings, args.model_uri, exc)
    try:
        classifier.check_range(list(sketches.values()), list(sketches))
    except StrokeFormatError as exc:
        _fail(str(exc))
    print(format_predictions(list(sketches), classifier.top_k(list(sketches.values()), k=3), args.output_format))


def _check_model_uri(settings: Settings, model_uri: str | None) -> None:
    """Stop in one line if the model (the champion by default) is not in the store, before TensorFlow loads."""
    from pipeline import registry, tracking
    from pipeline.serving import champion_uri

    try:
        registry.model_source(tracking.client_for(settings.resolved_tracking_uri), model_uri or champion_uri(settings))
    except Exception as exc:
        _fail_loading(settings, model_uri, exc)


def _fail_loading(settings: Settings, model_uri: str | None, exc: BaseException) -> NoReturn:
    """Stop with one line naming what the user gave: ``--model-uri`` if they gave one, else the store
    (``--tracking-uri``) when it cannot be read, else why its registered model has no champion."""
    if model_uri:
        _fail(f"--model-uri: cannot load {model_uri}: {_short(exc)}")
    _fail_without_champion(settings)  # a readable store: says why there is no champion, and stops
    _fail(f"--tracking-uri: cannot read the champion from {settings.resolved_tracking_uri}: {_short(exc)}")


def _short(exc: BaseException, limit: int = 200) -> str:
    """Return the first line of an error's message, at most ``limit`` characters."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail_without_champion(settings: Settings) -> None:
    """Stop with one line saying why there is no champion to load, if there is none (and what to do)."""
    from pipeline import registry, tracking

    try:
        reason = registry.no_champion_reason(
            tracking.client_for(settings.resolved_tracking_uri), settings.registered_model_name
        )
    except Exception:  # the store itself failed: the caller's message says so
        return
    if reason:
        _fail(reason)


def _require_store(settings: Settings) -> None:
    """Stop with one line if the settings name a SQLite store that does not exist (rather than create one)."""
    uri = settings.resolved_tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        _fail(
            f"--tracking-uri: no tracking store at {uri.removeprefix('sqlite:///')} (train with `sketchpipe run` first)"
        )
    if uri.startswith("sqlite:///"):
        with open(uri.removeprefix("sqlite:///"), "rb") as store:
            if store.read(16) not in (b"SQLite format 3\x00", b""):
                _fail(f"--tracking-uri: {uri.removeprefix('sqlite:///')} is not an SQLite database")
    if not uri.startswith(("http://", "https://")):
        return  # nothing to ask; and a predict served from the cache need not import MLflow (~2 s)
    from pipeline.tracking import TrackingStoreUnavailableError, check_store

    try:
        check_store(uri)  # a server that does not answer: say so, not what MLflow's retries end with
    except TrackingStoreUnavailableError as exc:
        _fail(f"--tracking-uri: {exc}")


def _cmd_promote(args: argparse.Namespace) -> None:
    settings, _ = _settings(args, ["tracking_uri"])
    _require_store(settings)
    if args.version:  # answered in a second or two, before Prefect is imported
        from pipeline import registry, tracking

        try:
            known = registry.version_exists(
                tracking.client_for(settings.resolved_tracking_uri), settings.registered_model_name, args.version
            )
        except Exception as exc:
            _fail(f"--tracking-uri: cannot read the registry at {settings.resolved_tracking_uri}: {_short(exc)}")
        if not known:
            _fail(f"--version: model {settings.registered_model_name!r} has no version {args.version}")
    from prefect.settings import PREFECT_API_URL

    from flows.promotion import promote_model

    # Moving an alias needs no orchestration: without a configured Prefect server, run the flow's
    # function directly rather than start a temporary server for it (~20 s); with one, run the flow
    # there, so that it shows in the Prefect UI.
    promote = promote_model if PREFECT_API_URL.value() else promote_model.fn
    try:
        version = promote(
            version=args.version, rollback=args.rollback, tracking_uri=settings.tracking_uri, config_file=args.config
        )
    except ValueError as exc:
        _fail(str(exc))
    print(f"{settings.registered_model_name} @champion -> version {version}")


def _cmd_serve(args: argparse.Namespace) -> None:
    settings, overrides = _settings(args, list(_SETTING_FLAGS))
    _make_work_dir(settings)
    _import_tensorflow_quietly(settings, args, whole_command=False)
    from prefect import serve

    from flows.deployment import scheduled_deployment

    serve(scheduled_deployment(args.cron, args.config, overrides))


def _cmd_serve_model(args: argparse.Namespace) -> None:
    from pipeline.serving import champion_uri

    settings, _ = _settings(args, ["tracking_uri"])
    _require_store(settings)
    uri = args.model_uri or champion_uri(settings)

    _check_model_uri(settings, args.model_uri)
    _check_can_listen(args.host, args.port)
    _import_tensorflow_quietly(settings, args, whole_command=False)
    from pipeline.model_server import ServerOptions, serve

    options = ServerOptions(poll_seconds=args.poll_seconds, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)

    def ready(model) -> None:
        version = f" version {model.version}" if model.version else ""
        print(
            f"serving {model.name or uri}{version} ({uri}) on http://{args.host}:{args.port}/invocations; "
            f"GET /model says which version answers",
            flush=True,
        )

    serve(settings, uri, options, args.host, args.port, on_ready=ready)


def _check_can_listen(host: str, port: int) -> None:
    """Stop with one line if nothing could listen on ``host:port`` (taken, or not this machine's address),
    before seconds go into loading the model."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(infos[0][4])
    except OSError as exc:
        _fail(f"--host/--port: cannot listen on {host}:{port}: {exc.strerror or exc}")


def _cmd_ui(args: argparse.Namespace) -> None:
    import os

    settings, _ = _settings(args, ["tracking_uri"])
    backend = args.backend_store_uri or settings.resolved_tracking_uri
    if backend.startswith(("http://", "https://")):
        _fail(f"--tracking-uri: {backend} is already a server; open it in a browser")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(args.port)]
    command += ["--backend-store-uri", backend]
    artifacts = args.artifacts_destination or settings.artifact_location
    if artifacts:
        command += ["--artifacts-destination", artifacts]
    if not args.verbose:  # each of the 4 workers would log its start-up, and warn about an MLflow import
        command += ["--uvicorn-opts", "--log-level warning"]
        os.environ["PYTHONWARNINGS"] = "ignore:starlette.middleware.wsgi is deprecated"
    # the server starts its workers by name: this environment's bin/ must be on PATH
    os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    print(f"MLflow UI and tracking server on http://127.0.0.1:{args.port} over {backend}", flush=True)
    os.execv(sys.executable, command)


def _import_tensorflow_quietly(settings: Settings, args: argparse.Namespace, whole_command: bool = True) -> None:
    """Import TensorFlow now, its native runtime's lines (absl, oneDNN, CUDA probes) going to
    ``<work_dir>/logs/tensorflow.log`` instead of the terminal; with ``--verbose``, leave them shown.

    ``TF_CPP_MIN_LOG_LEVEL`` (3 by default, see ``configure_runtime``) silences them in some TensorFlow
    releases but not in others (it does not reach absl's early logging), so file descriptor 2 itself
    points at the log. The runtime logs after start-up too (on some CPUs oneDNN's "supports DT_BOOL only
    on platforms with AVX-512" at the first training or prediction), so with ``whole_command`` the
    descriptor stays on the log until the command ends, and Python's own ``sys.stderr`` (the command's
    error lines, progress bars, warnings) moves to a copy of the terminal's. ``serve`` passes False: the
    flow runs it starts are processes of their own that show their logs on the descriptor they inherit.
    """
    if args.verbose or "tensorflow" in sys.modules:
        return
    import os

    log = Path(settings.work_dir) / "logs" / "tensorflow.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    with open(log, "ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        import tensorflow

        # the devices start on first use, and some machines log there (a failed cuInit where a CUDA
        # library exists without a GPU): start them while the lines go to the log
        tensorflow.config.list_physical_devices()
    finally:
        if whole_command:
            args.on_exit.callback(_python_stderr_kept_on(terminal))
        else:
            os.dup2(terminal, 2)
            os.close(terminal)
    # its Python logger's warnings are diagnostics (e.g. "triggered tf.function retracing" when models
    # of several sizes train at once), not the user's business unless --verbose
    tensorflow.get_logger().setLevel("ERROR")


def _python_stderr_kept_on(terminal: int):
    """Point ``sys.stderr``, and the logging handlers that write to it, at file descriptor ``terminal``
    (a copy of descriptor 2 before it moved); return the function that moves everything back.

    Where ``sys.stderr`` does not write to descriptor 2 (a caller captured it), it stays as it is.
    """
    import logging
    import os

    old = sys.stderr
    try:
        on_descriptor_2 = old.fileno() == 2
    except (AttributeError, OSError, ValueError):
        on_descriptor_2 = False
    new = os.fdopen(terminal, "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                    errors="backslashreplace", closefd=False)  # fmt: skip
    handlers = [
        handler
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
        for handler in getattr(logger, "handlers", ())  # placeholders in the dict have none
        if isinstance(handler, logging.StreamHandler) and handler.stream is old
    ]
    if on_descriptor_2:
        sys.stderr = new
        for handler in handlers:
            handler.setStream(new)

    def restore() -> None:
        new.flush()
        os.dup2(terminal, 2)
        os.close(terminal)
        if on_descriptor_2:
            sys.stderr = old
            for handler in handlers:
                handler.setStream(old)

    return restore


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``sketchpipe`` console script."""
    args = build_parser().parse_args(argv)
    if args.verbose:  # TensorFlow's native lines too (configure_runtime would set level 3: fatal only)
        import os

        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
    configure_runtime()
    _stop_orphaned_prefect_servers(args)
    if not args.verbose:
        import os

        # Prefect's INFO lines (every task's start and end, GX's temporary folders) buried the results, and
        # a failed task's ERROR lines carry its traceback (then one line per task it held up): the command
        # says what went wrong in one line, and the Prefect server keeps every run's full log. A long-lived
        # `serve` shows warnings and errors as they come.
        level = "WARNING" if args.command == "serve" else "CRITICAL"
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", level)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # e.g. a new store's migration notes
    from flows import score_commands

    command = {
        "run": _cmd_run,
        "tune": _cmd_tune,
        "validate": _cmd_validate,
        "download": _cmd_download,
        "predict": _cmd_predict,
        "score": score_commands.cmd_score,
        "monitor": score_commands.cmd_monitor,
        "promote": _cmd_promote,
        "serve": _cmd_serve,
        "serve-model": _cmd_serve_model,
        "ui": _cmd_ui,
    }[args.command]
    args.on_exit = contextlib.ExitStack()  # what a command changed for its own duration, undone at its end
    try:
        with args.on_exit:
            command(args)
    except Exception as exc:
        full = disk_full(exc, [Path.cwd(), *_named_paths(args)])
        if full is None and args.verbose:
            raise
        print(f"sketchpipe: error: {full or _one_line(exc)}", file=sys.stderr)
        if full is None:
            print("sketchpipe: (--verbose shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from exc


def _stop_orphaned_prefect_servers(args: argparse.Namespace) -> None:
    """Stop the temporary Prefect servers that killed commands of this project left running."""
    import os

    from flows.prefect_servers import stop_orphaned_servers

    stopped = stop_orphaned_servers(os.environ["PREFECT_HOME"])
    if stopped and args.verbose:
        print(f"sketchpipe: stopped {len(stopped)} Prefect server(s) a killed command left running", file=sys.stderr)


def _named_paths(args: argparse.Namespace) -> list[Path]:
    """Return the folders the command line names (data, config), whose disks a failure may have filled."""
    return [Path(value) for name in ("data_dir", "config", "dest") if (value := getattr(args, name, None))]


def _one_line(exc: BaseException) -> str:
    """Return an exception as one line: its type and the first line of its message."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


DISK_NEARLY_FULL_BYTES = 64 << 20


# errors that explain themselves (a missing file or folder, no permission): not a full disk
_NOT_A_FULL_DISK = {errno.ENOENT, errno.EACCES, errno.ENOTDIR, errno.EISDIR, errno.EROFS}


def disk_full(exc: BaseException, paths: list[Path]) -> str | None:
    """Return a one-line message if a failure comes from a full disk, else ``None``.

    A full disk rarely surfaces as itself: Prefect reports a run it could not record as
    ``UnfinishedRun`` ("Run is in PENDING state"), Keras or MLflow wrap the ``OSError``. So: an
    ``OSError`` with ``ENOSPC`` anywhere in the chain of causes (or in an exception group), or a
    failure while a folder in use has under :data:`DISK_NEARLY_FULL_BYTES` left.
    """
    import shutil

    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            where = f" writing {error.filename}" if error.filename else ""
            return f"no space left on device{where} ({_one_line(exc)})"
        if "No space left on device" in str(error):  # a library's own error, quoting the OSError
            return f"no space left on device ({_one_line(error)})"
        if isinstance(error, OSError) and error.errno in _NOT_A_FULL_DISK:
            return None
        pending += [error.__cause__, error.__context__, *getattr(error, "exceptions", ())]
    for path in paths:
        folder = next((p for p in [path, *path.resolve().parents] if p.exists()), None)
        usage = shutil.disk_usage(folder) if folder is not None else None
        if usage is not None and usage.total > 0 and usage.free < DISK_NEARLY_FULL_BYTES:  # /proc: total 0
            return f"no space left on device: {folder} has {usage.free // 1024} KB free ({_one_line(exc)})"
    return None


if __name__ == "__main__":
    main()
