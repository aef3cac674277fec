"""Model tests: every registered architecture is sequence-to-vector and blind to padding."""

import re

import keras
import numpy as np
import pytest

from pipeline.features import pad_batch
from pipeline.models import MODEL_BUILDERS, build_model
from tests.conftest import TINY_MODELS

ARCHITECTURES = list(MODEL_BUILDERS)


def _sketches(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    sketches = []
    for length in rng.integers(2, 30, size=count):
        sketch = rng.normal(size=(length, 3)).astype(np.float32)
        sketch[:, 2] = rng.integers(0, 2, size=length)
        sketches.append(sketch)
    return sketches


def test_registry_has_the_seven_architectures():
    assert set(ARCHITECTURES) == {"simple_rnn", "lstm", "gru", "conv_lstm", "bilstm", "wavenet", "transformer"}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_padding_never_changes_a_prediction(name):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    model = build_model(name, 5, TINY_MODELS[name])
    sketches = _sketches(rng, 6)
    tight = model(pad_batch(sketches)).numpy()
    loose = model(pad_batch(sketches, length=int(rng.integers(35, 80)))).numpy()
    alone = np.concatenate([model(pad_batch([s])).numpy() for s in sketches])
    assert tight.shape == (6, 5)
    np.testing.assert_allclose(tight.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tight, loose, atol=1e-5)
    np.testing.assert_allclose(tight, alone, atol=1e-5)


RECURRENT = ["simple_rnn", "lstm", "gru", "conv_lstm", "bilstm"]


@pytest.mark.parametrize(
    ("name", "extra"),
    [(name, {"positions": True}) for name in ARCHITECTURES]
    + [(name, {"pooling": "mean", "positions": True}) for name in RECURRENT]
    + [(name, {"pooling": "mean_max"}) for name in ARCHITECTURES]
    + [(name, {"stem_filters": [8, 8], "stem_kernel": 3}) for name in [*RECURRENT[:3], "bilstm", "transformer"]]
    + [(name, {"bidirectional": True, "pooling": "mean"}) for name in ["simple_rnn", "lstm", "gru", "conv_lstm"]]
    + [("wavenet", {"gated": True}), ("wavenet", {"norm": True}), ("wavenet", {"gated": True, "norm": True})]
    + [("wavenet", {"gated": True, "positions": True, "halve_after": 1, "pooling": p}) for p in ("mean", "mean_max")]
    + [("wavenet", {"dilation_rates": [1, 1, 1], "positions": True, "halve_after": [1, 2], "pooling": "mean_max"})]
    + [("transformer", {"norm_first": True}), ("transformer", {"stem_dilations": [1, 2, 4], "norm_first": True})]
    + [("simple_rnn", {"activation": "relu", "bidirectional": True, "pooling": "mean", "positions": True})]
    + [(name, {"raster_size": 12, "raster_filters": 2}) for name in ARCHITECTURES],
)
def test_padding_never_changes_a_prediction_with_positions_pooling_or_a_stem(name, extra):
    # positions are running sums, which would carry on through the padding if it were not masked
    rng = np.random.default_rng(7)
    model = build_model(name, 4, {**TINY_MODELS[name], **extra})
    sketches = _sketches(rng, 5)
    tight = model(pad_batch(sketches)).numpy()
    loose = model(pad_batch(sketches, length=70)).numpy()
    alone = np.concatenate([model(pad_batch([s])).numpy() for s in sketches])
    np.testing.assert_allclose(tight, loose, atol=1e-5)
    np.testing.assert_allclose(tight, alone, atol=1e-5)


def test_positions_are_the_running_sum_of_the_offsets_and_the_stroke_index():
    from pipeline.models import POSITION_SCALE, _inputs_and_mask

    inputs, features, _ = _inputs_and_mask(positions=True)
    probe = keras.Model(inputs, features)
    sketch = np.array([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]], np.float32)
    out = probe(sketch[None]).numpy()[0]
    np.testing.assert_allclose(out[:3, :3], sketch[:3])
    np.testing.assert_allclose(out[:3, 3:5], np.cumsum(sketch[:3, :2], axis=0) * POSITION_SCALE, rtol=1e-6)
    np.testing.assert_allclose(out[:3, 5], [0.0, 0.0, 0.1], atol=1e-7)  # the third point is on the second stroke
    assert not out[3].any()  # padding stays zero


def _render(sketches: np.ndarray, size: int) -> np.ndarray:
    from keras import ops

    from pipeline.models import _rasterise

    inputs = keras.Input(shape=(None, 3))
    picture = _rasterise(inputs, ops.any(ops.not_equal(inputs, 0.0), axis=-1), size)
    return keras.Model(inputs, picture)(sketches).numpy()[..., 0]


def test_a_sketch_is_drawn_as_its_ink_centred_with_its_aspect_kept():
    # an L from (1,0): down to (1,4), right to (3,4), pen up; then one point alone at (12,13); then padding
    sketch = np.array([[1, 0, 0], [0, 4, 0], [2, 0, 1], [9, 9, 1], [0, 0, 0]], np.float32)
    picture = _render(sketch[None, :4], 10)[0]  # indexed [x, y]
    # the box is 11 x 13 around (6.5, 6.5); its longer side (y) spans the 9 pixel steps, and so does x's scale
    x_of = lambda x: (x - 6.5) * 9 / 13 + 4.5  # noqa: E731
    y_of = lambda y: (y - 6.5) * 9 / 13 + 4.5  # noqa: E731
    assert picture[round(x_of(1)), round(y_of(0)) : round(y_of(4)) + 1].min() > 0.5  # down
    assert picture[round(x_of(1)) : round(x_of(3)) + 1, round(y_of(4))].min() > 0.5  # right
    assert picture[round(x_of(7)), round(y_of(8.5))] == 0.0  # the pen-up move draws nothing
    # the lone point: one sample, split between its two nearest pixels across (bilinear), none beside
    x = x_of(12)  # 8.31: 0.69 on pixel 8, 0.31 on pixel 9 (a box scaled to fill x too would put it on 9)
    np.testing.assert_allclose(picture[8:10, round(y_of(13))], [9 - x, x - 8], atol=1e-5)
    assert picture[8:10, round(y_of(13)) - 1].max() == 0.0
    assert picture.max() <= 1.0 and picture.min() >= 0.0
    # padding draws nothing and moves nothing
    np.testing.assert_allclose(_render(sketch[None], 10)[0], picture, atol=1e-6)


def test_a_model_with_positions_survives_a_save_and_load(tmp_path):
    model = build_model("wavenet", 3, {**TINY_MODELS["wavenet"], "positions": True, "dropout": 0.2})
    batch = pad_batch(_sketches(np.random.default_rng(1), 3))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model(batch).numpy(), restored(batch).numpy(), atol=1e-6)


def test_relu_simple_rnn_starts_with_identity_recurrent_weights():
    model = build_model("simple_rnn", 3, {"units": 6, "num_layers": 2, "activation": "relu"})
    cells = [layer.cell for layer in model.layers if isinstance(layer, keras.layers.SimpleRNN)]
    assert len(cells) == 2
    for cell in cells:
        assert cell.activation is keras.activations.relu
        np.testing.assert_array_equal(cell.recurrent_kernel.numpy(), np.eye(6))
    default = build_model("simple_rnn", 3, {"units": 6, "num_layers": 1})
    cell = next(layer.cell for layer in default.layers if isinstance(layer, keras.layers.SimpleRNN))
    assert cell.activation is keras.activations.tanh
    assert not np.allclose(cell.recurrent_kernel.numpy(), np.eye(6))  # orthogonal, not the identity


def test_unknown_rnn_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'sigmoid'"):
        build_model("simple_rnn", 3, {"units": 4, "num_layers": 1, "activation": "sigmoid"})


def test_gated_wavenet_blocks_are_tanh_times_sigmoid_then_a_1x1_convolution():
    plain = build_model("wavenet", 3, {"filters": 8, "dilation_rates": [1, 2]})
    gated = build_model("wavenet", 3, {"filters": 8, "dilation_rates": [1, 2], "gated": True, "norm": True})

    def convolutions(model):
        conv = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D)]
        return [(layer.kernel_size[0], layer.dilation_rate[0]) for layer in conv]

    assert convolutions(plain) == [(1, 1), (2, 1), (2, 2)]
    # the input projection, then per block the tanh and sigmoid halves of the gate, then the 1x1 mix
    assert convolutions(gated) == [(1, 1), (2, 1), (2, 1), (2, 2), (2, 2)]
    activations = [layer.activation.__name__ for layer in gated.layers if isinstance(layer, keras.layers.Conv1D)]
    assert activations[1:3] == ["tanh", "sigmoid"]
    mixes = [layer for layer in gated.layers if isinstance(layer, keras.layers.Dense) and layer.name != "probabilities"]
    assert [tuple(layer.kernel.shape) for layer in mixes] == [(8, 8), (8, 8)]
    assert sum(isinstance(layer, keras.layers.LayerNormalization) for layer in gated.layers) == 2
    assert gated.count_params() > plain.count_params()


def test_halving_averages_each_pair_of_real_steps_and_keeps_a_step_when_either_is_real():
    from pipeline.models import _halve

    x = np.arange(1, 8, dtype="float32").reshape(1, 7, 1) * np.ones((1, 1, 2), "float32")  # steps 1..7
    mask = np.array([[True, True, True, True, True, False, False]])  # 5 real steps, 2 padded
    halved, steps = _halve(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(mask))
    # pairs (1, 2), (3, 4), (5, padding), (padding): the padded step weighs nothing
    np.testing.assert_allclose(keras.ops.convert_to_numpy(halved)[0, :, 0], [1.5, 3.5, 5.0, 0.0])
    assert keras.ops.convert_to_numpy(steps).tolist() == [[True, True, True, False]]


def test_a_halved_wavenet_runs_its_later_blocks_on_half_the_steps():
    model = build_model("wavenet", 3, {"filters": 8, "dilation_rates": [1, 1, 2], "gated": True, "halve_after": 1})
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.AveragePooling1D)]
    assert len(pools) == 2  # the steps and their real share
    gates = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D) and layer.kernel_size[0] == 2]
    probe = keras.Model(model.input, [gate.output for gate in gates])
    steps = probe(pad_batch(_sketches(np.random.default_rng(1), 2), 9))
    assert [tuple(s.shape[:2]) for s in steps] == [(2, 9), (2, 9), (2, 5), (2, 5), (2, 5), (2, 5)]
    with pytest.raises(ValueError, match=re.escape("halve_after [3]: each must be above 0 and below the 3 blocks")):
        build_model("wavenet", 3, {"dilation_rates": [1, 1, 2], "halve_after": 3})


def test_a_wavenet_halved_twice_runs_each_block_on_its_own_share_of_the_steps():
    # halved after the first block and after the second, in either order: 9 steps, then 5, then 3
    for halve_after in ([1, 2], [2, 1]):
        model = build_model("wavenet", 3, {"filters": 8, "dilation_rates": [1, 1, 1], "halve_after": halve_after})
        blocks = [
            layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D) and layer.kernel_size[0] == 2
        ]
        probe = keras.Model(model.input, [block.output for block in blocks])
        steps = probe(pad_batch(_sketches(np.random.default_rng(1), 2), 9))
        assert [tuple(s.shape[:2]) for s in steps] == [(2, 9), (2, 5), (2, 3)]
    with pytest.raises(ValueError, match=re.escape("halve_after [1, 1]: a block is named twice")):
        build_model("wavenet", 3, {"dilation_rates": [1, 1, 1], "halve_after": [1, 1]})
    with pytest.raises(ValueError, match=re.escape("halve_after [1, 3]: each must be above 0 and below the 3")):
        build_model("wavenet", 3, {"dilation_rates": [1, 1, 1], "halve_after": [3, 1]})


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("wavenet", {"gated": True, "norm": True, "positions": True}),
        ("wavenet", {"gated": True, "positions": True, "halve_after": 1, "raster_size": 8, "raster_filters": 2}),
        ("wavenet", {"dilation_rates": [1, 1, 1], "gated": True, "halve_after": [1, 2], "raster_size": 14}),
        ("transformer", {"stem_dilations": [1, 2], "norm_first": True, "positions": True}),
        ("simple_rnn", {"activation": "relu", "bidirectional": True, "pooling": "mean"}),
        ("wavenet", {"gated": True, "positions": True, "raster_size": 16, "raster_filters": 2}),
    ],
)
def test_the_real_data_options_survive_a_save_and_load(tmp_path, name, extra):
    model = build_model(name, 3, {**TINY_MODELS[name], **extra})
    batch = pad_batch(_sketches(np.random.default_rng(2), 3))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model(batch).numpy(), restored(batch).numpy(), atol=1e-6)


def test_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        build_model("lstm", 3, {**TINY_MODELS["lstm"], "pooling": "max"})


@pytest.mark.parametrize("name", RECURRENT)
def test_only_the_last_recurrent_layer_returns_a_vector(name):
    model = build_model(name, 3, {**TINY_MODELS[name], "num_layers": 3})
    recurrent = [
        layer.forward_layer if isinstance(layer, keras.layers.Bidirectional) else layer
        for layer in model.layers
        if isinstance(layer, keras.layers.RNN | keras.layers.Bidirectional)
    ]
    assert [layer.return_sequences for layer in recurrent] == [True, True, False]


def test_models_survive_a_save_and_load(tmp_path):
    model = build_model("transformer", 4, TINY_MODELS["transformer"])
    batch = pad_batch(_sketches(np.random.default_rng(0), 3))
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model(batch).numpy(), restored(batch).numpy(), atol=1e-6)


def test_unknown_architecture():
    with pytest.raises(KeyError, match="unknown architecture 'resnet'"):
        build_model("resnet", 3)


def test_the_settings_know_every_architecture_without_loading_keras():
    from pipeline.config import ARCHITECTURES
    from pipeline.models import MODEL_BUILDERS

    assert tuple(MODEL_BUILDERS) == ARCHITECTURES
