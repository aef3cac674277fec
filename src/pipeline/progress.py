"""Terminal progress bars (tqdm) for ingest and training, and lines between them (a finished trial).

``progress`` settings: ``on``, ``off``, or ``auto`` (on when standard error is a terminal, so logs of
scheduled runs and CI stay free of bar redraws). Architectures training at the same time each get
their own line.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
MODES = ("auto", "on", "off")

_lines = threading.Lock()
_taken: set[int] = set()


def enabled(mode: str, stream: IO[str] | None = None) -> bool:
    """Return whether bars are shown for a ``progress`` setting."""
    if mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; choose from {', '.join(MODES)}")
    if mode == "auto":
        stream = stream or sys.stderr
        return bool(getattr(stream, "isatty", lambda: False)())
    return mode == "on"


def counted(
    items: Iterable[T],
    description: str,
    unit: str,
    show: bool,
    total: int | None = None,
    weight: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, counting them (with the rate) on a bar when ``show``; an item counts
    ``weight(item)`` units (one by default)."""
    if not show:
        yield from items
        return
    with _line() as position, tqdm(total=total, desc=description, unit=unit, position=position, leave=True) as bar:
        for item in items:
            yield item
            bar.update(1 if weight is None else weight(item))


def note(message: str, show: bool) -> None:
    """Write one line to standard error when ``show``, above any live bars (which stay where they are)."""
    if show:
        tqdm.write(message, file=sys.stderr)


def training_progress(name: str):
    """Return a Keras callback with one bar per training job: batches of all epochs, the epoch, and the
    last epoch's metrics."""
    return _training_progress_class()(name)


@functools.cache
def _training_progress_class() -> type:
    import keras  # here, not at import: ingest and validation show bars too and need no TensorFlow

    class TrainingProgress(keras.callbacks.Callback):
        """One bar per training job: batches of all epochs, the epoch, and the last epoch's metrics."""

        async_safe = True  # the batch hook only advances a counter: Keras may run it off the training loop

        def __init__(self, name: str):
            super().__init__()
            self.name = name
            self._bar = None
            self._position = None
            self._epoch_start = 0

        def on_train_begin(self, logs=None):
            epochs, steps = self.params.get("epochs") or 0, self.params.get("steps") or 0
            self._position = _acquire()
            self._bar = tqdm(total=epochs * steps or None, desc=self.name, unit="batch", position=self._position)

        def on_epoch_begin(self, epoch, logs=None):
            epochs, steps = self.params.get("epochs") or 0, self.params.get("steps") or 0
            # a resumed run starts past its completed epochs
            self._epoch_start = self._bar.n = epoch * steps if steps else self._bar.n
            self._bar.set_description(f"{self.name} epoch {epoch + 1}/{epochs}")

        def on_train_batch_end(self, batch, logs=None):
            # with steps_per_execution > 1 this runs once per call, ``batch`` being the call's last step
            # (as if every call were whole: Keras counts past the epoch's end on its last one)
            steps = self.params.get("steps") or 0
            done = min(batch + 1, steps) if steps else batch + 1
            self._bar.update(self._epoch_start + done - self._bar.n)

        def on_epoch_end(self, epoch, logs=None):
            shown = ("loss", "accuracy", "val_loss", "val_accuracy")
            self._bar.set_postfix({k: f"{logs[k]:.3f}" for k in shown if logs and k in logs}, refresh=True)

        def on_train_end(self, logs=None):
            if self._bar is not None:
                self._bar.close()
                _release(self._position)

    return TrainingProgress


def _acquire() -> int:
    """Return the lowest terminal line no other live bar holds."""
    with _lines:
        position = next(i for i in itertools.count() if i not in _taken)
        _taken.add(position)
        return position


def _release(position: int | None) -> None:
    with _lines:
        _taken.discard(position)


@contextlib.contextmanager
def _line() -> Iterator[int]:
    """Hold a terminal line for the duration of a ``with`` block."""
    position = _acquire()
    try:
        yield position
    finally:
        _release(position)
