"""The registered model's ``python_function`` flavour: raw sketches in, class names out.

Every registered version is a Keras model (``mlflow.keras``) whose ``python_function`` flavour names
this module as its loader (no pickled Python object is stored or loaded), so ``mlflow models serve``,
``mlflow.pyfunc.load_model`` and Spark UDFs all answer the same way:

Request (``POST /invocations``), sketches of any lengths in one batch, raw stroke-3 ``[dx, dy, pen]``
rows as drawn (no padding or normalisation needed; ``k`` is optional, 3 by default)::

    {"dataframe_records": [{"strokes": [[12, 3, 0], [5, -8, 1]]}, {"strokes": [[1, 1, 0], [4, 2, 0], [3, 3, 1]]}],
     "params": {"k": 3}}

Response, one record per sketch, in request order::

    {"predictions": [{"class": "cat", "probability": 0.91,
                      "top_classes": ["cat", "dog", "lion"], "top_probabilities": [0.91, 0.05, 0.02]}, ...]}
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_TOP_K = 3


def _load_pyfunc(path: str) -> SketchClassifierModel:
    """Load the model for ``mlflow.pyfunc`` (``path`` is the flavour's data folder or the model folder)."""
    import mlflow.keras
    from mlflow.models import Model

    from pipeline.serving import Classifier

    root = Path(path) if (Path(path) / "MLmodel").is_file() else Path(path).parent
    metadata = Model.load(str(root / "MLmodel")).metadata or {}
    return SketchClassifierModel(
        Classifier.from_metadata(mlflow.keras.load_model(str(root), load_model_kwargs={"compile": False}), metadata)
    )


class SketchClassifierModel:
    """Answers raw sketches of any lengths with the top-k class names and their probabilities."""

    def __init__(self, classifier):
        self.classifier = classifier

    def predict(self, model_input, params: dict | None = None):
        """Return a table with ``class``, ``probability``, ``top_classes`` and ``top_probabilities`` per sketch.

        ``model_input``: a table with a ``strokes`` column (one sketch per row), a mapping with a
        ``strokes`` list, a list of sketches, or a zero-padded ``(batch, time, 3)`` array.
        """
        import pandas as pd

        k = max(1, min(int((params or {}).get("k", DEFAULT_TOP_K)), len(self.classifier.classes)))
        try:
            sketches = sketches_of(model_input)
            self.classifier.check_range(sketches)
        except ValueError as exc:  # StrokeFormatError too: the reason, as the answer's message (HTTP 400),
            from mlflow.exceptions import MlflowException  # not "an unexpected error" and a stack trace
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from exc
        top = self.classifier.top_k(sketches, k)
        return pd.DataFrame(
            {
                "class": [ranked[0][0] for ranked in top],
                "probability": [ranked[0][1] for ranked in top],
                "top_classes": [[name for name, _ in ranked] for ranked in top],
                "top_probabilities": [[p for _, p in ranked] for ranked in top],
            }
        )


def sketches_of(model_input) -> list[np.ndarray]:
    """Return the ``(n, 3)`` float32 sketches of a request, whatever form MLflow hands it in.

    Raises:
        StrokeFormatError: naming the sketch that is not a non-empty list of ``[dx, dy, pen]`` rows.
    """
    import pandas as pd

    from pipeline.strokes import stroke3_sketches

    if isinstance(model_input, pd.DataFrame):
        if "strokes" not in model_input.columns:
            raise ValueError(f"expected a 'strokes' column, got {list(model_input.columns)}")
        items = list(model_input["strokes"])
    elif isinstance(model_input, dict):
        items = list(model_input["strokes"])
    else:
        items = list(model_input)
    return stroke3_sketches(items)


def request_sketches(payload) -> tuple[list, int | None]:
    """Return the sketches (unchecked: see :func:`sketches_of`) and ``params.k`` of a scoring request body.

    Accepts MLflow's request forms (``dataframe_records``, ``dataframe_split``, ``inputs``, ``instances``)
    and the short ``{"strokes": [...]}``: one sketch or a list of them.

    Raises:
        StrokeFormatError: the body has none of these forms, or ``k`` is not a positive whole number.
    """
    from pipeline.strokes import StrokeFormatError

    if not isinstance(payload, dict):
        raise StrokeFormatError("expected a JSON object with dataframe_records, dataframe_split, inputs or strokes")
    k = (payload.get("params") or {}).get("k") if isinstance(payload.get("params"), dict) else None
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise StrokeFormatError(f"params.k must be a positive whole number (got {str(k)[:40]!r})")
    if "dataframe_records" in payload:
        records = payload["dataframe_records"]
        if not isinstance(records, list) or not all(isinstance(r, dict) and "strokes" in r for r in records):
            raise StrokeFormatError('dataframe_records must be a list of {"strokes": [...]} records')
        items = [record["strokes"] for record in records]
    elif "dataframe_split" in payload:
        split = payload["dataframe_split"]
        columns = split.get("columns") if isinstance(split, dict) else None
        if not isinstance(columns, list) or "strokes" not in columns or not isinstance(split.get("data"), list):
            raise StrokeFormatError('dataframe_split must have columns with "strokes" and data rows')
        column = columns.index("strokes")
        items = [row[column] if isinstance(row, list) and len(row) > column else None for row in split["data"]]
    else:
        key = next((name for name in ("inputs", "instances", "strokes") if name in payload), None)
        if key is None:
            raise StrokeFormatError("expected dataframe_records, dataframe_split, inputs, instances or strokes")
        items = payload[key]
        if key != "strokes" and isinstance(items, dict):
            items = items.get("strokes")
        if _is_one_sketch(items):
            items = [items]
    if not isinstance(items, list) or not items:
        raise StrokeFormatError("the request holds no sketch")
    return items, k


def _is_one_sketch(items) -> bool:
    """Return whether ``items`` is one stroke-3 sketch (rows of numbers) rather than a list of sketches."""
    return (
        isinstance(items, list)
        and bool(items)
        and isinstance(items[0], list)
        and bool(items[0])
        and not isinstance(items[0][0], list)
    )
