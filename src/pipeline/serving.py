"""Loading a registered model and predicting classes for raw stroke-3 sketches."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import registry, tracking
from pipeline.config import Settings
from pipeline.evaluation import compiled_inference
from pipeline.features import normalising_layer, pad_batch
from pipeline.strokes import StrokeFormatError, drop_noop_points, load_sketchrnn_npz


@dataclasses.dataclass
class Classifier:
    """A loaded serving model (it takes raw stroke-3) with its class names and crop length."""

    model: object
    classes: list[str]
    max_len: int
    _infer: object = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def probabilities(self, sketches: list[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Return ``(n, classes)`` probabilities for raw stroke-3 sketches, cropped as in training.

        Batches go through one graph function traced for any batch size and length (see
        :func:`pipeline.evaluation.compiled_inference`): ``model.predict`` retraced for each new
        padded length and cost ~2 s per 1,600 sketches for an LSTM, most of the promotion gate.
        """
        if self._infer is None:
            self._infer = compiled_inference(self.model)
        out = []
        for start in range(0, len(sketches), batch_size):
            batch = pad_batch(
                [
                    drop_noop_points(np.asarray(s, dtype=np.float32))[: self.max_len]
                    for s in sketches[start : start + batch_size]
                ]
            )
            out.append(self._infer(batch).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def top_classes(self, sketches: list[np.ndarray]) -> list[str]:
        """Return the most likely class name per sketch."""
        return [self.classes[i] for i in self.probabilities(sketches).argmax(axis=1)]

    def top_k(self, sketches: list[np.ndarray], k: int = 3) -> list[list[tuple[str, float]]]:
        """Return the ``k`` most likely classes with their probabilities, per sketch."""
        probabilities = self.probabilities(sketches)
        order = np.argsort(-probabilities, axis=1)[:, :k]
        return [[(self.classes[i], float(row[i])) for i in top] for row, top in zip(probabilities, order, strict=True)]


def export_model(trained, scale: float):
    """Return the serving model: preprocessing's normalisation followed by the trained network.

    It takes raw stroke-3 ``(batch, time, 3)`` float32 with zero-padding, so whoever serves it needs
    no knowledge of the training set's scale.
    """
    import keras

    inputs = keras.Input(shape=(None, 3), dtype="float32", name="strokes")
    return keras.Model(inputs, trained(normalising_layer(scale)(inputs)), name=f"{trained.name}_serving")


def champion_uri(settings: Settings) -> str:
    """Return the URI of the registered model's champion."""
    return f"models:/{settings.registered_model_name}@{registry.CHAMPION}"


def load_classifier(settings: Settings, model_uri: str | None = None) -> Classifier:
    """Load a logged model (the champion by default) of the settings' store, with the preprocessing
    metadata logged with it."""
    import tempfile

    import mlflow.keras
    from mlflow.models import Model

    uri = model_uri or champion_uri(settings)
    with tempfile.TemporaryDirectory() as tmp:
        local = registry.download_model(tracking.client_for(settings.resolved_tracking_uri), uri, Path(tmp))
        metadata = Model.load(str(local / "MLmodel")).metadata or {}
        if "classes" not in metadata:
            raise ValueError(f"{uri} was not logged by sketchpipe (no class metadata)")
        model = mlflow.keras.load_model(str(local))
    return Classifier(model=model, classes=list(metadata["classes"]), max_len=int(metadata["max_len"]))


def _parse_json_sketches(text: str, source: str) -> list[np.ndarray]:
    """Return the sketches in a JSON text: one stroke-3 list of ``[dx, dy, pen]`` rows, or a list of them."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StrokeFormatError(f"{source}: not JSON ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise StrokeFormatError(f"{source}: expected a stroke-3 list of [dx, dy, pen] rows, or a list of them")
    items = data if isinstance(data[0], list) and data[0] and isinstance(data[0][0], list) else [data]
    sketches = []
    for index, item in enumerate(items):
        try:
            sketch = np.asarray(item, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise StrokeFormatError(f"{source}: sketch {index} is not a list of [dx, dy, pen] rows") from exc
        if sketch.ndim != 2 or sketch.shape[1] != 3 or len(sketch) == 0:
            raise StrokeFormatError(f"{source}: sketch {index} is not a non-empty list of [dx, dy, pen] rows")
        sketches.append(sketch)
    return sketches


def _read_ndjson_sketches(path: str) -> dict[str, np.ndarray]:
    """Return ``path:line N`` -> stroke-3 for every drawing of a Quick, Draw! ndjson file (simplified or raw)."""
    from pipeline.quickdraw_formats import drawing_to_stroke3

    sketches = {}
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                if not isinstance(item, dict) or "drawing" not in item:
                    raise ValueError("no 'drawing' field")
                sketches[f"{path}:{number}"] = drawing_to_stroke3(item["drawing"]).astype(np.float32)
            except ValueError as exc:  # json.JSONDecodeError is one
                raise StrokeFormatError(f"{path}: line {number}: {exc}") from exc
    return sketches


def read_sketch_files(paths: list[str]) -> dict[str, np.ndarray]:
    """Return name -> stroke-3 sketch for every sketch in ``.npz`` (sketch-rnn), ``.ndjson`` (Quick, Draw!,
    simplified or raw) and ``.json`` (stroke-3) files; ``-`` reads JSON from stdin."""
    sketches: dict[str, np.ndarray] = {}
    for path in paths:
        if path.endswith(".ndjson"):
            sketches.update(_read_ndjson_sketches(path))
        elif path == "-":
            for i, sketch in enumerate(_parse_json_sketches(sys.stdin.read(), "stdin")):
                sketches[f"stdin[{i}]"] = sketch
        elif path.endswith(".npz"):
            for split, items in load_sketchrnn_npz(Path(path)).items():
                for i, sketch in enumerate(items):
                    sketches[f"{path}:{split}[{i}]"] = sketch
        else:
            for i, sketch in enumerate(_parse_json_sketches(Path(path).read_text(), path)):
                sketches[f"{path}[{i}]"] = sketch
    return sketches
