"""Training throughput per architecture (sketches/s) at a fixed size, on the synthetic set.

    .venv/bin/python benchmarks/train_throughput.py [--per-class 400] [--epochs 2]

Each architecture is built with its default hyperparameters from sketchpipe.yaml and fitted with
plain ``model.fit`` on the pipeline's tf.data input. Throughput is taken over the epochs after the
first (the first includes graph tracing), and reported with the first epoch's time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import prepared_features, print_table, write_results


def _epoch_timer_class():
    import keras

    class EpochTimer(keras.callbacks.Callback):
        """Records the wall time of every epoch."""

        def __init__(self):
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self.started)

    return EpochTimer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--architectures", default="simple_rnn,lstm,gru,conv_lstm,bilstm,wavenet,transformer")
    args = parser.parse_args()

    settings, features = prepared_features(Path(tempfile.mkdtemp()), args.per_class)
    import keras

    from pipeline.features import make_dataset, read_spec
    from pipeline.models import build_model
    from pipeline.stages import training
    from pipeline.training import compile_model

    spec = read_spec(features)
    _EpochTimer = _epoch_timer_class()  # noqa: N806 - a class
    rows = []
    for architecture in args.architectures.split(","):
        config = training.training_config(settings, architecture)
        keras.utils.set_random_seed(config.seed)
        model = compile_model(build_model(architecture, len(spec.classes), config.model_params), 3e-3, 1.0)
        train = make_dataset(features, "train", config.batch_size, shuffle=True, seed=config.seed)
        timer = _EpochTimer()
        model.fit(train, epochs=args.epochs, callbacks=[timer], shuffle=False, verbose=0)
        epoch_times = timer.times
        steady = epoch_times[1:] or epoch_times
        rows.append(
            {
                "architecture": architecture,
                "params": model.count_params(),
                "first_epoch_s": epoch_times[0],
                "epoch_s": sum(steady) / len(steady),
                "sketches_per_s": spec.counts["train"] / (sum(steady) / len(steady)),
            }
        )
        print_table(rows[-1:])
    path = write_results("train_throughput", {**vars(args), "train_sketches": spec.counts["train"]}, rows)
    print()
    print_table(rows)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
