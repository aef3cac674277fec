"""The registry of sequence-to-vector model builders: name -> function returning an uncompiled Keras model.

Every model takes ``(batch, time, 3)`` float32 strokes, where all-zero rows are padding, and returns a
softmax over the classes. The padding mask is derived from the input itself, so a logged model needs
no side input, and every layer that could see padding either takes the mask (recurrent layers,
attention) or has its padded outputs zeroed again (convolutions), with masked pooling at the end:
padding never changes a prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import layers, ops

ModelBuilder = Callable[..., keras.Model]


def _inputs_and_mask():
    inputs = keras.Input(shape=(None, 3), dtype="float32", name="strokes")
    mask = ops.any(ops.not_equal(inputs, 0.0), axis=-1)
    return inputs, mask


def _zero_padding(x, mask):
    """Return ``x`` with the padded time steps set to zero (so the next convolution cannot see them)."""
    return x * ops.expand_dims(ops.cast(mask, x.dtype), -1)


def _masked_mean(x, mask):
    """Return the mean of ``x`` over the valid time steps."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


def _classifier(inputs, x, num_classes: int, dropout: float, name: str) -> keras.Model:
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def _recurrent_stack(x, mask, make_layer: Callable[[bool], layers.Layer], num_layers: int):
    """Apply ``num_layers`` recurrent layers; all but the last return sequences."""
    for i in range(num_layers):
        x = make_layer(i < num_layers - 1)(x, mask=mask)
    return x


def build_simple_rnn(num_classes: int, units: int = 64, num_layers: int = 2, dropout: float = 0.0) -> keras.Model:
    """Return stacked SimpleRNN layers over the masked strokes."""
    inputs, mask = _inputs_and_mask()
    x = _recurrent_stack(inputs, mask, lambda seq: layers.SimpleRNN(units, return_sequences=seq), num_layers)
    return _classifier(inputs, x, num_classes, dropout, "simple_rnn")


def build_lstm(num_classes: int, units: int = 64, num_layers: int = 2, dropout: float = 0.0) -> keras.Model:
    """Return stacked LSTM layers over the masked strokes."""
    inputs, mask = _inputs_and_mask()
    x = _recurrent_stack(inputs, mask, lambda seq: layers.LSTM(units, return_sequences=seq), num_layers)
    return _classifier(inputs, x, num_classes, dropout, "lstm")


def build_gru(num_classes: int, units: int = 64, num_layers: int = 2, dropout: float = 0.0) -> keras.Model:
    """Return stacked GRU layers over the masked strokes."""
    inputs, mask = _inputs_and_mask()
    x = _recurrent_stack(inputs, mask, lambda seq: layers.GRU(units, return_sequences=seq), num_layers)
    return _classifier(inputs, x, num_classes, dropout, "gru")


def build_bilstm(num_classes: int, units: int = 48, num_layers: int = 2, dropout: float = 0.0) -> keras.Model:
    """Return stacked bidirectional LSTMs, as in TensorFlow's quickdraw tutorial."""
    inputs, mask = _inputs_and_mask()
    x = _recurrent_stack(
        inputs, mask, lambda seq: layers.Bidirectional(layers.LSTM(units, return_sequences=seq)), num_layers
    )
    return _classifier(inputs, x, num_classes, dropout, "bilstm")


def build_conv_lstm(
    num_classes: int,
    filters: tuple[int, ...] = (48, 64),
    kernel_size: int = 5,
    units: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
) -> keras.Model:
    """Return a Conv1D + BatchNorm front end followed by LSTMs (the classic quickdraw solution)."""
    inputs, mask = _inputs_and_mask()
    x = inputs
    for n in filters:
        x = layers.Conv1D(n, kernel_size, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = _zero_padding(layers.Activation("relu")(x), mask)
    x = _recurrent_stack(x, mask, lambda seq: layers.LSTM(units, return_sequences=seq), num_layers)
    return _classifier(inputs, x, num_classes, dropout, "conv_lstm")


def build_wavenet(
    num_classes: int,
    filters: int = 48,
    kernel_size: int = 2,
    dilation_rates: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8),
    dropout: float = 0.0,
) -> keras.Model:
    """Return stacked dilated causal Conv1D layers with residual connections and masked mean pooling."""
    inputs, mask = _inputs_and_mask()
    x = _zero_padding(layers.Conv1D(filters, 1)(inputs), mask)
    for rate in dilation_rates:
        y = layers.Conv1D(filters, kernel_size, padding="causal", dilation_rate=rate, activation="relu")(x)
        x = _zero_padding(layers.Add()([x, y]), mask)
    return _classifier(inputs, _masked_mean(x, mask), num_classes, dropout, "wavenet")


def _sinusoidal_positions(inputs, dim: int):
    """Return fixed sine/cosine position encodings, ``(batch, time, dim)``, for any sequence length."""
    positions = ops.cumsum(ops.ones_like(inputs[..., :1]), axis=1) - 1.0
    rates = np.power(10_000.0, -np.arange(0, dim, 2) / dim).astype("float32")
    angles = positions * rates
    return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)


def build_transformer(
    num_classes: int, dim: int = 64, heads: int = 4, num_layers: int = 2, ff_dim: int = 128, dropout: float = 0.0
) -> keras.Model:
    """Return a small Transformer encoder (sinusoidal positions, padding-masked attention, masked pooling)."""
    inputs, mask = _inputs_and_mask()
    x = layers.Dense(dim)(inputs) + _sinusoidal_positions(inputs, dim)
    attention_mask = ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(mask, 2))
    for _ in range(num_layers):
        attended = layers.MultiHeadAttention(heads, dim // heads)(x, x, attention_mask=attention_mask)
        x = layers.LayerNormalization()(x + attended)
        hidden = layers.Dense(ff_dim, activation="relu")(x)
        x = layers.LayerNormalization()(x + layers.Dense(dim)(hidden))
    return _classifier(inputs, _masked_mean(x, mask), num_classes, dropout, "transformer")


MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "simple_rnn": build_simple_rnn,
    "lstm": build_lstm,
    "gru": build_gru,
    "conv_lstm": build_conv_lstm,
    "bilstm": build_bilstm,
    "wavenet": build_wavenet,
    "transformer": build_transformer,
}


def build_model(name: str, num_classes: int, hyperparameters: dict[str, Any] | None = None) -> keras.Model:
    """Return the model ``name`` from the registry, built with the given hyperparameters."""
    if name not in MODEL_BUILDERS:
        raise KeyError(f"unknown architecture {name!r}; choose from {', '.join(MODEL_BUILDERS)}")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in (hyperparameters or {}).items()}
    return MODEL_BUILDERS[name](num_classes, **params)
