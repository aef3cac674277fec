"""How long an epoch waits for its input pipeline to start, as the pipeline is and as it was, side by side.

    .venv/bin/python benchmarks/epoch_start.py [--epochs 8] [--repeats 5] [--name epoch_start]

On the real sample (``../shared/data/quickdraw-raw-345``, prepared as ``benchmarks/real_accuracy.py``
prepares it) with the real-data profile's ``wavenet`` (``configs/quickdraw.yaml``, its augmentation
included), two settings of ``pipeline.features`` alternate in one process:

- ``now``: the input pipeline's defaults (``InputOptions``): an epoch's first block holds 4 batches (the
  later ones double up to 64), and TensorFlow cuts the blocks without its ragged checks;
- ``before`` (the anchor): every block 64 batches, the ragged checks on.

For each: creating the training set's iterator and waiting for its first batch (the input pipeline
alone, medians over the epochs after the first), then training a new model for ``--epochs`` epochs,
each epoch timed from its start to its validation pass (``real_accuracy.py``'s timer), as sketches/s
over the median epoch after the first. Results: ``benchmarks/results/<name>.json`` and a table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from _common import print_table, write_results
from real_accuracy import REAL_SAMPLE, _epoch_timer, prepare

SETTINGS = {"now": {}, "before": {"first_block_batches": 64, "ragged_checks": True}}


def _train_set(features: Path, config, options: dict):
    """Return the training set as training makes it (shuffled, augmented), with these input options."""
    from pipeline.features import InputOptions
    from pipeline.training import training_set

    return training_set(config, features, InputOptions(**options))


def _input_start(features: Path, config, epochs: int, options: dict) -> tuple[list[float], list[float]]:
    """Return the iterator-creation and first-batch times (s) of ``epochs`` passes over the training set."""
    train = _train_set(features, config, options)
    created, first = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        iterator = iter(train)
        created.append(time.perf_counter() - started)
        next(iterator)
        first.append(time.perf_counter() - started)
        for _ in iterator:  # the rest of the epoch, so that the next pass is the next epoch
            pass
    return created[1:], first[1:]


def _training(features: Path, config, num_classes: int, epochs: int, options: dict):
    from pipeline.features import make_dataset
    from pipeline.training import seeded_model

    train = _train_set(features, config, options)
    model = seeded_model(config, num_classes, int(train.cardinality()))
    timer = _epoch_timer()
    valid = make_dataset(features, "valid", config.batch_size)
    model.fit(train, validation_data=valid, epochs=epochs, callbacks=[timer], shuffle=False, verbose=0)
    return timer.times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickdraw.yaml")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of both settings, alternating")
    parser.add_argument("--name", default="epoch_start")
    args = parser.parse_args()
    if not REAL_SAMPLE.is_dir():
        raise SystemExit(f"no real sample at {REAL_SAMPLE.resolve()} (the shared data folder)")
    ours, _, features = prepare(Path(tempfile.mkdtemp(prefix="epoch-start-")), args.config, args.epochs)

    from pipeline.features import read_spec
    from pipeline.stages.training import training_config

    spec = read_spec(features)
    config = training_config(ours, ours.architectures[0])
    print(f"{config.architecture}: {spec.counts['train']} training sketches, {args.epochs} epochs x {args.repeats}")
    measured = {name: {"created": [], "first_batch": [], "train": []} for name in SETTINGS}
    for _ in range(args.repeats):
        for name, options in SETTINGS.items():
            created, first_batch = _input_start(features, config, args.epochs, options)
            train = _training(features, config, len(spec.classes), args.epochs, options)
            for key, times in zip(measured[name], (created, first_batch, train), strict=True):
                measured[name][key].extend(times)

    rows = []
    for name, times in measured.items():
        train = statistics.median(times["train"])
        rows.append(
            {
                "pipeline": name,
                **{key: str(value) for key, value in SETTINGS[name].items()},
                "iterator_ms": 1000 * statistics.median(times["created"]),
                "first_batch_ms": 1000 * statistics.median(times["first_batch"]),
                "epoch_train_s": train,
                "train_sketches_per_s": spec.counts["train"] / train,
            }
        )
    for row in rows:
        row["x_before"] = row["train_sketches_per_s"] / rows[-1]["train_sketches_per_s"]
    path = write_results(
        args.name,
        {**vars(args), "architecture": config.architecture, "counts": spec.counts},
        rows,
        {"epochs": measured},
    )
    print()
    print_table(rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
