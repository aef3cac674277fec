"""Loading a registered model and predicting classes for raw stroke-3 sketches."""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import json
import sys
import zlib
from pathlib import Path

import numpy as np

from pipeline.config import Settings
from pipeline.evaluation import compiled_inference
from pipeline.features import normalising_layer, pad_batch
from pipeline.files import MAX_SKETCH_FILE_BYTES, check_source_file
from pipeline.promotion import CHAMPION
from pipeline.strokes import (
    StrokeFormatError,
    check_stroke3,
    drop_noop_points,
    load_sketchrnn_npz,
    stroke3_sketches,
)

# MLflow (pipeline.registry, pipeline.tracking) is imported only where the store is asked: a predict
# served from the local cache need not pay for its import


@dataclasses.dataclass
class Classifier:
    """A loaded serving model (it takes raw stroke-3) with its class names, crop length and the largest
    move its training data allowed (``max_abs_delta``; ``None`` for a model logged without it)."""

    model: object
    classes: list[str]
    max_len: int
    max_abs_delta: float | None = None
    _infer: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_metadata(cls, model, metadata: dict) -> Classifier:
        """Return the classifier of a model and the metadata it was logged with."""
        limit = metadata.get("max_abs_delta")
        return cls(model, list(metadata["classes"]), int(metadata["max_len"]), None if limit is None else float(limit))

    def check_range(self, sketches: list[np.ndarray], names: list[str] | None = None) -> None:
        """Raise a :class:`StrokeFormatError` naming the first sketch (``names``, else ``sketch <i>``) and row
        that moves further in x or y than any training sketch could (training validation quarantines
        those); the model has never seen such input, so its answer would mean nothing. The entry points
        for outside input (``predict``, the served model) call it; the promotion gate's own test sketches
        need not pass an older model's limit."""
        if self.max_abs_delta is None:
            return
        for index, sketch in enumerate(sketches):
            moves = np.abs(np.asarray(sketch)[:, :2]).max(axis=1)
            if moves.max(initial=0.0) > self.max_abs_delta:
                row = int(np.argmax(moves > self.max_abs_delta))
                name = names[index] if names else f"sketch {index}"
                raise StrokeFormatError(
                    f"{name}: row {row} moves {moves[row]:g}, more than the model was trained on "
                    f"(max_abs_delta {self.max_abs_delta:g})"
                )

    def probabilities(self, sketches: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Return ``(n, classes)`` probabilities for raw stroke-3 sketches, cropped as in training.

        Batches go through one graph function traced for any batch size and length (see
        :func:`pipeline.evaluation.compiled_inference`): ``model.predict`` retraced for each new
        padded length and cost ~2 s per 1,600 sketches for an LSTM, most of the promotion gate.
        """
        if not sketches:
            return np.zeros((0, len(self.classes)), np.float32)
        if len(sketches) <= batch_size:  # one batch: an eager call costs less than tracing a graph
            return np.asarray(self.model(self._batch(sketches), training=False))
        if self._infer is None:
            self._infer = self.model if isinstance(self.model, LiteModel) else compiled_inference(self.model)
        out = []
        for start in range(0, len(sketches), batch_size):
            out.append(np.asarray(self._infer(self._batch(sketches[start : start + batch_size]))))
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def _batch(self, sketches: list[np.ndarray]) -> np.ndarray:
        """Return sketches as one zero-padded batch, without their no-op points, cropped as in training."""
        return pad_batch([drop_noop_points(np.asarray(s, dtype=np.float32))[: self.max_len] for s in sketches])

    def ranked(self, sketches: list[np.ndarray], k: int = 3, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``k`` most likely class indices per sketch, most likely first, and their
        probabilities; a chunk of sketches at a time, so no ``(sketches, classes)`` matrix is kept."""
        from pipeline.evaluation import top_k_indices

        k = min(k, len(self.classes))
        indices, chosen = [np.zeros((0, k), np.int32)], [np.zeros((0, k), np.float32)]
        for start in range(0, len(sketches), chunk):
            probabilities = self.probabilities(sketches[start : start + chunk])
            best = top_k_indices(probabilities, k)
            indices.append(best)
            chosen.append(np.take_along_axis(probabilities, best, axis=1))
        return np.concatenate(indices), np.concatenate(chosen)

    def top_classes(self, sketches: list[np.ndarray]) -> list[str]:
        """Return the most likely class name per sketch."""
        return [self.classes[i] for i in self.ranked(sketches, 1)[0][:, 0]]

    def top_k(self, sketches: list[np.ndarray], k: int = 3) -> list[list[tuple[str, float]]]:
        """Return the ``k`` most likely classes with their probabilities, per sketch."""
        indices, chosen = self.ranked(sketches, k)
        return [
            [(self.classes[i], float(p)) for i, p in zip(row, probabilities, strict=True)]
            for row, probabilities in zip(indices, chosen, strict=True)
        ]


def model_metadata(spec, max_abs_delta: float) -> dict:
    """Return what a logged model carries beside its weights (in its MLmodel file): the class names, the
    normalising scale, the crop length of its features ``spec``, and the largest move training allowed."""
    return {"classes": spec.classes, "scale": spec.scale, "max_len": spec.max_len, "max_abs_delta": max_abs_delta}


def export_model(trained, scale: float):
    """Return the serving model: preprocessing's normalisation followed by the trained network.

    It takes raw stroke-3 ``(batch, time, 3)`` float32 with zero-padding, so whoever serves it needs
    no knowledge of the training set's scale. A compiled ``trained`` is copied without its compile
    state first: the loss and optimizer would travel inside the saved file, and a label-smoothed loss
    (a class of this project) would make it unloadable wherever training was never imported.
    """
    import keras

    if getattr(trained, "compiled", False):
        weights = trained.get_weights()
        trained = keras.Model.from_config(trained.get_config())  # clone_model would compile the copy too
        trained.set_weights(weights)
    inputs = keras.Input(shape=(None, 3), dtype="float32", name="strokes")
    return keras.Model(inputs, trained(normalising_layer(scale)(inputs)), name=f"{trained.name}_serving")


def champion_uri(settings: Settings) -> str:
    """Return the URI of the registered model's champion."""
    return f"models:/{settings.registered_model_name}@{CHAMPION}"


LITE_MODEL = "model.tflite"  # in a serving-cache folder: the model for LiteRT, when it converts


LITE_BATCH = 16  # sketches per call of a model converted at a fixed shape (recurrent models)


class LiteModel:
    """A serving model converted for LiteRT's interpreter: called like the Keras model (a zero-padded
    ``(batch, time, 3)`` float32 batch in, probabilities out), without importing TensorFlow.

    A model converted at a fixed shape ``(B, T, 3)`` (see :func:`lite_flatbuffer`) takes any batch: it
    is cut into calls of ``B`` sketches padded to ``T`` points (padding never changes a prediction).
    """

    def __init__(self, flatbuffer: bytes):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        # without the default XNNPACK delegate: it prints a line to stderr at start, and predict's batches
        # are small; the same answers to 1e-6
        self._interpreter = Interpreter(
            model_content=flatbuffer, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        )
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        signature = tuple(int(d) for d in details["shape_signature"])
        self._fixed = signature if min(signature) > 0 else None
        self._shape: tuple[int, ...] | None = self._fixed
        if self._fixed:
            self._interpreter.allocate_tensors()

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if self._fixed is None:
            return self._invoke(batch)
        size, length = self._fixed[0], self._fixed[1]
        if batch.shape[1] > length:
            raise ValueError(f"a batch of {batch.shape[1]} points; this model takes at most {length}")
        out = []
        for start in range(0, len(batch), size):
            part = np.zeros((size, length, batch.shape[2]), np.float32)
            part[: min(size, len(batch) - start), : batch.shape[1]] = batch[start : start + size]
            out.append(self._invoke(part)[: len(batch) - start])
        return np.concatenate(out)

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape != self._shape:
            self._interpreter.resize_tensor_input(self._input, batch.shape)
            self._interpreter.allocate_tensors()
            self._shape = batch.shape
        self._interpreter.set_tensor(self._input, batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output).copy()


def lite_flatbuffer(model, max_len: int, tolerance: float = 1e-4) -> bytes | None:
    """Return ``model`` converted for LiteRT with built-in operations only, if it converts and answers as
    the Keras model does on sketches of three lengths (padding included); else ``None``.

    Convolutional and attention models convert for any batch and length. Recurrent layers over a length
    unknown until a batch arrives need TensorFlow's own list operations, which LiteRT lacks; they are
    converted at a fixed shape instead (:data:`LITE_BATCH` sketches of ``max_len`` points).
    """
    import contextlib
    import io
    import logging

    import tensorflow as tf

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)  # the converter's notes on what it froze
    rng = np.random.default_rng(0)
    sketches = [
        np.column_stack([rng.integers(-20, 20, (n, 2)), (np.arange(n) % 5 == 4) | (np.arange(n) == n - 1)])
        for n in (3, 17, min(40, max_len))
    ]
    batch = pad_batch([s.astype(np.float32) for s in sketches])
    expected = np.asarray(model(batch, training=False))
    fixed = tf.function(
        lambda strokes: model(strokes, training=False),
        input_signature=[tf.TensorSpec([LITE_BATCH, max_len, 3], tf.float32)],
    )
    converters = (
        lambda: tf.lite.TFLiteConverter.from_keras_model(model),
        # without the model as its trackable object: the converter freezes the weights into the graph
        lambda: tf.lite.TFLiteConverter.from_concrete_functions([fixed.get_concrete_function()]),
    )
    try:
        for converter in converters:
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # Keras's export prints its signature
                    flatbuffer = converter().convert()
            except Exception:  # an operation LiteRT lacks at this shape
                continue
            if np.abs(LiteModel(flatbuffer)(batch) - expected).max() <= tolerance:
                return flatbuffer
        return None
    finally:
        absl.setLevel(level)


def lite_cached(settings: Settings, model_uri: str | None = None) -> bool:
    """Return whether :func:`load_classifier` with ``lite=True`` would answer from the cache without
    importing TensorFlow (a LiteRT model of this URI, from an unchanged store)."""
    recorded = _cached_stamp(settings, model_uri or champion_uri(settings))
    return bool(recorded and recorded.get("lite"))


def load_classifier(settings: Settings, model_uri: str | None = None, lite: bool = False) -> Classifier:
    """Load a logged model (the champion by default) of the settings' store, with the preprocessing
    metadata logged with it.

    The model is downloaded into ``<work_dir>/serving-cache/``; a later load of the same URI from an
    unchanged SQLite store (same size and modification time, write-ahead log included: any alias move
    or new version changes them) reads it from there without opening the store or importing MLflow.
    With ``lite``, the cache also keeps the model converted for LiteRT when it converts (see
    :func:`lite_flatbuffer`), and a later load answers with it, without importing TensorFlow: most of
    a one-sketch ``predict``'s time is TensorFlow's import.
    """
    import shutil

    uri = model_uri or champion_uri(settings)
    cache = _cache_dir(settings, uri)
    recorded = _cached_stamp(settings, uri)
    if recorded is not None:
        if lite and recorded.get("lite"):
            return _lite_classifier(cache / recorded["model"], cache / recorded["lite"])
        return _classifier_from(cache / recorded["model"], uri)
    from pipeline import registry, tracking

    shutil.rmtree(cache, ignore_errors=True)
    local = registry.download_model(tracking.client_for(settings.resolved_tracking_uri), uri, cache / "model")
    classifier = _classifier_from(local, uri)
    flatbuffer = lite_flatbuffer(classifier.model, classifier.max_len) if lite else None
    if flatbuffer is not None:
        (cache / LITE_MODEL).write_bytes(flatbuffer)
    state = _store_state(settings.resolved_tracking_uri)
    if state is not None:
        stamp = {"uri": uri, "store": state, "model": str(local.relative_to(cache))}
        (cache / "stamp.json").write_text(json.dumps({**stamp, "lite": LITE_MODEL if flatbuffer else None}))
    return classifier


def _cached_stamp(settings: Settings, uri: str) -> dict | None:
    """Return the cache's record of ``uri`` if it is still that of the store as it is now, else ``None``."""
    state = _store_state(settings.resolved_tracking_uri)
    stamp = _cache_dir(settings, uri) / "stamp.json"
    if state is None or not stamp.is_file():
        return None
    recorded = json.loads(stamp.read_text())
    return recorded if recorded["uri"] == uri and recorded["store"] == state else None


def _lite_classifier(local: Path, lite: Path) -> Classifier:
    """Return the classifier of a cached model folder whose network runs on LiteRT."""
    import yaml

    metadata = yaml.safe_load((local / "MLmodel").read_text()).get("metadata") or {}
    return Classifier.from_metadata(LiteModel(lite.read_bytes()), metadata)


def _classifier_from(local: Path, uri: str) -> Classifier:
    """Return the classifier of a downloaded ``mlflow.keras`` model folder (read without MLflow)."""
    import keras
    import yaml

    conf = yaml.safe_load((local / "MLmodel").read_text())
    metadata = conf.get("metadata") or {}
    if "classes" not in metadata or "keras" not in conf.get("flavors", {}):
        raise ValueError(f"{uri} was not logged by sketchpipe (no class metadata)")
    model = keras.saving.load_model(local / conf["flavors"]["keras"].get("data", "data") / "model.keras", compile=False)
    return Classifier.from_metadata(model, metadata)


def _cache_dir(settings: Settings, uri: str) -> Path:
    key = hashlib.sha256(f"{settings.resolved_tracking_uri}|{uri}".encode()).hexdigest()[:16]
    return (Path(settings.work_dir) / "serving-cache" / key).resolve()


def _store_state(tracking_uri: str) -> list[int] | None:
    """Return what changes whenever a SQLite store is written (size and mtime of it and its WAL), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None  # a server: always asked
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    state = []
    for part in (path, path.with_name(path.name + "-wal")):
        stat = part.stat() if part.exists() else None
        state += [stat.st_size, stat.st_mtime_ns] if stat else [0, 0]
    return state


def _parse_json_sketches(text: str, source: str) -> list[np.ndarray]:
    """Return the sketches in a JSON text: one stroke-3 list of ``[dx, dy, pen]`` rows, a list of them, or a
    scoring request body (``{"strokes": ...}``, ``dataframe_records``, ``inputs``: see :mod:`pipeline.pyfunc`)."""
    from pipeline.pyfunc import request_sketches

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StrokeFormatError(f"{source}: not JSON ({exc})") from exc
    except RecursionError:
        raise StrokeFormatError(f"{source}: not JSON (nested too deeply)") from None
    if isinstance(data, dict):
        try:
            items, _ = request_sketches(data)
        except StrokeFormatError as exc:
            raise StrokeFormatError(f"{source}: {exc}") from None
        return stroke3_sketches(items, f"{source}: ")
    if not isinstance(data, list) or not data:
        raise StrokeFormatError(f"{source}: expected a stroke-3 list of [dx, dy, pen] rows, or a list of them")
    items = data if isinstance(data[0], list) and data[0] and isinstance(data[0][0], list) else [data]
    return stroke3_sketches(items, f"{source}: ")


def _read_ndjson_sketches(path: str) -> dict[str, np.ndarray]:
    """Return ``path:line N`` -> stroke-3 for every drawing of a Quick, Draw! ndjson file (simplified or raw)."""
    from pipeline.quickdraw_formats import drawing_to_stroke3, open_ndjson

    sketches = {}
    number = 0
    try:
        with open_ndjson(Path(path)) as lines:
            for number, raw_line in enumerate(lines, start=1):
                try:
                    line = _decode(raw_line.removeprefix(codecs.BOM_UTF8) if number == 1 else raw_line)
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except RecursionError:
                        raise ValueError("not JSON (nested too deeply)") from None
                    if not isinstance(item, dict) or "drawing" not in item:
                        raise ValueError("no 'drawing' field")
                    sketches[f"{path}:{number}"] = drawing_to_stroke3(item["drawing"]).astype(np.float32)
                except (ValueError, OverflowError) as exc:  # json.JSONDecodeError, UnicodeDecodeError: ValueErrors
                    raise StrokeFormatError(f"{path}: line {number}: {exc}") from exc
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # a compressed file that breaks off
        raise StrokeFormatError(f"{path}: line {number + 1}: compressed file broken here ({exc})") from exc
    return sketches


def _decode(data: bytes) -> str:
    """Return UTF-8 bytes as text; other bytes raise a ValueError that says where (no exception chain)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 4]!r})") from None


SKETCH_FILE_SUFFIXES = (".npz", ".ndjson", ".json")


def read_sketch_files(paths: list[str]) -> dict[str, np.ndarray]:
    """Return name -> stroke-3 sketch for every sketch in ``.npz`` (sketch-rnn), ``.ndjson`` (Quick, Draw!,
    simplified or raw) and ``.json`` (stroke-3, or a scoring request body) files; a folder stands for
    the files of these kinds in it (sorted by name); ``-`` reads JSON from stdin.

    Raises:
        StrokeFormatError: naming the file (and the line or sketch) that cannot be read.
    """
    sketches: dict[str, np.ndarray] = {}
    for path in paths:
        if path == "-":
            for i, sketch in enumerate(_parse_json_sketches(_read_stdin(), "stdin")):
                sketches[f"stdin[{i}]"] = sketch
            continue
        if Path(path).is_dir():
            inside = sorted(str(p) for p in Path(path).iterdir() if p.suffix in SKETCH_FILE_SUFFIXES and p.is_file())
            if not inside:
                raise StrokeFormatError(f"{path}: a folder with no {', '.join(SKETCH_FILE_SUFFIXES)} file")
            sketches.update(read_sketch_files(inside))
            continue
        check_source_file(Path(path), max_bytes=MAX_SKETCH_FILE_BYTES)  # no FIFO, device or endless read
        if path.endswith(".ndjson"):
            sketches.update(_read_ndjson_sketches(path))
        elif path.endswith(".npz"):
            for split, items in load_sketchrnn_npz(Path(path)).items():
                for i, sketch in enumerate(items):
                    check_stroke3(sketch, f"{path}:{split}[{i}]")
                    sketches[f"{path}:{split}[{i}]"] = sketch
        else:
            try:
                text = _decode(Path(path).read_bytes().removeprefix(codecs.BOM_UTF8))
            except ValueError as exc:
                raise StrokeFormatError(f"{path}: {exc}") from exc
            for i, sketch in enumerate(_parse_json_sketches(text, path)):
                sketches[f"{path}[{i}]"] = sketch
    return sketches


def _read_stdin() -> str:
    """Return standard input as text, read up to :data:`MAX_SKETCH_FILE_BYTES`."""
    stream = getattr(sys.stdin, "buffer", sys.stdin)
    data = stream.read(MAX_SKETCH_FILE_BYTES + 1)
    if len(data) > MAX_SKETCH_FILE_BYTES:
        raise StrokeFormatError(f"stdin: over the {MAX_SKETCH_FILE_BYTES / 2**30:g} GiB read whole")
    if isinstance(data, str):
        return data
    try:
        return _decode(data.removeprefix(codecs.BOM_UTF8))
    except ValueError as exc:
        raise StrokeFormatError(f"stdin: {exc}") from exc


def format_predictions(names: list[str], top: list[list[tuple[str, float]]], fmt: str) -> str:
    """Return ``predict``'s output: ``text`` (a line per sketch), ``json`` (a JSON object per line, with the
    fields of the served answer and the sketch's name) or ``csv`` (a header, then a row per sketch)."""
    if fmt == "json":
        return "\n".join(
            json.dumps(
                {
                    "sketch": name,
                    "class": ranked[0][0],
                    "probability": round(ranked[0][1], 6),
                    "top_classes": [label for label, _ in ranked],
                    "top_probabilities": [round(p, 6) for _, p in ranked],
                }
            )
            for name, ranked in zip(names, top, strict=True)
        )
    if fmt == "csv":
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        k = max((len(ranked) for ranked in top), default=0)
        columns = [f"{what}_{rank}" for rank in range(1, k + 1) for what in ("class", "probability")]
        writer.writerow(["sketch", *columns])
        for name, ranked in zip(names, top, strict=True):
            writer.writerow([name, *[v for label, p in ranked for v in (label, f"{p:.6f}")]])
        return out.getvalue().rstrip("\n")
    pairs = zip(names, top, strict=True)
    return "\n".join(f"{name}: " + ", ".join(f"{label} {p:.3f}" for label, p in ranked) for name, ranked in pairs)
