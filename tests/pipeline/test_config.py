import pytest

from pipeline.config import ConfigError, Settings, configure_runtime, load_settings


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
