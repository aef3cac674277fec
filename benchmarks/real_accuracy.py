"""Accuracy on real Quick, Draw! drawings, every architecture beside two published models, same budget.

    .venv/bin/python benchmarks/real_accuracy.py [--config configs/quickdraw.yaml] [--epochs 20]
        [--architectures wavenet,lstm,...] [--anchors tutorial,book | --anchors none] [--name real_accuracy]
        [--seeds N] [--also SETTINGS_FILE ...]

Data: ``../shared/data/quickdraw-raw-345`` (raw ndjson, 345 classes, about 22 drawings each) through the
pipeline's own stages: ingest (raw drawings simplified as the published set), validation and
preprocessing. About 20% of every class is the test set and 10% the validation set, chosen by a hash
of ``key_id`` (the pipeline's ``test_share`` and ``valid_share``), so every model sees the same sketches.

Ours are trained by ``pipeline.training.train_model`` with the settings of ``--config`` (what
``sketchpipe run --config FILE`` does); the anchors, built only here, go through the same training
loop and input pipeline with the pipeline's default training settings (Adam 3e-3 with clipping,
learning rate halved on plateaus, early stopping on validation loss, no augmentation):

- ``tutorial``: TensorFlow's quickdraw RNN tutorial model: Conv1D 48/64/96 (kernels 5, 5, 3; dropout
  0.3 before each), three bidirectional LSTM layers of 128 units, the outputs summed over the real steps;
- ``book``: the solution of Geron's chapter 16 exercise: three strided Conv1D (32/64/128) each with
  batch normalisation, two LSTM layers of 128, trained with Adam as the issue measured it ("same"
  padding here: "valid" leaves no steps of the short sketches that bucketing batches together).

Every model is scored as it would be served (raw stroke-3 in) on the test split: top-1, top-3 and
macro F1; training throughput is sketches per second over the epochs after the first, the validation
pass excluded. With ``--seeds N`` every model is trained N times (seeds ``seed``, ``seed + 1``, ...:
initial weights, batch order, augmentation) and the row holds the means, with the lowest and highest
top-1 beside them: on 1,422 test drawings one seed's top-1 moves by about 0.01-0.02.
TensorFlow's thread pools are those of ``--config`` (``intra_op_threads``, ``inter_op_threads``) for
every model of the run, anchors and ``--also`` files included: a process sizes them once.
Results: ``benchmarks/results/<name>.json`` and a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import print_table, write_results

from pipeline.config import configure_runtime, load_settings, use_tensorflow_threads

REAL_SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "quickdraw-raw-345"
ANCHORS = ("tutorial", "book")


def build_tutorial(num_classes: int):
    """Return TensorFlow's quickdraw tutorial model (tutorials/rnn/quickdraw/train_model.py), in Keras."""
    import keras
    from keras import layers, ops

    inputs = keras.Input(shape=(None, 3), dtype="float32", name="strokes")
    mask = ops.any(ops.not_equal(inputs, 0.0), axis=-1)
    weights = ops.expand_dims(ops.cast(mask, "float32"), -1)
    x = inputs
    for filters, kernel in ((48, 5), (64, 5), (96, 3)):
        x = layers.Dropout(0.3)(x)
        x = layers.Conv1D(filters, kernel, padding="same")(x) * weights  # no activation, as in the tutorial
    for _ in range(3):
        x = layers.Bidirectional(layers.LSTM(128, return_sequences=True, dropout=0.3))(x, mask=mask)
    x = ops.sum(x * weights, axis=1)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="tutorial")


def build_book(num_classes: int):
    """Return the solution of the quickdraw exercise of Geron's *Hands-On Machine Learning*, chapter 16."""
    import keras
    from keras import layers

    return keras.Sequential(
        [
            keras.Input(shape=(None, 3), dtype="float32", name="strokes"),
            layers.Conv1D(32, kernel_size=5, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Conv1D(64, kernel_size=5, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.Conv1D(128, kernel_size=3, strides=2, padding="same", activation="relu"),
            layers.BatchNormalization(),
            layers.LSTM(128, return_sequences=True),
            layers.LSTM(128),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="book",
    )


def _epoch_timer():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Records each epoch's training time, from its start to the start of its validation pass."""

        def __init__(self):
            super().__init__()
            self.times: list[float] = []
            self._started = None

        def on_epoch_begin(self, epoch, logs=None):
            self._started = time.perf_counter()

        def on_test_begin(self, logs=None):
            if self._started is not None:
                self.times.append(time.perf_counter() - self._started)
                self._started = None

    return EpochTimer()


def _data_overrides(work_dir: Path, epochs: int) -> dict:
    """Return the settings every model of the benchmark shares: the real sample, its split, the budget."""
    return {
        "source": "ndjson",
        "data_dir": str(REAL_SAMPLE.resolve()),
        "valid_share": 0.1,
        "test_share": 0.2,
        "work_dir": str(work_dir),
        "epochs": epochs,
        "progress": "off",
    }


def prepare(work_dir: Path, config: str | None, epochs: int, **changes):
    """Return (our settings, the anchors' settings, features folder) for the real sample; ``changes``
    are settings given over ``config``'s."""
    configure_runtime()
    from pipeline.ingest import ingest
    from pipeline.stages import data

    data_overrides = _data_overrides(work_dir, epochs)
    ours = load_settings(config, {**data_overrides, **changes}, environ={})
    use_tensorflow_threads(ours)  # before TensorFlow's first operation: for every model of the process
    anchors = load_settings(None, {**data_overrides, "max_len": ours.max_len, "batch_size": ours.batch_size}, {})
    report = data.validate(ours, ingest(ours))
    return ours, anchors, data.preprocess(ours, report)


def measure(architecture: str, settings, features: Path, work_dir: Path) -> dict:
    """Train one model with the pipeline's training loop, score it on the test split, return its row."""
    from pipeline.evaluation import evaluate_model
    from pipeline.features import read_spec, split_sketches
    from pipeline.serving import export_model
    from pipeline.stages.training import training_config
    from pipeline.training import train_model

    spec = read_spec(features)
    config = training_config(settings, architecture)
    timer = _epoch_timer()
    trained = train_model(config, features, work_dir / "models" / architecture, callbacks=[timer])
    import keras

    serving = export_model(keras.saving.load_model(trained.model_path), spec.scale)
    sketches, labels = split_sketches(features, "test")
    evaluation, _ = evaluate_model(serving, sketches, labels, len(spec.classes), model_size_bytes=0)
    steady = timer.times[1:] or timer.times
    return {
        "model": architecture,
        "top1": evaluation.accuracy,
        "top3": evaluation.top3_accuracy,
        "macro_f1": evaluation.macro_f1,
        "train_sketches_per_s": spec.counts["train"] / (sum(steady) / len(steady)),
        "epochs_run": trained.epochs_run,
        "train_accuracy": trained.history["accuracy"][-1],
        "params": trained.num_params,
        "train_s": trained.train_seconds,
    }


def measure_seeds(architecture: str, settings, features: Path, work_dir: Path, seeds: int) -> dict:
    """Return the row of ``architecture`` trained ``seeds`` times (seeds from the settings' seed on): the
    means of every number, and the lowest and highest top-1."""
    if seeds == 1:
        return {**measure(architecture, settings, features, work_dir), "seeds": 1}
    runs = [
        measure(architecture, settings.replace(seed=settings.seed + i), features, work_dir / f"seed{i}")
        for i in range(seeds)
    ]
    row = {k: v if isinstance(v, str) else sum(r[k] for r in runs) / seeds for k, v in runs[0].items()}
    top1 = [r["top1"] for r in runs]
    return {**row, "seeds": seeds, "top1_min": min(top1), "top1_max": max(top1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickdraw.yaml", help="our settings ('none': the defaults)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--architectures", default=None, help="default: those of the config's models")
    parser.add_argument("--anchors", default=",".join(ANCHORS), help="tutorial,book or none")
    parser.add_argument(
        "--also", action="append", default=[], metavar="FILE",
        help="another settings file (e.g. one `sketchpipe tune` wrote): its architectures as extra rows",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1, help="train every model this many times; report means")
    parser.add_argument("--name", default="real_accuracy")
    parser.add_argument("--work-dir", default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    if not REAL_SAMPLE.is_dir():
        raise SystemExit(f"no real sample at {REAL_SAMPLE.resolve()} (the shared data folder)")
    config = None if args.config == "none" else args.config
    work_dir = Path(args.work_dir or tempfile.mkdtemp(prefix="real_accuracy-"))
    ours, anchor_settings, features = prepare(work_dir, config, args.epochs)

    from pipeline import models
    from pipeline.config import ARCHITECTURES
    from pipeline.features import read_spec

    models.MODEL_BUILDERS.update({"tutorial": build_tutorial, "book": build_book})  # this process only
    spec = read_spec(features)
    chosen = args.architectures
    architectures = list(ARCHITECTURES) if chosen is None else [a for a in chosen.split(",") if a]
    anchors = [] if args.anchors == "none" else args.anchors.split(",")
    print(f"{len(spec.classes)} classes; sketches: {spec.counts}; {args.epochs} epochs; work folder {work_dir}")
    rows = []
    for name in [*architectures, *anchors]:
        settings = anchor_settings if name in ANCHORS else ours
        row = measure_seeds(name, settings, features, work_dir, args.seeds)
        rows.append({"kind": "anchor" if name in ANCHORS else "ours", **row})
        print_table(rows[-1:])
    for extra in args.also:
        settings = load_settings(extra, _data_overrides(work_dir, args.epochs), environ={})
        for name in settings.architectures:
            row = measure_seeds(name, settings, features, work_dir / Path(extra).stem, args.seeds)
            rows.append({"kind": "ours", **row, "model": f"{name} ({Path(extra).stem})"})
            print_table(rows[-1:])
    tutorial = next((r["top1"] for r in rows if r["model"] == "tutorial"), None)
    if tutorial:
        for row in rows:
            row["x_tutorial"] = row["top1"] / tutorial
    path = write_results(
        args.name,
        {**vars(args), "classes": len(spec.classes), "counts": spec.counts},
        rows,
        {"settings": {k: str(v) for k, v in vars(ours).items()}},
    )
    print()
    print_table(rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
