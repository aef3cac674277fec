"""Experiment tracking against real (SQLite) MLflow stores: runs by id, limits, one client per store."""

import mlflow
import pytest

from pipeline import tracking


@pytest.fixture
def store(tracking_db, tmp_path):
    client = tracking.client_for(f"sqlite:///{tracking_db}")
    return client, tracking.ensure_experiment(client, "tests", (tmp_path / "artifacts").as_uri())


def test_two_stores_in_one_process_keep_their_runs_apart(tmp_path, mlflow_template):
    import shutil

    clients = []
    for name in ("a", "b"):
        shutil.copy(mlflow_template, tmp_path / f"{name}.db")
        clients.append(tracking.client_for(f"sqlite:///{tmp_path / name}.db"))
    before = mlflow.get_tracking_uri()
    runs = []
    for client in clients:
        experiment_id = tracking.ensure_experiment(client, "tests", (tmp_path / "artifacts").as_uri())
        runs.append(tracking.start_parent_run(client, experiment_id, "p", {"store": client.tracking_uri}, {}))
    for client, run_id, other in zip(clients, runs, reversed(runs), strict=True):
        assert client.get_run(run_id).data.params["store"] == client.tracking_uri
        with pytest.raises(mlflow.exceptions.MlflowException):
            client.get_run(other)
    assert mlflow.get_tracking_uri() == before  # nothing process-wide was set
    assert mlflow.active_run() is None


def test_the_experiment_opens_as_a_model_training_one_in_the_ui(store, tmp_path):
    client, experiment_id = store
    assert client.get_experiment(experiment_id).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    older = client.create_experiment("made-before", artifact_location=(tmp_path / "older").as_uri())
    assert tracking.ensure_experiment(client, "made-before") == older
    assert client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == "custom_model_development"
    client.set_experiment_tag(older, tracking.EXPERIMENT_KIND_TAG, "genai_development")
    tracking.ensure_experiment(client, "made-before")
    assert client.get_experiment(older).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"  # a choice kept


def test_child_runs_are_found_by_name_and_logged_to_by_id(store):
    client, experiment_id = store
    parent = tracking.start_parent_run(client, experiment_id, "p", {"epochs": 3}, {"pipeline": "t"})
    child = tracking.start_child_run(client, experiment_id, parent, "lstm", {"architecture": "lstm"})
    assert tracking.find_child_run(client, parent, "lstm") == child
    assert tracking.find_child_run(client, parent, "gru") is None
    logger = tracking.epoch_logger(client, child)
    for epoch in range(2):
        logger.on_epoch_end(epoch, {"loss": 1.0 - epoch / 4, "val_loss": 1.5})
    assert tracking.metric_histories(client, child, ["loss", "val_loss"]) == {
        "loss": [1.0, 0.75],
        "val_loss": [1.5, 1.5],
    }
    tracking.end_run(client, parent, "FAILED")
    assert client.get_run(parent).info.status == "FAILED"


def test_the_345_official_classes_fit_mlflow_limits_and_the_whole_list_is_an_artifact(store, tmp_path):
    from pipeline.download import official_categories

    client, experiment_id = store
    classes = official_categories()
    value = tracking.class_list_value(classes)
    assert len(value) <= tracking.MAX_INPUT_TAG_VALUE
    assert value.startswith("345 classes (all in the dataset/classes.txt artifact): ")
    assert tracking.class_list_value(["cat", "dog"]) == "cat,dog"

    run_id = tracking.start_parent_run(client, experiment_id, "p", {"classes": value}, {"classes": value})
    counts = {split: {name: 70 for name in classes} for split in ("train", "valid", "test")}
    tracking.log_dataset_input(
        client, run_id, "sketchrnn", str(tmp_path), "f" * 64, {"counts": counts, "skipped": {}}, classes=classes
    )
    run = client.get_run(run_id)
    [dataset_input] = run.inputs.dataset_inputs
    profile = next(t.value for t in dataset_input.tags if t.key == "profile")
    assert len(profile) <= 500
    assert '"classes": 345' in profile and '"train": 24150' in profile
    local = client.download_artifacts(run_id, "dataset", str(tmp_path / "a"))
    assert (tmp_path / "a" / "dataset" / "classes.txt").read_text().splitlines() == classes
    assert mlflow.artifacts.load_dict(f"{local}/profile.json")["counts"]["test"]["The Eiffel Tower"] == 70
