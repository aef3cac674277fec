"""Experiment tracking against real (SQLite) MLflow stores: runs by id, limits, one client per store."""

import time

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


def _hold_store(path, seconds: float):
    """Lock the SQLite store for ``seconds`` from another connection (as another writer would); return the thread."""
    import sqlite3
    import threading

    locked = threading.Event()

    def hold():
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        locked.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    locked.wait(10)
    return thread


def test_a_locked_store_is_waited_for_and_nothing_is_lost(store, tracking_db):
    """The store is locked past MLflow's SQLite busy timeout (20 s) while an epoch's metrics and params are logged."""
    client, experiment_id = store
    run_id = tracking.start_parent_run(client, experiment_id, "p", {}, {})
    holder = _hold_store(tracking_db, 24.0)
    started = time.monotonic()
    tracking.log_metrics(client, run_id, {"loss": 1.5, "accuracy": 0.25}, step=0)
    tracking.log_params(client, run_id, {f"p{i}": i for i in range(27)})
    waited = time.monotonic() - started
    holder.join()
    run = client.get_run(run_id)
    assert waited >= 23.0  # it waited for the lock, past SQLite's own timeout, rather than failing
    assert run.data.metrics == {"loss": 1.5, "accuracy": 0.25} and len(run.data.params) == 27


def test_a_store_locked_for_too_long_fails_the_call(store, tracking_db, monkeypatch):
    client, experiment_id = store
    run_id = tracking.start_parent_run(client, experiment_id, "p", {}, {})
    monkeypatch.setattr(tracking, "STORE_LOCK_WAIT_SECONDS", 1.0)
    holder = _hold_store(tracking_db, 22.0)  # past MLflow's busy timeout (20 s)
    try:
        with pytest.raises(mlflow.exceptions.MlflowException, match="database is locked"):
            tracking.log_metrics(client, run_id, {"loss": 1.0})
    finally:
        holder.join()
    assert client.get_run(run_id).data.metrics == {}


def test_processes_starting_on_a_fresh_store_do_not_race_on_its_schema(tmp_path):
    """Four processes open the same new SQLite store at once; every one gets a usable store, first try."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    script = (
        "import sys; from pipeline import tracking; "
        "client = tracking.client_for(sys.argv[1]); "
        "print(tracking.ensure_experiment(client, 'race'))"
    )
    children = [
        subprocess.Popen([sys.executable, "-c", script, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    outcomes = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0] * 4, [err.decode()[-2000:] for _, err in outcomes]
    assert len({out.strip() for out, _ in outcomes}) == 1  # one experiment, found or created by each
