"""Training one architecture with Keras: compile, callbacks (early stopping, LR schedule, checkpoints,
resume after a kill) and fit on the tf.data pipeline."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import keras

from pipeline.features import Augmentation, make_dataset, read_spec
from pipeline.models import build_model


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The hyperparameters of one training job."""

    architecture: str
    epochs: int = 5
    batch_size: int = 64
    learning_rate: float = 3e-3
    clipnorm: float = 1.0
    early_stopping_patience: int = 3
    seed: int = 42
    distribute: str = "auto"
    augment_scale: float = 0.0
    augment_rotation: float = 0.0
    augment_jitter: float = 0.0
    augment_stroke_dropout: float = 0.0
    model_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def augmentation(self) -> Augmentation | None:
        """Return the training-time augmentation, or None when every kind is off."""
        augmentation = Augmentation(
            self.augment_scale, self.augment_rotation, self.augment_jitter, self.augment_stroke_dropout
        )
        return augmentation if augmentation.active else None

    def as_params(self) -> dict[str, Any]:
        """Return every hyperparameter as a flat mapping, for experiment tracking."""
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k != "model_params"}
        flat.update({f"model_{k}": v for k, v in self.model_params.items()})
        return flat


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """Where a trained model was saved and how training went."""

    architecture: str
    model_path: str
    epochs_run: int  # epochs completed in total, including those before a resume
    train_seconds: float  # of this call only
    num_params: int
    history: dict[str, list[float]]


def distribution_strategy(name: str = "auto"):
    """Return the ``tf.distribute`` strategy: ``mirrored`` (all visible GPUs), ``default``, or
    ``auto`` (mirrored when more than one GPU is visible, else the default strategy)."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def compile_model(model: keras.Model, learning_rate: float, clipnorm: float) -> keras.Model:
    """Compile with Adam (gradient clipping by norm), cross-entropy, accuracy and top-3 accuracy."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3_accuracy")],
    )
    return model


_SEEDED_BUILD = threading.Lock()


def seeded_model(config: TrainingConfig, num_classes: int) -> keras.Model:
    """Return the compiled model of ``config``, its weights and layer seeds drawn from ``config.seed``.

    Keras draws the seeds of unseeded initialisers and dropout from Python's process-wide ``random``,
    so architectures built at the same time in threads (the default task runner) would interleave
    their draws and none would be reproducible. Seeding and building hold one lock; training then
    uses each layer's own seed generator.
    """
    with _SEEDED_BUILD:
        keras.utils.set_random_seed(config.seed)
        with distribution_strategy(config.distribute).scope():
            return compile_model(
                build_model(config.architecture, num_classes, config.model_params),
                config.learning_rate,
                config.clipnorm,
            )


PARTIAL_CHECKPOINT = "best.partial.keras"


class _PublishCheckpoint(keras.callbacks.Callback):
    """Renames the checkpoint that ``ModelCheckpoint`` (listed before it) just wrote whole to ``best.keras``."""

    async_safe = True

    def __init__(self, out_dir: Path):
        super().__init__()
        self.out_dir = Path(out_dir)

    def on_epoch_end(self, epoch, logs=None):
        written = self.out_dir / PARTIAL_CHECKPOINT
        if written.exists():
            written.replace(self.out_dir / "best.keras")


def train_model(
    config: TrainingConfig,
    features_dir: Path,
    out_dir: Path,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainedModel:
    """Train one architecture on a features folder; save the best model as ``out_dir/model.keras``.

    ``callbacks`` run before the standard ones (early stopping, LR reduction, checkpoints, backup).
    A callback whose batch hooks do real work should leave ``async_safe`` unset; one whose batch
    hooks are cheap and order-free may set it, so that training need not wait for them.

    ``out_dir/backup`` holds Keras's ``BackupAndRestore`` state: a run killed mid-way and started again
    with the same ``out_dir`` continues from its last completed epoch.
    """
    spec = read_spec(features_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = seeded_model(config, len(spec.classes))
    train = make_dataset(
        features_dir, "train", config.batch_size, shuffle=True, seed=config.seed, augmentation=config.augmentation
    )
    valid = make_dataset(features_dir, "valid", config.batch_size)
    model_path = out_dir / "model.keras"
    backup = keras.callbacks.BackupAndRestore(str(out_dir / "backup"))
    # written under a name of its own, then renamed: a full disk never leaves a truncated best.keras
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(out_dir / PARTIAL_CHECKPOINT), monitor="val_loss", save_best_only=True
    )
    for callback in (backup, checkpoint):
        # Their batch hooks act only with an integer save_freq (not used here). Declaring them safe
        # lets Keras run batch hooks off the training loop instead of syncing every batch's metrics
        # to Python, which cost ~8% of fit time on CPU.
        callback.async_safe = True
    standard = [
        backup,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, config.early_stopping_patience - 1)
        ),
        checkpoint,
        _PublishCheckpoint(out_dir),
    ]
    started = time.perf_counter()
    try:
        history = model.fit(
            train,
            validation_data=valid,
            epochs=config.epochs,
            callbacks=[*(callbacks or []), *standard],  # loggers first: a crash may repeat a step, never lose one
            shuffle=False,  # tf.data shuffles
            verbose=0,
        )
        seconds = time.perf_counter() - started
        partial = out_dir / "model.partial.keras"
        model.save(partial)
        partial.replace(model_path)  # whole or not there: resuming trusts a model.keras it finds
    finally:
        for leftover in out_dir.glob("*.partial.keras"):
            leftover.unlink()
    return TrainedModel(
        architecture=config.architecture,
        model_path=str(model_path),
        epochs_run=history.epoch[-1] + 1 if history.epoch else 0,  # counts epochs done before a resume
        train_seconds=seconds,
        num_params=int(model.count_params()),
        history={k: [float(v) for v in values] for k, values in history.history.items()},
    )
