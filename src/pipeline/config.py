"""One typed settings object, loaded from defaults, a YAML file, ``SKETCHPIPE_*`` variables and CLI flags.

Later sources win: defaults < config file < environment < command line. Nothing here runs at import
time; :func:`load_settings` is the one place that reads the environment.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import yaml

SOURCES = ("synthetic", "sketchrnn", "ndjson", "tfrecord")
# the names of pipeline.models.MODEL_BUILDERS, here so that checking settings does not load Keras
ARCHITECTURES = ("simple_rnn", "lstm", "gru", "conv_lstm", "bilstm", "wavenet", "transformer")
TASK_RUNNERS = ("thread", "dask", "ray")
# each architecture's model hyperparameters: its builder's arguments but num_classes (a test keeps them equal)
# every architecture can also read the sketch drawn as a picture (pipeline.models._raster_features)
_RASTER_PARAMS = ("raster_size", "raster_filters")
_RECURRENT_PARAMS = ("units", "num_layers", "dropout", "pooling", "positions", "stem_filters", "stem_kernel")
MODEL_PARAMETERS: dict[str, tuple[str, ...]] = {
    "simple_rnn": (*_RECURRENT_PARAMS, "bidirectional", "activation", *_RASTER_PARAMS),
    "lstm": (*_RECURRENT_PARAMS, "bidirectional", *_RASTER_PARAMS),
    "gru": (*_RECURRENT_PARAMS, "bidirectional", *_RASTER_PARAMS),
    "conv_lstm": (
        *("filters", "kernel_size", "units", "num_layers", "dropout", "pooling", "positions", "bidirectional"),
        *_RASTER_PARAMS,
    ),
    "bilstm": (*_RECURRENT_PARAMS, *_RASTER_PARAMS),
    "wavenet": (
        *("filters", "kernel_size", "dilation_rates", "dropout", "positions", "pooling", "gated", "norm"),
        *("halve_after", *_RASTER_PARAMS),
    ),
    "transformer": (
        *("dim", "heads", "num_layers", "ff_dim", "dropout", "positions", "pooling"),
        *("stem_filters", "stem_kernel", "stem_dilations", "norm_first", *_RASTER_PARAMS),
    ),
}
# the model hyperparameters that take one of a few words (pooling "last": recurrent models only), and
# those that are yes or no
_MODEL_CHOICES = {"pooling": ("last", "mean", "mean_max"), "activation": ("tanh", "relu")}
_POOLING_OF_ALL_STEPS = ("wavenet", "transformer")
_MODEL_FLAGS = ("positions", "bidirectional", "gated", "norm", "norm_first")
_MODEL_SIZES = ("units", "num_layers", "dim", "heads", "ff_dim", "kernel_size", "stem_kernel", "raster_filters")
MIN_RASTER_SIZE = 8  # pixels a side: smaller pictures show no shape
_MODEL_SIZE_LISTS = ("dilation_rates", "stem_filters", "stem_dilations")
WAVENET_DEFAULT_BLOCKS = (1, 2, 4, 8, 1, 2, 4, 8)  # pipeline.models.build_wavenet's dilation rates
TRANSFORMER_DEFAULTS = {"dim": 64, "heads": 4}  # pipeline.models.build_transformer's (a test holds them equal)
ENV_PREFIX = "SKETCHPIPE_"


MAX_MESSAGE_CHARS = 400
MAX_CONFIG_BYTES = 1 << 20  # a settings file is a few kilobytes
MAX_CONFIG_VALUES = 100_000  # values in a settings file once its aliases are expanded


class ConfigError(ValueError):
    """A setting with a wrong value; ``field`` names it so the CLI can name the flag."""

    def __init__(self, field: str, message: str):
        if len(message) > MAX_MESSAGE_CHARS:  # a value quoted whole could run to megabytes: an excerpt
            cut = MAX_MESSAGE_CHARS // 2
            message = f"{message[:cut]} ... ({len(message) - 2 * cut} characters) ... {message[-cut:]}"
        super().__init__(message)
        self.field = field
        self.origin: str | None = None  # where the value came from: "override", "environment" or a file path


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a pipeline run needs; every field can be set by file, environment or flag."""

    # Data
    source: str = "synthetic"  # synthetic | sketchrnn | ndjson | tfrecord
    data_dir: str | None = None  # folder of the source's files (every source but synthetic)
    classes: tuple[str, ...] | None = None  # the class names to use (default: see num_classes)
    num_classes: int | None = None  # the first N classes; default: all of a real source, 8 synthetic ones
    max_per_class: int | None = None  # at most this many sketches per class and split (default: all)
    recognized_only: bool = True  # ndjson: keep only drawings the game recognised
    valid_share: float = 0.05  # ndjson and TFRecord: share of records (by a hash of the key) in valid
    test_share: float = 0.05  # ... and in test (TFRecord: only when there are no eval shards)
    download: bool = False  # fetch missing official class files into data_dir before ingest
    download_format: str | None = None  # sketchrnn | sketchrnn-full | simplified | raw (default: by source)
    download_base_url: str = "https://storage.googleapis.com/quickdraw_dataset"  # the bucket that download fetches from
    download_workers: int = 4  # class files fetched at once
    synthetic_per_split: Mapping[str, int] = dataclasses.field(  # synthetic sketches per class and split
        default_factory=lambda: {"train": 400, "valid": 80, "test": 120}
    )
    seed: int = 42  # weights, shuffles, dropout, augmentation and samples
    work_dir: str = "data"  # datasets, features, models, reports and caches
    # Validation
    min_points: int = 1  # one offset: a straight line, a real drawing of `line`
    max_points: int = 1000  # longest sketch accepted, in points
    max_abs_delta: float = 1000.0  # largest pen move accepted, in either axis
    max_invalid_fraction: float = 0.05  # validation fails above this share of rejected records
    max_class_imbalance: float = 10.0  # median / smallest class count in train
    # Preprocessing
    max_len: int = 100  # points per sketch kept for the model (longer ones are cropped)
    batch_size: int = 64  # sketches per training batch
    # Training
    architectures: tuple[str, ...] = ("lstm", "conv_lstm")  # the architectures to train, compare and register
    epochs: int = 5  # most training epochs per architecture
    learning_rate: float = 3e-3  # the optimizer's (starting) learning rate
    clipnorm: float = 1.0  # gradients clipped to this norm
    # training steps per call into TensorFlow (Keras's steps_per_execution): the same updates, less
    # Python between them; batch callbacks (the progress bar) then run once per call
    steps_per_execution: int = 1
    # batches per epoch (0: one pass over the training split); more often validation, checkpoints and early
    # stopping on a large split, the passes (each a new shuffle of all of it) running on across epochs
    steps_per_epoch: int = 0
    validation_sample: int = 50_000  # validation sketches scored each epoch, a fixed sample (0: the whole split)
    # Training-time augmentation (training split only; 0 turns each off): each axis scaled by a factor
    # in [1 - s, 1 + s], a rotation of up to this many degrees, Gaussian jitter of the absolute points
    # (in normalised units), and each stroke dropped with this probability (never all of a sketch's);
    # each stroke drawn backwards, each point inside a stroke dropped (as a coarser simplification
    # would), and a sketch's strokes drawn in a random order, with these probabilities
    augment_scale: float = 0.0
    augment_rotation: float = 0.0  # most rotation, degrees
    augment_jitter: float = 0.0  # Gaussian jitter of the absolute points (normalised units)
    augment_stroke_dropout: float = 0.0  # probability of dropping each stroke
    augment_reverse_strokes: float = 0.0  # probability of drawing each stroke backwards
    augment_point_dropout: float = 0.0  # probability of dropping each point inside a stroke
    augment_shuffle_strokes: float = 0.0  # probability of drawing a sketch's strokes in a random order
    # Regularisation and schedule: AdamW's decoupled weight decay (0: plain Adam), label smoothing, and
    # the learning rate's course: plateau (halved when val_loss stalls) or cosine (linear warm-up over
    # warmup_epochs, then a cosine decay to 0 at the last epoch). Dropout is a model hyperparameter.
    weight_decay: float = 0.0
    label_smoothing: float = 0.0  # share of each target spread over the other classes
    # Polyak averaging: validation, checkpoints and the saved model use an exponential moving average
    # of the weights (this momentum per step; 0: off, the last weights as they are)
    ema_momentum: float = 0.0
    lr_schedule: str = "plateau"  # plateau | cosine
    lr_patience: int = 2  # plateau: epochs without a better val_loss before the rate halves
    warmup_epochs: int = 0  # cosine: linear warm-up over this many epochs
    early_stopping_patience: int = 3  # epochs without a better val_loss before training stops
    # hyperparameters per architecture (name: {parameter: value})
    models: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    task_runner: str = "thread"  # thread | dask | ray
    # architectures trained and evaluated at once (0: as many as half the free memory holds, by the dataset's size)
    max_parallel_architectures: int = 0
    distribute: str = "auto"  # tf.distribute: auto (mirrored when several GPUs are visible) | mirrored | default
    io_retries: int = 2  # retries of the I/O tasks (data stages, tracking, registry)
    retry_backoff_seconds: float = 2.0  # first retry delay; doubles on each retry
    dask_address: str | None = None  # scheduler of an existing Dask cluster; a local one when unset
    # head of an existing Ray cluster (e.g. ray://head:10001), or "local" for a temporary local one, which
    # listens on all network interfaces: Ray cannot bind to 127.0.0.1, so it is never started unasked
    ray_address: str | None = None
    progress: str = "auto"  # progress bars for ingest and training: auto (when stderr is a terminal) | on | off
    # TensorFlow's thread pools (0: TensorFlow's choice, every core for each): the threads one operation
    # may split across, and the operations run at once; see use_tensorflow_threads
    intra_op_threads: int = 0
    inter_op_threads: int = 0  # TensorFlow operations run at once (0: TensorFlow's choice)
    # Tracking and registry
    tracking_uri: str | None = None  # MLflow tracking store (default: SQLite under mlflow/)
    experiment_name: str = "sketchpipe"  # the MLflow experiment of the pipeline's runs
    registered_model_name: str = "quickdraw-synthetic"  # one registered model per set of classes
    promotion_margin: float = 0.0  # least accuracy gain over the champion that counts
    promotion_alpha: float = 0.05  # significance level of McNemar's exact test
    # evaluation keeps each test sketch's top classes; this keeps every probability too (tests x classes floats)
    keep_test_probabilities: bool = False
    # Scoring and monitoring
    reference_sample: int = 5000  # test sketches a registered version's reference profile keeps
    drift_share: float = 0.3  # share of the monitored columns that must drift for drift_detected (3 of 10)
    retrain_on_drift: bool = False  # monitor starts the training deployment when it finds drift

    @property
    def resolved_download_format(self) -> str:
        """Return the format ``download`` fetches: the setting, else the source's own (sketchrnn, simplified)."""
        from pipeline.download import SOURCE_FORMATS

        return self.download_format or SOURCE_FORMATS.get(self.source, "sketchrnn")

    @property
    def resolved_tracking_uri(self) -> str:
        """Return the tracking URI, defaulting to the SQLite store under ``mlflow/`` in the working folder."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{Path('mlflow/mlflow.db').resolve()}"

    @property
    def artifact_location(self) -> str | None:
        """Return where a new experiment keeps artifacts: ``artifacts/`` beside a SQLite store's file.

        For a tracking server (http URIs) the server decides, so this is ``None``.
        """
        uri = self.resolved_tracking_uri
        if not uri.startswith("sqlite:///"):
            return None
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()

    def replace(self, **changes: Any) -> Settings:
        """Return a validated copy with the given fields changed."""
        return check_settings(dataclasses.replace(self, **changes))


def check_settings(settings: Settings) -> Settings:
    """Return ``settings`` with derived defaults filled in, or raise :class:`ConfigError` naming the first
    wrong field.

    The one derived default: with ``download`` on and no ``data_dir``, files go to
    ``<work_dir>/raw/<format>``.
    """
    from pipeline.download import FORMATS, SOURCE_FORMATS

    if settings.source not in SOURCES:
        raise ConfigError("source", f"unknown source {settings.source!r}; choose from {', '.join(SOURCES)}")
    if settings.download_format is not None and settings.download_format not in FORMATS:
        raise ConfigError(
            "download_format", f"unknown format {settings.download_format!r}; choose from {', '.join(FORMATS)}"
        )
    if settings.download:
        if settings.source not in SOURCE_FORMATS:
            raise ConfigError("download", f"source {settings.source!r} has no official files to download")
        fits = {"sketchrnn": ("sketchrnn", "sketchrnn-full"), "ndjson": ("simplified", "raw")}[settings.source]
        if settings.resolved_download_format not in fits:
            raise ConfigError(
                "download_format",
                f"source {settings.source!r} reads {' or '.join(fits)} files, not {settings.download_format!r}",
            )
        if not settings.data_dir:
            folder = Path(settings.work_dir) / "raw" / settings.resolved_download_format
            settings = dataclasses.replace(settings, data_dir=str(folder))
    if settings.source != "synthetic" and not settings.data_dir:
        raise ConfigError("data_dir", f"source {settings.source!r} needs a data folder (or download: true)")
    unknown = [a for a in settings.architectures if a not in ARCHITECTURES]
    if unknown or not settings.architectures:
        raise ConfigError(
            "architectures",
            f"unknown architecture {', '.join(unknown) or '(none given)'}; choose from {', '.join(ARCHITECTURES)}",
        )
    _check_models(settings.models)
    if settings.classes and len(set(settings.classes)) != len(settings.classes):
        raise ConfigError("classes", "a class is named twice")
    from pipeline.synthetic import SHAPES

    if settings.num_classes is not None and settings.num_classes < 1:
        raise ConfigError("num_classes", f"must be at least 1 (got {settings.num_classes})")
    if settings.source == "synthetic" and not settings.classes and (settings.num_classes or 0) > len(SHAPES):
        raise ConfigError("num_classes", f"the synthetic set has {len(SHAPES)} classes, not {settings.num_classes}")
    if settings.distribute not in ("auto", "mirrored", "default"):
        raise ConfigError(
            "distribute", f"unknown strategy {settings.distribute!r}; choose from auto, mirrored, default"
        )
    if settings.progress not in ("auto", "on", "off"):
        raise ConfigError("progress", f"unknown progress mode {settings.progress!r}; choose from auto, on, off")
    if settings.io_retries < 0:
        raise ConfigError("io_retries", f"must be at least 0 (got {settings.io_retries})")
    if settings.max_class_imbalance < 1:
        raise ConfigError("max_class_imbalance", f"must be at least 1 (got {settings.max_class_imbalance})")
    if settings.task_runner not in TASK_RUNNERS:
        choices = ", ".join(TASK_RUNNERS)
        raise ConfigError("task_runner", f"unknown task runner {settings.task_runner!r}; choose from {choices}")
    if settings.task_runner == "ray" and not settings.ray_address:
        raise ConfigError(
            "ray_address",
            "--task-runner ray needs the address of a Ray cluster (ray://head:10001), or 'local' for a temporary "
            "local one, which listens on all network interfaces (Ray cannot bind to 127.0.0.1)",
        )
    for name in ("epochs", "batch_size", "max_len", "min_points", "download_workers", "reference_sample"):
        if getattr(settings, name) < 1:
            raise ConfigError(name, f"must be at least 1 (got {getattr(settings, name)})")
    for name in (
        "lr_patience",
        "early_stopping_patience",
        "intra_op_threads",
        "inter_op_threads",
        "steps_per_epoch",
        "validation_sample",
        "max_parallel_architectures",
    ):
        if getattr(settings, name) < 0:
            raise ConfigError(name, f"must be at least 0 (got {getattr(settings, name)})")
    if settings.max_per_class is not None and settings.max_per_class < 1:
        raise ConfigError("max_per_class", f"must be at least 1 (got {settings.max_per_class})")
    if not 0.0 <= settings.max_invalid_fraction <= 1.0:
        raise ConfigError("max_invalid_fraction", f"must be between 0 and 1 (got {settings.max_invalid_fraction})")
    if not 0.0 < settings.promotion_alpha <= 1.0:
        raise ConfigError("promotion_alpha", f"must be in (0, 1] (got {settings.promotion_alpha})")
    if not 0.0 < settings.drift_share <= 1.0:
        raise ConfigError("drift_share", f"must be in (0, 1] (got {settings.drift_share})")
    for name, low, high in (
        ("augment_scale", 0.0, 0.9),
        ("augment_rotation", 0.0, 180.0),
        ("augment_jitter", 0.0, 1.0),
        ("augment_stroke_dropout", 0.0, 0.9),
        ("augment_reverse_strokes", 0.0, 1.0),
        ("augment_point_dropout", 0.0, 0.9),
        ("augment_shuffle_strokes", 0.0, 1.0),
    ):
        if not low <= getattr(settings, name) <= high:
            raise ConfigError(name, f"must be between {low:g} and {high:g} (got {getattr(settings, name)})")
    for name, low, high in (("weight_decay", 0.0, 1.0), ("label_smoothing", 0.0, 0.5)):
        if not low <= getattr(settings, name) <= high:
            raise ConfigError(name, f"must be between {low:g} and {high:g} (got {getattr(settings, name)})")
    if not 0.0 <= settings.ema_momentum < 1.0:
        raise ConfigError("ema_momentum", f"must be at least 0 and below 1 (got {settings.ema_momentum})")
    if settings.lr_schedule not in ("plateau", "cosine"):
        raise ConfigError("lr_schedule", f"unknown schedule {settings.lr_schedule!r}; choose from plateau, cosine")
    if settings.steps_per_execution < 1:
        raise ConfigError("steps_per_execution", f"must be at least 1 (got {settings.steps_per_execution})")
    if settings.warmup_epochs < 0:
        raise ConfigError("warmup_epochs", f"must be at least 0 (got {settings.warmup_epochs})")
    if settings.learning_rate <= 0:
        raise ConfigError("learning_rate", f"must be positive (got {settings.learning_rate})")
    for name in ("valid_share", "test_share"):
        if not 0.0 <= getattr(settings, name) < 1.0:
            raise ConfigError(name, f"must be at least 0 and below 1 (got {getattr(settings, name)})")
    if settings.valid_share + settings.test_share >= 1.0:
        raise ConfigError("test_share", "valid_share + test_share must leave records for training")
    if set(settings.synthetic_per_split) != {"train", "valid", "test"}:
        raise ConfigError("synthetic_per_split", "needs counts for exactly train, valid and test")
    return settings


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _check_models(models: Mapping[str, Any]) -> None:
    """Refuse a ``models:`` entry that no architecture takes, now rather than when its training starts:
    an unknown architecture or hyperparameter, a word not among its choices, a flag that is not yes/no."""
    for architecture, params in models.items():
        if architecture not in MODEL_PARAMETERS:
            choices = ", ".join(ARCHITECTURES)
            raise ConfigError("models", f"unknown architecture {architecture!r}; choose from {choices}")
        if not isinstance(params, Mapping):
            raise ConfigError("models", f"{architecture}: expected hyperparameters as name: value, got {params!r}")
        for name, value in params.items():
            where = f"{architecture}.{name}"
            if name not in MODEL_PARAMETERS[architecture]:
                known = ", ".join(MODEL_PARAMETERS[architecture])
                raise ConfigError("models", f"{architecture} takes no {name!r}; it takes {known}")
            choices = _MODEL_CHOICES.get(name, ())
            if name == "pooling" and architecture in _POOLING_OF_ALL_STEPS:
                choices = choices[1:]
            if choices and value not in choices:
                raise ConfigError("models", f"{where}: {value!r} is not one of {', '.join(choices)}")
            if name in _MODEL_FLAGS and not isinstance(value, bool):
                raise ConfigError("models", f"{where}: expected true or false, got {value!r}")
            _check_model_value(architecture, name, value)
        halve_after = params.get("halve_after") if architecture == "wavenet" else None
        if halve_after:  # the builder's 8 blocks if dilation_rates is not given
            blocks = len(params.get("dilation_rates", WAVENET_DEFAULT_BLOCKS))
            last = halve_after if isinstance(halve_after, int) else max(halve_after)
            if last >= blocks:
                raise ConfigError("models", f"wavenet.halve_after: {last} leaves no block after it (of {blocks})")
        if architecture == "transformer":  # the builder's defaults where a value is not given
            dim = params.get("dim", TRANSFORMER_DEFAULTS["dim"])
            heads = params.get("heads", TRANSFORMER_DEFAULTS["heads"])
            if dim % heads or dim % 2:
                raise ConfigError("models", f"transformer.dim ({dim}) must be even and a multiple of heads ({heads})")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_model_value(architecture: str, name: str, value: Any) -> None:
    """Refuse a size that is not a whole number of at least 1, a list of them that is not, or a dropout
    outside [0, 1): Keras would refuse them only once that model's training had started."""
    where = f"{architecture}.{name}"
    if name in _MODEL_SIZE_LISTS or (name == "filters" and architecture == "conv_lstm"):
        if not isinstance(value, list | tuple) or not all(_whole(v) for v in value):
            raise ConfigError("models", f"{where}: expected a list of whole numbers of at least 1, got {value!r}")
        if name == "dilation_rates" and not value:
            raise ConfigError("models", f"{where}: needs at least one rate (one block each)")
    elif name == "raster_size":
        if not isinstance(value, int) or isinstance(value, bool) or (value and value < MIN_RASTER_SIZE):
            expected = f"0 (no picture) or a side of at least {MIN_RASTER_SIZE} pixels"
            raise ConfigError("models", f"{where}: expected {expected}, got {value!r}")
    elif name == "halve_after":  # a number of blocks (0: never), or a list of them (one halving each)
        if isinstance(value, list | tuple):
            if not all(_whole(v) for v in value) or len(set(value)) != len(value):
                expected = "a list of different numbers of blocks, each at least 1"
                raise ConfigError("models", f"{where}: expected {expected}, got {value!r}")
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            expected = "0 (never), a number of blocks or a list of them"
            raise ConfigError("models", f"{where}: expected {expected}, got {value!r}")
    elif name in _MODEL_SIZES or name == "filters":
        if not _whole(value):
            raise ConfigError("models", f"{where}: expected a whole number of at least 1, got {value!r}")
    elif name == "dropout" and (isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1):
        raise ConfigError("models", f"{where}: expected a number at least 0 and below 1, got {value!r}")


def _coerce(name: str, value: Any) -> Any:
    """Return ``value`` (from YAML, an environment string or a flag) converted to the field's type."""
    if value is None:
        return None
    kind = str(_FIELDS[name].type)
    try:
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip() for i in items if str(i).strip())
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).strip().lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind.startswith("int"):
            return int(value)
        if kind.startswith("float"):
            number = float(value)
            if not math.isfinite(number):
                raise ConfigError(name, f"must be a finite number (got {value!r})")
            return number
        if kind.startswith("Mapping"):
            return dict(yaml.safe_load(value) if isinstance(value, str) else value)
        return str(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(name, f"cannot read {value!r} as {kind}") from exc


def _read_yaml(path: Path):
    """Return a YAML file's content, refusing a file over :data:`MAX_CONFIG_BYTES` and anchors and aliases
    that would expand past :data:`MAX_CONFIG_VALUES` values (a few hundred bytes of nested aliases can
    stand for billions), before anything is built from them."""
    import stat

    if not stat.S_ISREG(path.stat().st_mode):
        raise ConfigError("config", f"{path} is not a regular file")
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("config", f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB; a settings file is a few")
    text = data.decode("utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise ConfigError("config", f"{path} is nested too deeply") from None
    if node is None:
        return None
    if _expanded_values(node) > MAX_CONFIG_VALUES:
        raise ConfigError(
            "config", f"{path}: its anchors and aliases expand to over {MAX_CONFIG_VALUES:,} values; not read"
        )
    return yaml.SafeLoader(text).construct_document(node)


def _expanded_values(root) -> int:
    """Return how many values a composed YAML node stands for with every alias expanded (counted once per
    node, however often it is used, so this costs what the file's size does)."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = [c for pair in node.value for c in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(c), 0) for c in children), MAX_CONFIG_VALUES + 1)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Return validated settings from defaults, a YAML file, ``SKETCHPIPE_*`` variables and overrides.

    Args:
        config_file: YAML mapping of field names to values; ``None`` reads ``sketchpipe.yaml`` in the
            working folder when there is one.
        overrides: field values from the command line (``None`` values are ignored).
        environ: the environment to read (``os.environ`` by default).

    Raises:
        ConfigError: an unknown field or a wrong value, naming the field.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    path = Path(config_file) if config_file else Path("sketchpipe.yaml")
    if config_file and path.is_dir():
        raise ConfigError("config", f"{path} is a folder, not a settings file")
    if config_file and not path.is_file():
        raise ConfigError("config", f"config file {path} does not exist")
    if path.is_file():
        try:
            loaded = _read_yaml(path) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise ConfigError("config", f"{path} is not valid YAML: {problem}{where}") from None
        if not isinstance(loaded, dict):
            raise ConfigError("config", f"{path} must hold a mapping of settings")
        values.update(loaded)
        origin.update(dict.fromkeys(loaded, str(path)))
    environ = os.environ if environ is None else environ
    for key, value in environ.items():
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in _FIELDS:
            values[key[len(ENV_PREFIX) :].lower()] = value
            origin[key[len(ENV_PREFIX) :].lower()] = "environment"
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    values.update(given)
    origin.update(dict.fromkeys(given, "override"))
    try:
        for name in values:
            if name not in _FIELDS:
                raise ConfigError(name, f"unknown setting {name!r}")
        return check_settings(Settings(**{name: _coerce(name, value) for name, value in values.items()}))
    except ConfigError as exc:
        exc.origin = origin.get(exc.field)
        raise


TENSORFLOW_THREAD_VARIABLES = {
    "intra_op_threads": "TF_NUM_INTRAOP_THREADS",
    "inter_op_threads": "TF_NUM_INTEROP_THREADS",
}


def use_tensorflow_threads(settings: Settings, environ: MutableMapping[str, str] | None = None) -> None:
    """Size TensorFlow's thread pools as the settings say (``intra_op_threads``, ``inter_op_threads``;
    0 leaves TensorFlow's own choice, or a ``TF_NUM_*`` variable already set).

    They go into TensorFlow's own environment variables (``TF_NUM_INTRAOP_THREADS``,
    ``TF_NUM_INTEROP_THREADS``), which TensorFlow reads when a process runs its first operation: they
    hold in this process if it has not run one yet, and in the Dask and Ray worker processes started
    after, which inherit the environment. A process that has already run TensorFlow keeps its pools.

    On small models and few cores, one thread per operation with two operations at a time can train
    faster than TensorFlow's default of splitting every operation across all cores: see
    docs/guides/configuration.md, "Threads".
    """
    environ = os.environ if environ is None else environ
    for name, variable in TENSORFLOW_THREAD_VARIABLES.items():
        if getattr(settings, name):
            environ[variable] = str(getattr(settings, name))


def configure_runtime(environ: dict[str, str] | None = None) -> None:
    """Point Prefect at a project-local home and ephemeral server, with telemetry off everywhere.

    Call before Prefect, MLflow or Great Expectations are imported; values already set are kept.
    """
    environ = os.environ if environ is None else environ
    defaults = {
        "PREFECT_HOME": str(Path(".prefect").resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        # the pipeline's artifacts are small and its own progress bars own the terminal
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "DO_NOT_TRACK": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "NO_GCE_CHECK": "true",
        # MLflow's own HTTP retries would wait minutes on a dead server; the flow's task retries govern
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    }
    for key, value in defaults.items():
        environ.setdefault(key, value)
