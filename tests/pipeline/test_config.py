import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import (
    ARCHITECTURES,
    ConfigError,
    Settings,
    configure_runtime,
    load_settings,
    use_tensorflow_threads,
)


def test_defaults_without_a_file(in_tmp_cwd):
    settings = load_settings(environ={})
    assert settings == Settings()
    assert settings.resolved_tracking_uri == f"sqlite:///{in_tmp_cwd / 'mlflow' / 'mlflow.db'}"
    assert settings.artifact_location == (in_tmp_cwd / "mlflow" / "artifacts").as_uri()


def test_file_then_environment_then_overrides(in_tmp_cwd):
    (in_tmp_cwd / "sketchpipe.yaml").write_text("epochs: 3\nnum_classes: 5\narchitectures: [gru]\n")
    settings = load_settings(environ={"SKETCHPIPE_EPOCHS": "4", "SKETCHPIPE_ARCHITECTURES": "lstm,gru"})
    assert (settings.epochs, settings.num_classes, settings.architectures) == (4, 5, ("lstm", "gru"))
    settings = load_settings(environ={"SKETCHPIPE_EPOCHS": "4"}, overrides={"epochs": 2, "classes": "a, b"})
    assert settings.epochs == 2 and settings.classes == ("a", "b")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"architectures": "lstm,resnet"}, "architectures"),
        ({"source": "csv"}, "source"),
        ({"source": "ndjson"}, "data_dir"),
        ({"task_runner": "spark"}, "task_runner"),
        ({"epochs": "many"}, "epochs"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_wrong_values_name_the_field(in_tmp_cwd, overrides, field):
    with pytest.raises(ConfigError) as error:
        load_settings(overrides=overrides, environ={})
    assert error.value.field == field


def test_missing_config_file_is_an_error(in_tmp_cwd):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings("nope.yaml", environ={})


def test_runtime_defaults_keep_what_is_set():
    env = {"PREFECT_HOME": "/elsewhere"}
    configure_runtime(env)
    assert env["PREFECT_HOME"] == "/elsewhere"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["GX_ANALYTICS_ENABLED"] == "false"


def test_thread_settings_become_tensorflows_variables_and_zero_keeps_what_is_set():
    env = {"TF_NUM_INTEROP_THREADS": "3"}
    use_tensorflow_threads(load_settings(overrides={"intra_op_threads": 1}, environ={}), env)
    assert env == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "3"}
    from_environment = load_settings(environ={"SKETCHPIPE_INTER_OP_THREADS": "2"})
    use_tensorflow_threads(from_environment, env)
    assert env == {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "2"}


def test_tensorflow_reads_the_thread_variables_in_a_new_process(tmp_path):
    """What the settings write is what TensorFlow takes: one thread per operation makes a large matrix
    product run on one core (its CPU time no more than its wall time), where the default splits it."""
    script = (
        "import os, time, tensorflow as tf\n"
        "a = tf.random.normal((1500, 1500)); tf.matmul(a, a).numpy()\n"
        "wall, cpu = time.perf_counter(), time.process_time()\n"
        "for _ in range(8): tf.matmul(a, a).numpy()\n"
        "print((time.process_time() - cpu) / (time.perf_counter() - wall))\n"
    )

    def cores_busy(overrides: dict) -> float:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
        use_tensorflow_threads(load_settings(overrides=overrides, environ={}), env)
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout.split()[-1])

    assert cores_busy({"intra_op_threads": 1, "inter_op_threads": 1}) < 1.2
    if len(os.sched_getaffinity(0)) > 1:  # the default splits it across the cores (the check can fail)
        assert cores_busy({}) > 1.2


def test_real_sources_default_to_all_their_classes_and_synthetic_to_eight(in_tmp_cwd):
    from pipeline.ingest import SYNTHETIC_DEFAULT_CLASSES, select_classes

    assert load_settings(environ={}).num_classes is None
    available = [f"class{i}" for i in range(20)]
    assert select_classes(available, None, None) == available
    assert select_classes(available, None, 5) == available[:5]
    assert SYNTHETIC_DEFAULT_CLASSES == 8
    with pytest.raises(ValueError, match="asked for 21 classes but the source has 20"):
        select_classes(available, None, 21)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"valid_share": 1.0}, "valid_share"),
        ({"test_share": -0.1}, "test_share"),
        ({"valid_share": 0.5, "test_share": 0.5}, "test_share"),
        ({"num_classes": 0}, "num_classes"),
        ({"download": True}, "download"),  # the synthetic source has nothing to download
        ({"source": "tfrecord", "data_dir": "x", "download": True}, "download"),
        ({"source": "ndjson", "download": True, "download_format": "sketchrnn"}, "download_format"),
        ({"source": "sketchrnn", "data_dir": "x", "download_format": "png"}, "download_format"),
        ({"download_workers": 0}, "download_workers"),
    ],
)
def test_data_settings_are_checked(in_tmp_cwd, overrides, field):
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={}, overrides=overrides)
    assert raised.value.field == field


def test_download_defaults_its_folder_and_format_by_source(in_tmp_cwd):
    settings = load_settings(environ={}, overrides={"source": "ndjson", "download": True, "work_dir": "w"})
    assert (settings.data_dir, settings.resolved_download_format) == (str(Path("w/raw/simplified")), "simplified")
    settings = load_settings(environ={}, overrides={"source": "sketchrnn", "download": "true", "data_dir": "mine"})
    assert (settings.data_dir, settings.resolved_download_format) == ("mine", "sketchrnn")


def test_ray_is_never_started_on_all_interfaces_unasked():
    """A local Ray cluster listens on every interface (Ray cannot bind to 127.0.0.1): only by name."""
    with pytest.raises(ConfigError, match=r"'local'.*all network interfaces") as caught:
        load_settings(overrides={"task_runner": "ray"}, environ={})
    assert caught.value.field == "ray_address"
    assert load_settings(overrides={"task_runner": "ray", "ray_address": "local"}, environ={}).ray_address == "local"
    head = load_settings(overrides={"task_runner": "ray"}, environ={"SKETCHPIPE_RAY_ADDRESS": "ray://head:10001"})
    assert head.ray_address == "ray://head:10001"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("augment_scale", 1.5),
        ("augment_rotation", -1.0),
        ("augment_jitter", 2.0),
        ("augment_stroke_dropout", 1.0),
        ("augment_reverse_strokes", 1.5),
        ("augment_point_dropout", 0.95),
        ("augment_shuffle_strokes", 1.01),
    ],
)
def test_augmentation_out_of_range_names_the_setting(name, value):
    with pytest.raises(ConfigError, match="must be between") as caught:
        load_settings(overrides={name: value}, environ={})
    assert caught.value.field == name


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("weight_decay", -0.1, "must be between"),
        ("label_smoothing", 0.6, "must be between"),
        ("lr_schedule", "step", "unknown schedule 'step'"),
        ("warmup_epochs", -1, "at least 0"),
        ("steps_per_execution", 0, "at least 1"),
        ("intra_op_threads", -1, "at least 0"),
        ("inter_op_threads", -2, "at least 0"),
        ("ema_momentum", 1.0, "below 1"),
        ("ema_momentum", -0.5, "at least 0"),
        ("lr_patience", -1, "at least 0"),
        ("early_stopping_patience", -2, "at least 0"),
    ],
)
def test_regularisation_settings_are_checked_and_named(name, value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_settings(overrides={name: value}, environ={})
    assert caught.value.field == name


def test_regularisation_settings_reach_the_training_config():
    from pipeline.stages.training import training_config

    settings = load_settings(
        overrides={
            "weight_decay": 0.01,
            "label_smoothing": 0.1,
            "lr_schedule": "cosine",
            "warmup_epochs": 2,
            "steps_per_execution": 4,
            "ema_momentum": 0.99,
            "lr_patience": 4,
        },
        environ={},
    )
    config = training_config(settings, "lstm")
    assert config.steps_per_execution == 4 and config.ema_momentum == 0.99 and config.lr_patience == 4
    assert (config.weight_decay, config.label_smoothing, config.lr_schedule, config.warmup_epochs) == (
        0.01,
        0.1,
        "cosine",
        2,
    )


def test_the_real_data_profile_loads_and_builds_every_architecture():
    from pipeline.models import build_model

    profile = Path(__file__).resolve().parents[2] / "configs" / "quickdraw.yaml"
    settings = load_settings(profile, environ={})
    assert settings.label_smoothing > 0 and settings.augment_rotation > 0 and settings.epochs >= 20
    assert set(settings.models) == set(ARCHITECTURES)
    for name in ARCHITECTURES:
        model = build_model(name, 345, settings.models[name])
        assert model.output_shape == (None, 345)


@pytest.mark.parametrize(
    "name",
    [
        "wavenet-plain.yaml",
        "wavenet-gated8.yaml",
        "wavenet-no-raster.yaml",
        "wavenet-picture16.yaml",
        "wavenet-full-length.yaml",
    ],
)
def test_the_benchmarks_extra_settings_files_load_and_build(name):
    """``benchmarks/real_accuracy.py --also FILE`` rows: settings files that must stay loadable."""
    from pipeline.models import build_model

    settings = load_settings(Path(__file__).resolve().parents[2] / "benchmarks" / name, environ={})
    for architecture in settings.architectures:
        assert build_model(architecture, 345, settings.models[architecture]).output_shape == (None, 345)


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"resnet": {}}, "unknown architecture 'resnet'"),
        ({"wavenet": {"filtres": 8}}, "wavenet takes no 'filtres'; it takes filters, kernel_size"),
        ({"simple_rnn": {"activation": "sigmoid"}}, "simple_rnn.activation: 'sigmoid' is not one of tanh, relu"),
        ({"wavenet": {"pooling": "last"}}, "wavenet.pooling: 'last' is not one of mean, mean_max"),
        ({"gru": {"bidirectional": "yes"}}, "gru.bidirectional: expected true or false, got 'yes'"),
        ({"lstm": [64, 2]}, "lstm: expected hyperparameters as name: value"),
        # sizes Keras refuses only once that model's training has started (the other models then trained)
        ({"lstm": {"units": 0}}, "lstm.units: expected a whole number of at least 1, got 0"),
        ({"wavenet": {"filters": -3}}, "wavenet.filters: expected a whole number of at least 1, got -3"),
        ({"gru": {"num_layers": 1.5}}, "gru.num_layers: expected a whole number of at least 1, got 1.5"),
        ({"conv_lstm": {"filters": [48, 0]}}, "conv_lstm.filters: expected a list of whole numbers"),
        ({"wavenet": {"dilation_rates": []}}, "wavenet.dilation_rates: needs at least one rate"),
        ({"transformer": {"stem_dilations": [1, "2"]}}, "transformer.stem_dilations: expected a list of whole"),
        ({"bilstm": {"dropout": 1.0}}, "bilstm.dropout: expected a number at least 0 and below 1, got 1.0"),
        ({"wavenet": {"raster_size": 4}}, "wavenet.raster_size: expected 0 (no picture) or a side of at least 8"),
        ({"gru": {"raster_size": True}}, "gru.raster_size: expected 0 (no picture) or a side of at least 8"),
        ({"lstm": {"raster_filters": 0}}, "lstm.raster_filters: expected a whole number of at least 1, got 0"),
        ({"wavenet": {"halve_after": -1}}, "wavenet.halve_after: expected 0 (never), a number of blocks or a list"),
        ({"wavenet": {"halve_after": True}}, "wavenet.halve_after: expected 0 (never), a number of blocks or a list"),
        ({"wavenet": {"halve_after": [1, 1]}}, "wavenet.halve_after: expected a list of different numbers of blocks"),
        ({"wavenet": {"halve_after": [0, 1]}}, "wavenet.halve_after: expected a list of different numbers of blocks"),
        ({"wavenet": {"halve_after": [1, 3], "dilation_rates": [1, 1, 2]}}, "wavenet.halve_after: 3 leaves no block"),
        ({"wavenet": {"halve_after": 3, "dilation_rates": [1, 1, 2]}}, "wavenet.halve_after: 3 leaves no block"),
        ({"wavenet": {"halve_after": 8}}, "wavenet.halve_after: 8 leaves no block after it (of 8)"),
        ({"transformer": {"dim": 63}}, "transformer.dim (63) must be even and a multiple of heads (4)"),
        ({"transformer": {"dim": 64, "heads": 5}}, "transformer.dim (64) must be even and a multiple of heads (5)"),
    ],
)
def test_model_hyperparameters_are_checked_when_the_settings_load(models, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_settings(overrides={"models": models}, environ={})
    assert caught.value.field == "models"


def test_the_checked_model_hyperparameters_are_the_builders_arguments():
    import inspect

    from pipeline.config import MODEL_PARAMETERS
    from pipeline.models import MODEL_BUILDERS

    for name, builder in MODEL_BUILDERS.items():
        arguments = [p for p in inspect.signature(builder).parameters if p != "num_classes"]
        assert sorted(MODEL_PARAMETERS[name]) == sorted(arguments), name


def test_the_transformer_defaults_checked_are_the_builders():
    import inspect

    from pipeline.config import TRANSFORMER_DEFAULTS
    from pipeline.models import build_transformer

    parameters = inspect.signature(build_transformer).parameters
    assert {name: parameters[name].default for name in TRANSFORMER_DEFAULTS} == TRANSFORMER_DEFAULTS


def test_the_wavenet_blocks_checked_are_the_builders():
    import inspect

    from pipeline.config import WAVENET_DEFAULT_BLOCKS
    from pipeline.models import build_wavenet

    assert inspect.signature(build_wavenet).parameters["dilation_rates"].default == WAVENET_DEFAULT_BLOCKS


@pytest.mark.parametrize(
    ("overrides", "environ", "field", "message"),
    [
        ({"learning_rate": "inf"}, {}, "learning_rate", "must be a finite number (got 'inf')"),
        ({}, {"SKETCHPIPE_CLIPNORM": "nan"}, "clipnorm", "must be a finite number (got 'nan')"),
    ],
)
def test_values_no_run_can_use_are_refused_when_the_settings_load(in_tmp_cwd, overrides, environ, field, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_settings(overrides=overrides, environ=environ)
    assert caught.value.field == field


def test_the_checked_choices_are_the_builders_choices():
    from pipeline import config, models

    assert config._MODEL_CHOICES == {"pooling": models.POOLINGS, "activation": models.RNN_ACTIVATIONS}


def _nested_aliases(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_config_is_refused_before_it_expands(tmp_path):
    """Nine levels of nine aliases: 241 bytes standing for 387 million strings."""
    import resource

    path = tmp_path / "bomb.yaml"
    path.write_text(_nested_aliases(9))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ConfigError, match=r"bomb\.yaml: its anchors and aliases expand to over 100,000 values"):
        load_settings(path, environ={})
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KB: nothing was expanded


def test_an_error_quotes_a_long_value_as_a_short_excerpt(tmp_path):
    """Five levels (59,049 strings) are within the bound, but the error never renders them whole."""
    path = tmp_path / "big.yaml"
    levels = [line.split(": ", 1)[1] for line in _nested_aliases(5).splitlines()]
    path.write_text("models:\n" + "".join(f"  - {value}\n" for value in levels))
    with pytest.raises(ConfigError) as refused:
        load_settings(path, environ={})
    assert refused.value.field == "models" and len(str(refused.value)) < 500
    assert "characters) ..." in str(refused.value)


def test_aliases_within_the_bound_read_as_yaml_says(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text("models:\n  lstm: &small {units: 8, num_layers: 1}\n  gru: *small\n")
    settings = load_settings(path, environ={})
    assert settings.models["gru"] == settings.models["lstm"] == {"units": 8, "num_layers": 1}


def test_a_folder_or_a_huge_file_given_as_config_is_named_for_what_it_is(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a settings file"):
        load_settings(tmp_path, environ={})
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"huge\.yaml is over 1024 KiB"):
        load_settings(huge, environ={})
