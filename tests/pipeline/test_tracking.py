"""The registry and promotion gate against a real (SQLite) MLflow store."""

import keras
import mlflow
import numpy as np
import pytest

from pipeline import tracking
from pipeline.models import build_model
from pipeline.training import compile_model


@pytest.fixture
def store(tracking_db, tmp_path):
    tracking.use_store(f"sqlite:///{tracking_db}")
    experiment_id = tracking.ensure_experiment("tests", (tmp_path / "artifacts").as_uri())
    return experiment_id


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    compile_model(build_model("lstm", 3, {"units": 4, "num_layers": 1}), 1e-3, 1.0).save(path)
    return path


def _register(store, saved_model, accuracy: float, name: str = "m") -> tracking.RegisteredVersion:
    run_id = tracking.start_child_run(store, tracking.start_parent_run(store, "p", {}, {}), "lstm", {})
    return tracking.log_and_register_model(
        run_id,
        keras.saving.load_model(saved_model),
        name,
        input_example=np.zeros((1, 4, 3), np.float32),
        metadata={"classes": ["a", "b", "c"], "scale": 1.0, "max_len": 10},
        tags={"architecture": "lstm", "dataset_fingerprint": "f" * 64, "test_accuracy": str(accuracy)},
    )


def test_versions_are_loadable_with_signature_and_metadata(store, saved_model):
    version = _register(store, saved_model, 0.6)
    uri = f"models:/m/{version.version}"
    info = mlflow.models.get_model_info(uri)
    assert info.metadata["classes"] == ["a", "b", "c"]
    assert info.signature.inputs.inputs[0].shape == (-1, -1, 3)
    model = mlflow.keras.load_model(uri)
    assert model.predict(np.ones((2, 5, 3), np.float32), verbose=0).shape == (2, 3)


def test_manual_promotion_and_rollback(store, saved_model):
    a, b = _register(store, saved_model, 0.6), _register(store, saved_model, 0.5)
    tracking.set_champion("m", a.version)
    tracking.set_champion("m", b.version)
    assert tracking.alias_version("m", "champion") == b.version
    assert tracking.rollback_champion("m") == a.version
    assert tracking.alias_version("m", "champion") == a.version
    with pytest.raises(ValueError, match="no earlier champion"):
        tracking.rollback_champion("m")
    assert tracking.alias_version("m", "champion") == a.version


def test_unknown_version_changes_nothing(store, saved_model):
    a = _register(store, saved_model, 0.6)
    tracking.set_champion("m", a.version)
    with pytest.raises(mlflow.exceptions.MlflowException):
        tracking.set_champion("m", "99")
    assert tracking.alias_version("m", "champion") == a.version


def test_the_requirement_scan_runs_once_in_the_background_and_fills_mlflow_s_map():
    from mlflow.utils import requirements_utils

    scan = tracking.warm_model_logging()
    assert scan is not None and scan is tracking.warm_model_logging()  # once per process
    scan.join(timeout=60)
    assert not scan.is_alive()
    assert "mlflow" in requirements_utils._MODULES_TO_PACKAGES


def test_the_345_official_classes_fit_mlflow_limits_and_the_whole_list_is_an_artifact(store, tmp_path):
    from pipeline.download import official_categories

    classes = official_categories()
    value = tracking.class_list_value(classes)
    assert len(value) <= tracking.MAX_INPUT_TAG_VALUE
    assert value.startswith("345 classes (all in the dataset/classes.txt artifact): ")
    assert tracking.class_list_value(["cat", "dog"]) == "cat,dog"

    run_id = tracking.start_parent_run(store, "p", {"classes": value}, {"classes": value})
    counts = {split: {name: 70 for name in classes} for split in ("train", "valid", "test")}
    tracking.log_dataset_input(
        run_id, "sketchrnn", str(tmp_path), "f" * 64, {"counts": counts, "skipped": {}}, classes=classes
    )
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    [dataset_input] = run.inputs.dataset_inputs
    profile = next(t.value for t in dataset_input.tags if t.key == "profile")
    assert len(profile) <= 500
    assert '"classes": 345' in profile and '"train": 24150' in profile
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dataset", dst_path=str(tmp_path / "a"))
    assert (tmp_path / "a" / "dataset" / "classes.txt").read_text().splitlines() == classes
    assert mlflow.artifacts.load_dict(f"{local}/profile.json")["counts"]["test"]["The Eiffel Tower"] == 70
