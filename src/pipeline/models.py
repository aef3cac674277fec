"""The registry of sequence-to-vector model builders: name -> function returning an uncompiled Keras model.

Every model takes ``(batch, time, 3)`` float32 strokes, where all-zero rows are padding, and returns a
softmax over the classes. The padding mask is derived from the input itself, so a logged model needs
no side input, and every layer that could see padding either takes the mask (recurrent layers,
attention) or has its padded outputs zeroed again (convolutions), with masked pooling at the end:
padding never changes a prediction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import layers, ops

ModelBuilder = Callable[..., keras.Model]


# absolute positions are running sums of normalised offsets (tens of units across a sketch); this brings
# them to about the offsets' own range, which suits saturating recurrent units
POSITION_SCALE = 0.1


def _inputs_and_mask(positions: bool = False):
    """Return the model input, the features the network reads and the padding mask.

    With ``positions``, each step also carries the pen's absolute position (the running sum of the
    offsets from the first point, scaled by :data:`POSITION_SCALE`) and the index of its stroke (tenths):
    derived inside the model, so a logged model still takes plain stroke-3 and padding stays zero.
    """
    inputs = keras.Input(shape=(None, 3), dtype="float32", name="strokes")
    mask = ops.any(ops.not_equal(inputs, 0.0), axis=-1)
    if not positions:
        return inputs, inputs, mask
    absolute = ops.cumsum(inputs[..., :2], axis=1) * POSITION_SCALE
    pen = inputs[..., 2:]
    stroke = (ops.cumsum(pen, axis=1) - pen) * 0.1  # strokes finished before this step
    return inputs, _zero_padding(ops.concatenate([inputs, absolute, stroke], axis=-1), mask), mask


def _zero_padding(x, mask):
    """Return ``x`` with the padded time steps set to zero (so the next convolution cannot see them)."""
    return x * ops.expand_dims(ops.cast(mask, x.dtype), -1)


def _masked_mean(x, mask):
    """Return the mean of ``x`` over the valid time steps."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.sum(x * weights, axis=1) / ops.maximum(ops.sum(weights, axis=1), 1.0)


def _stem(x, mask, filters: tuple[int, ...], kernel_size: int):
    """Return ``x`` through a convolutional stem: a ``Conv1D`` + ReLU per entry of ``filters`` (none: ``x``
    as it is), the padded steps zeroed after each. Local shape features for the layers after it, as in
    TensorFlow's quickdraw tutorial model."""
    for n in filters:
        x = _zero_padding(layers.Conv1D(n, kernel_size, padding="same", activation="relu")(x), mask)
    return x


def _masked_max(x, mask):
    """Return the maximum of ``x`` over the valid time steps (every sketch has at least one)."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    return ops.max(x * weights + (weights - 1.0) * 1e9, axis=1)


POOLINGS = ("last", "mean", "mean_max")


def _pool(x, mask, pooling: str):
    """Return one vector per sketch from per-step outputs: their mean over the real steps, or that mean
    and their maximum side by side (``mean_max``)."""
    if pooling == "mean":
        return _masked_mean(x, mask)
    if pooling == "mean_max":
        return ops.concatenate([_masked_mean(x, mask), _masked_max(x, mask)], axis=-1)
    raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")


# points drawn along each pen-down segment when a sketch is rendered (its end point included): enough
# that the segments of a 28-pixel picture of a simplified sketch show as lines, not dots
RASTER_SAMPLES_PER_SEGMENT = 8


def _rasterise(inputs, mask, size: int):
    """Return each sketch drawn as a ``(batch, size, size, 1)`` picture of its ink, in the model.

    The pen's absolute positions (running sums of the offsets) are centred on the sketch's bounding
    box and scaled so that its longer side spans the picture (the aspect is kept). Every pen-down
    segment is drawn as :data:`RASTER_SAMPLES_PER_SEGMENT` points along it, and each point is splatted
    onto its four nearest pixels (bilinear weights; two outer products summed by one ``einsum``), so a
    picture costs one batched matrix product, with no Python per sketch. Padded steps draw nothing and
    do not move the bounding box, so padding never changes the picture.
    """
    valid = ops.cast(mask, "float32")
    points = ops.cumsum(inputs[..., :2], axis=1)
    outside = ops.expand_dims(1e9 * (1.0 - valid), -1)  # padded steps never win the min or the max
    low = ops.min(points + outside, axis=1, keepdims=True)
    high = ops.max(points - outside, axis=1, keepdims=True)
    extent = ops.maximum(ops.max(high - low, axis=-1, keepdims=True), 1e-3)
    pixels = ((points - (high + low) / 2.0) / extent + 0.5) * (size - 1)
    before = ops.concatenate([pixels[:, :1], pixels[:, :-1]], axis=1)
    lifted_before = ops.concatenate([ops.ones_like(inputs[:, :1, 2]), inputs[:, :-1, 2]], axis=1)
    ink = valid * (1.0 - lifted_before)  # the segment from the previous point to this one is drawn
    steps = RASTER_SAMPLES_PER_SEGMENT
    samples = ops.concatenate([pixels] + [before + (pixels - before) * (k / steps) for k in range(1, steps)], axis=1)
    weights = ops.concatenate([valid] + [ink] * (steps - 1), axis=1)
    grid = np.arange(size, dtype="float32")
    across = ops.relu(1.0 - ops.abs(samples[..., :1] - grid)) * ops.expand_dims(weights, -1)
    down = ops.relu(1.0 - ops.abs(samples[..., 1:] - grid))
    return ops.expand_dims(ops.minimum(ops.einsum("bnx,bny->bxy", across, down), 1.0), -1)


def _raster_features(inputs, mask, size: int, filters: int):
    """Return one vector per sketch from its rendered picture (:func:`_rasterise`): three 3x3
    convolutions (``filters``, twice and four times as many; max-pooled by 2 between them), averaged
    over the picture. Where the sequence layers read the order of the strokes, these read the shape
    they leave on the page; with few drawings per class the two together learn far more than either."""
    x = _rasterise(inputs, mask, size)
    for i, n in enumerate((filters, 2 * filters, 4 * filters)):
        if i:
            x = layers.MaxPooling2D(2)(x)
        x = layers.Conv2D(n, 3, padding="same", activation="relu")(x)
    return layers.GlobalAveragePooling2D()(x)


def _classifier(
    inputs, x, num_classes: int, dropout: float, name: str, mask=None, raster_size: int = 0, raster_filters: int = 16
) -> keras.Model:
    """Return the model: the sketch's vector ``x`` (beside its picture's features when ``raster_size``
    is not 0: see :func:`_raster_features`) through optional dropout to a softmax over the classes."""
    if raster_size:
        x = layers.Concatenate()([x, _raster_features(inputs, mask, raster_size, raster_filters)])
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def _directions(layer: layers.Layer, bidirectional: bool) -> layers.Layer:
    """Return a recurrent layer, or the layer run both ways (``Bidirectional``, outputs concatenated)."""
    return layers.Bidirectional(layer) if bidirectional else layer


def _recurrent_stack(x, mask, make_layer: Callable[[bool], layers.Layer], num_layers: int, pooling: str = "last"):
    """Apply ``num_layers`` recurrent layers and return one vector per sketch: the last layer's final
    state (``pooling="last"``), or its outputs pooled over the real steps (``"mean"``, ``"mean_max"``,
    which give every step a short gradient path)."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; choose from {', '.join(POOLINGS)}")
    for i in range(num_layers):
        x = make_layer(i < num_layers - 1 or pooling != "last")(x, mask=mask)
    return x if pooling == "last" else _pool(x, mask, pooling)


def _recurrent_model(
    name: str,
    make_layer: Callable[..., layers.Layer],
    num_classes: int,
    units: int,
    num_layers: int,
    dropout: float,
    pooling: str,
    positions: bool,
    stem_filters: tuple[int, ...],
    stem_kernel: int,
    bidirectional: bool,
    raster_size: int,
    raster_filters: int,
) -> keras.Model:
    """Return stacked recurrent layers (``make_layer(units, return_sequences=...)``) over the masked
    strokes, after an optional convolutional stem, one way or both."""
    inputs, x, mask = _inputs_and_mask(positions)
    x = _stem(x, mask, stem_filters, stem_kernel)
    x = _recurrent_stack(
        x, mask, lambda seq: _directions(make_layer(units, return_sequences=seq), bidirectional), num_layers, pooling
    )
    return _classifier(inputs, x, num_classes, dropout, name, mask, raster_size, raster_filters)


RNN_ACTIVATIONS = ("tanh", "relu")


def build_simple_rnn(
    num_classes: int,
    units: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
    pooling: str = "last",
    positions: bool = False,
    stem_filters: tuple[int, ...] = (),
    stem_kernel: int = 5,
    bidirectional: bool = False,
    activation: str = "tanh",
    raster_size: int = 0,
    raster_filters: int = 16,
) -> keras.Model:
    """Return stacked SimpleRNN layers over the masked strokes.

    ``activation="relu"`` starts the recurrent weights at the identity (the IRNN of Le, Jaitly and
    Hinton, 2015): a step then passes its state on unchanged until training says otherwise, so the
    gradient reaches the early points of a long sketch, where ``tanh`` units forget them.
    """
    if activation not in RNN_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(RNN_ACTIVATIONS)}")
    arguments = {k: v for k, v in locals().items() if k != "activation"}  # the arguments above
    if activation == "relu":
        identity = keras.initializers.Identity()
        cell = functools.partial(layers.SimpleRNN, activation="relu", recurrent_initializer=identity)
    else:
        cell = layers.SimpleRNN
    return _recurrent_model("simple_rnn", cell, **arguments)


def build_lstm(
    num_classes: int,
    units: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
    pooling: str = "last",
    positions: bool = False,
    stem_filters: tuple[int, ...] = (),
    stem_kernel: int = 5,
    bidirectional: bool = False,
    raster_size: int = 0,
    raster_filters: int = 16,
) -> keras.Model:
    """Return stacked LSTM layers over the masked strokes."""
    return _recurrent_model("lstm", layers.LSTM, **locals())  # the arguments above


def build_gru(
    num_classes: int,
    units: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
    pooling: str = "last",
    positions: bool = False,
    stem_filters: tuple[int, ...] = (),
    stem_kernel: int = 5,
    bidirectional: bool = False,
    raster_size: int = 0,
    raster_filters: int = 16,
) -> keras.Model:
    """Return stacked GRU layers over the masked strokes."""
    return _recurrent_model("gru", layers.GRU, **locals())  # the arguments above


def build_bilstm(
    num_classes: int,
    units: int = 48,
    num_layers: int = 2,
    dropout: float = 0.0,
    pooling: str = "last",
    positions: bool = False,
    stem_filters: tuple[int, ...] = (),
    stem_kernel: int = 5,
    raster_size: int = 0,
    raster_filters: int = 16,
) -> keras.Model:
    """Return stacked bidirectional LSTMs, as in TensorFlow's quickdraw tutorial."""
    inputs, x, mask = _inputs_and_mask(positions)
    x = _stem(x, mask, stem_filters, stem_kernel)
    x = _recurrent_stack(
        x, mask, lambda seq: layers.Bidirectional(layers.LSTM(units, return_sequences=seq)), num_layers, pooling
    )
    return _classifier(inputs, x, num_classes, dropout, "bilstm", mask, raster_size, raster_filters)


def build_conv_lstm(
    num_classes: int,
    filters: tuple[int, ...] = (48, 64),
    kernel_size: int = 5,
    units: int = 64,
    num_layers: int = 2,
    dropout: float = 0.0,
    pooling: str = "last",
    positions: bool = False,
    bidirectional: bool = False,
    raster_size: int = 0,
    raster_filters: int = 16,
) -> keras.Model:
    """Return a Conv1D + BatchNorm front end followed by LSTMs (the classic quickdraw solution)."""
    inputs, x, mask = _inputs_and_mask(positions)
    for n in filters:
        x = layers.Conv1D(n, kernel_size, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = _zero_padding(layers.Activation("relu")(x), mask)
    x = _recurrent_stack(
        x, mask, lambda seq: _directions(layers.LSTM(units, return_sequences=seq), bidirectional), num_layers, pooling
    )
    return _classifier(inputs, x, num_classes, dropout, "conv_lstm", mask, raster_size, raster_filters)


def _halvings(halve_after: int | Sequence[int]) -> tuple[int, ...]:
    """Return wavenet's ``halve_after`` as the sorted numbers of blocks after which it halves its steps:
    a single number ``N`` (the setting's older form) is ``(N,)`` and 0 is none."""
    if isinstance(halve_after, int):
        return (halve_after,) if halve_after else ()
    if len(set(halve_after)) != len(halve_after):
        raise ValueError(f"halve_after {list(halve_after)}: a block is named twice")
    return tuple(sorted(halve_after))


def _halve(x, mask):
    """Return ``x`` at half its length, and its mask: each two steps (0-1, 2-3, ...) become their mean
    over the real steps among them (a step is real when either was). The pairs start at the first
    step whatever the padding, and padded steps weigh nothing, so padding still changes nothing."""
    weights = ops.expand_dims(ops.cast(mask, x.dtype), -1)
    pairs = dict(pool_size=2, strides=2, padding="same")  # an odd last step is a pair of its own
    real = layers.AveragePooling1D(**pairs)(x * weights)
    share = layers.AveragePooling1D(**pairs)(weights)  # the real steps' share of each pair: 0, 0.5 or 1
    return real / ops.maximum(share, 1e-6), ops.squeeze(share, -1) > 0.0


def _dilated_stack(
    x,
    mask,
    filters: int,
    kernel_size: int,
    dilation_rates,
    gated: bool = False,
    norm: bool = False,
    halve_after: Sequence[int] = (),
):
    """Return ``x`` through WaveNet's residual blocks, and the mask of its steps: a 1x1 projection to
    ``filters``, then per dilation rate a causal dilated ``Conv1D`` added to its input. The block's
    activation is a ReLU, or with ``gated`` WaveNet's gate (``tanh(conv) * sigmoid(conv)``) followed by
    a 1x1 convolution; ``norm`` layer-normalises each step after every block. Padded steps are zeroed
    after each block. ``halve_after`` lists the numbers of blocks after which the sequence is halved
    (:func:`_halve`): the blocks after a halving run on half as many steps, their dilation rates counted
    in those steps, so ``[1, 1, 2]`` halved after one block sees as far back as ``[1, 2, 4]``, and
    ``[1, 1, 1]`` halved after one and after two as far back as ``[1, 2, 4]`` too."""
    x = _zero_padding(layers.Conv1D(filters, 1)(x), mask)
    for block, rate in enumerate(dilation_rates):
        if block in halve_after:
            x, mask = _halve(x, mask)
        conv = dict(padding="causal", dilation_rate=rate)
        if gated:
            y = layers.Multiply()(
                [
                    layers.Conv1D(filters, kernel_size, activation="tanh", **conv)(x),
                    layers.Conv1D(filters, kernel_size, activation="sigmoid", **conv)(x),
                ]
            )
            y = layers.Dense(filters)(y)  # the 1x1 convolution (a Dense per step: faster on CPU)
        else:
            y = layers.Conv1D(filters, kernel_size, activation="relu", **conv)(x)
        x = layers.Add()([x, y])
        if norm:
            x = layers.LayerNormalization()(x)
        x = _zero_padding(x, mask)
    return x, mask


def build_wavenet(
    num_classes: int,
    filters: int = 48,
    kernel_size: int = 2,
    dilation_rates: tuple[int, ...] = (1, 2, 4, 8, 1, 2, 4, 8),
    dropout: float = 0.0,
    positions: bool = False,
    pooling: str = "mean",
    gated: bool = False,
    norm: bool = False,
    raster_size: int = 0,
    raster_filters: int = 16,
    halve_after: int | Sequence[int] = (),
) -> keras.Model:
    """Return stacked dilated causal Conv1D layers with residual connections and masked pooling (``mean``
    or ``mean_max``); ``gated``, ``norm`` and ``halve_after`` as in :func:`_dilated_stack` (a single
    number ``N`` is ``[N]``, and 0 is ``[]``: never)."""
    halvings = _halvings(halve_after)
    if halvings and not all(0 < after < len(dilation_rates) for after in halvings):
        raise ValueError(
            f"halve_after {list(halvings)}: each must be above 0 and below the {len(dilation_rates)} blocks"
        )
    inputs, x, mask = _inputs_and_mask(positions)
    x, steps = _dilated_stack(x, mask, filters, kernel_size, dilation_rates, gated, norm, halvings)
    pooled = _pool(x, steps, pooling)
    return _classifier(inputs, pooled, num_classes, dropout, "wavenet", mask, raster_size, raster_filters)


def _sinusoidal_positions(inputs, dim: int):
    """Return fixed sine/cosine position encodings, ``(batch, time, dim)``, for any sequence length."""
    positions = ops.cumsum(ops.ones_like(inputs[..., :1]), axis=1) - 1.0
    rates = np.power(10_000.0, -np.arange(0, dim, 2) / dim).astype("float32")
    angles = positions * rates
    return ops.concatenate([ops.sin(angles), ops.cos(angles)], axis=-1)


def build_transformer(
    num_classes: int,
    dim: int = 64,
    heads: int = 4,
    num_layers: int = 2,
    ff_dim: int = 128,
    dropout: float = 0.0,
    positions: bool = False,
    pooling: str = "mean",
    stem_filters: tuple[int, ...] = (),
    stem_kernel: int = 5,
    stem_dilations: tuple[int, ...] = (),
    norm_first: bool = False,
    raster_size: int = 0,
    raster_filters: int = 16,
) -> keras.Model:
    """Return a small Transformer encoder (sinusoidal positions, padding-masked attention, masked pooling).

    The steps enter through a dense projection to ``dim``, or with ``stem_dilations`` through WaveNet's
    residual blocks (:func:`_dilated_stack`, ``dim`` filters), which give every step its neighbourhood
    before attention. ``norm_first`` puts layer normalisation before attention and the feed-forward
    layer (GELU) instead of after them, and once more before pooling (pre-LN): it trains more steadily
    than the original post-LN layout.
    """
    inputs, x, mask = _inputs_and_mask(positions)
    x = _stem(x, mask, stem_filters, stem_kernel)
    x = _dilated_stack(x, mask, dim, 2, stem_dilations)[0] if stem_dilations else layers.Dense(dim)(x)
    x = x + _sinusoidal_positions(inputs, dim)
    attention_mask = ops.logical_and(ops.expand_dims(mask, 1), ops.expand_dims(mask, 2))
    for _ in range(num_layers):
        if norm_first:
            h = layers.LayerNormalization()(x)
            x = x + layers.MultiHeadAttention(heads, dim // heads)(h, h, attention_mask=attention_mask)
            h = layers.LayerNormalization()(x)
            x = x + layers.Dense(dim)(layers.Dense(ff_dim, activation="gelu")(h))
        else:
            attended = layers.MultiHeadAttention(heads, dim // heads)(x, x, attention_mask=attention_mask)
            x = layers.LayerNormalization()(x + attended)
            hidden = layers.Dense(ff_dim, activation="relu")(x)
            x = layers.LayerNormalization()(x + layers.Dense(dim)(hidden))
    if norm_first:
        x = layers.LayerNormalization()(x)
    pooled = _pool(x, mask, pooling)
    return _classifier(inputs, pooled, num_classes, dropout, "transformer", mask, raster_size, raster_filters)


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
