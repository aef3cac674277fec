"""Training one architecture with Keras: compile, callbacks (early stopping, LR schedule, checkpoints,
resume after a kill) and fit on the tf.data pipeline."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from pathlib import Path
from typing import Any

import keras
from keras import ops

from pipeline.features import Augmentation, InputOptions, make_dataset, read_spec
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
    augment_reverse_strokes: float = 0.0
    augment_point_dropout: float = 0.0
    augment_shuffle_strokes: float = 0.0
    weight_decay: float = 0.0  # decoupled (AdamW) when above 0
    label_smoothing: float = 0.0
    ema_momentum: float = 0.0  # above 0: evaluate, checkpoint and save the weights' moving average
    lr_schedule: str = "plateau"  # plateau: halve on a val_loss plateau | cosine: warm-up, then cosine decay
    lr_patience: int = 2  # plateau: epochs without a better val_loss before the rate halves
    warmup_epochs: int = 0  # cosine only: linear warm-up from 0 over this many epochs
    steps_per_execution: int = 1  # training steps per call into TensorFlow (same updates, less Python)
    steps_per_epoch: int | None = None  # batches per epoch; None: one pass over the training split
    validation_sample: int | None = None  # validation sketches scored each epoch; None: the whole split
    model_params: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def augmentation(self) -> Augmentation | None:
        """Return the training-time augmentation, or None when every kind is off."""
        augmentation = Augmentation(
            self.augment_scale,
            self.augment_rotation,
            self.augment_jitter,
            self.augment_stroke_dropout,
            self.augment_reverse_strokes,
            self.augment_point_dropout,
            self.augment_shuffle_strokes,
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


@keras.saving.register_keras_serializable(package="sketchpipe")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Cross-entropy of integer labels against label-smoothed targets (Keras's sparse loss has no smoothing)."""

    def __init__(self, label_smoothing: float = 0.0, name: str = "sparse_smoothed_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        targets = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
        return keras.losses.categorical_crossentropy(targets, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def learning_rate_schedule(config: TrainingConfig, steps_per_epoch: int | None):
    """Return the learning rate: a number (``plateau``, which a callback lowers) or, for ``cosine``, a
    linear warm-up from 0 over ``warmup_epochs`` followed by a cosine decay to 0 at the last epoch."""
    if config.lr_schedule != "cosine":
        return config.learning_rate
    steps = max(1, steps_per_epoch or 1)
    warmup = min(config.warmup_epochs, config.epochs - 1) * steps
    decay = max(1, config.epochs * steps - warmup)
    if not warmup:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay)
    return keras.optimizers.schedules.CosineDecay(0.0, decay, warmup_target=config.learning_rate, warmup_steps=warmup)


def compile_model(
    model: keras.Model,
    learning_rate,
    clipnorm: float,
    weight_decay: float = 0.0,
    label_smoothing: float = 0.0,
    steps_per_execution: int = 1,
    ema_momentum: float = 0.0,
) -> keras.Model:
    """Compile with Adam, or AdamW with ``weight_decay`` (both clipping gradients by norm), cross-entropy
    (label-smoothed when asked, with the plain cross-entropy as a metric beside it), accuracy and top-3
    accuracy. ``learning_rate`` may be a schedule; ``steps_per_execution`` is Keras's. ``ema_momentum``
    above 0 has the optimizer keep a moving average of the weights (Keras's ``use_ema``); training
    swaps it in with ``SwapEMAWeights``."""
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    if weight_decay:
        optimizer = keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=weight_decay, clipnorm=clipnorm, **ema
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate, clipnorm=clipnorm, **ema)
    model.compile(
        optimizer=optimizer,
        loss=SparseSmoothedCrossentropy(label_smoothing) if label_smoothing else "sparse_categorical_crossentropy",
        metrics=[
            "accuracy",
            keras.metrics.SparseTopKCategoricalAccuracy(k=3, name="top3_accuracy"),
            # the loss is smoothed: this is the plain cross-entropy, comparable with unsmoothed runs
            *([keras.metrics.SparseCategoricalCrossentropy(name="cross_entropy")] if label_smoothing else []),
        ],
        steps_per_execution=steps_per_execution,
    )
    return model


_SEEDED_BUILD = threading.Lock()


@contextlib.contextmanager
def _layer_seeds_from(seed: int):
    """Keras draws each unseeded layer's seed from its module's ``random``: point it at a private generator.

    Any other thread of the process (Prefect's and MLflow's workers, a user's code) that draws from the
    shared ``random`` during a build would otherwise shift these draws. ``random.Random(seed)`` gives
    the same sequence as ``random.seed(seed)``, so a seed builds the same weights as before.
    """
    try:
        from keras.src.random import seed_generator  # where ``make_default_seed`` looks its generator up
    except ImportError:
        seed_generator = None
    shared = getattr(seed_generator, "python_random", None)
    if shared is None:  # a Keras that draws them elsewhere: the lock alone (the threads test says so)
        yield
        return
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = shared


def seeded_model(config: TrainingConfig, num_classes: int, steps_per_epoch: int | None = None) -> keras.Model:
    """Return the compiled model of ``config``, its weights and layer seeds drawn from ``config.seed``.

    Keras draws the seeds of unseeded initialisers and dropout from Python's process-wide ``random``.
    Architectures built at the same time in threads (the default task runner) would interleave their
    draws, and any other thread's draw would shift them: the build holds one lock and draws from a
    generator of its own (``_layer_seeds_from``). Training then uses each layer's own seed generator.
    ``steps_per_epoch`` sizes a cosine schedule.
    """
    with _SEEDED_BUILD, _layer_seeds_from(config.seed):
        keras.utils.set_random_seed(config.seed)
        with distribution_strategy(config.distribute).scope():
            return compile_model(
                build_model(config.architecture, num_classes, config.model_params),
                learning_rate_schedule(config, steps_per_epoch),
                config.clipnorm,
                config.weight_decay,
                config.label_smoothing,
                config.steps_per_execution,
                config.ema_momentum,
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


def training_set(config: TrainingConfig, features_dir: Path, options: InputOptions | None = None):
    """Return the training split as training reads it: shuffled each pass, augmented as configured.

    With ``steps_per_epoch``, an epoch is that many batches of an endless run of passes over the split (each
    pass a new shuffle of all of it): validation, checkpoints and early stopping come every so many batches.
    """
    return make_dataset(
        features_dir,
        "train",
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        augmentation=config.augmentation,
        repeat=config.steps_per_epoch is not None,
        options=options or InputOptions(),
    )


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
    train = training_set(config, features_dir)
    model = seeded_model(config, len(spec.classes), config.steps_per_epoch or int(train.cardinality()))
    valid = make_dataset(features_dir, "valid", config.batch_size, seed=config.seed, sample=config.validation_sample)
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
    # With a moving average of the weights, it is what validation scores and what early stopping,
    # the checkpoints and the saved model keep (swapped in after the backup has the raw weights)
    averaging = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema_momentum else []
    standard = [
        backup,
        *averaging,
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.early_stopping_patience, restore_best_weights=True
        ),
        checkpoint,
        _PublishCheckpoint(out_dir),
    ]
    if config.lr_schedule != "cosine":  # a schedule sets the rate itself
        standard.insert(
            2 + len(averaging),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=config.lr_patience),
        )
    started = time.perf_counter()
    try:
        history = model.fit(
            train,
            validation_data=valid,
            epochs=config.epochs,
            steps_per_epoch=config.steps_per_epoch,
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
