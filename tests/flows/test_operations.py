"""Operations: data stages cached across runs, retries on a transient failure."""

import shutil

from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.training_pipeline import training_pipeline
from pipeline.stages import data
from tests.conftest import tiny_settings, write_settings_file


def _config_file(tmp_path, mlflow_template, **changes) -> str:
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    settings = tiny_settings(tmp_path / "work", tmp_path / "mlflow.db", **changes)
    return write_settings_file(settings, tmp_path / "settings.yaml")


def _task_states(state) -> dict[str, str]:
    """Return task name -> final state name for the flow run behind ``state``."""
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def test_unchanged_data_skips_the_data_stages_and_changes_recompute(tmp_path, mlflow_template):
    config = _config_file(tmp_path, mlflow_template)
    first_state = training_pipeline(config_file=config, return_state=True)
    first = _task_states(first_state)
    assert {first[s] for s in ("ingest", "validate", "preprocess")} == {"Completed"}

    second = _task_states(training_pipeline(config_file=config, return_state=True))
    assert {second[s] for s in ("ingest", "validate", "preprocess")} == {"Cached"}
    assert second["train"] == "Completed"  # "train-lstm": training is never served from cache

    changed = _task_states(training_pipeline(config_file=config, overrides={"max_len": 40}, return_state=True))
    assert (changed["ingest"], changed["validate"], changed["preprocess"]) == ("Cached", "Cached", "Completed")

    # a validation threshold decides which sketches are accepted, so the features are made again
    # (into their own folder) rather than served from the cache of the old acceptance
    state = training_pipeline(config_file=config, overrides={"min_points": 3}, return_state=True)
    stricter = _task_states(state)
    assert (stricter["ingest"], stricter["validate"], stricter["preprocess"]) == ("Cached", "Completed", "Completed")
    assert state.result().features_dir != first_state.result().features_dir


def test_a_transient_ingest_failure_is_retried(tmp_path, mlflow_template, monkeypatch):
    calls = []
    real_ingest = data.ingest

    def flaky_ingest(settings):
        calls.append(settings.work_dir)
        if len(calls) == 1:
            raise OSError("transient: the data volume is not mounted yet")
        return real_ingest(settings)

    monkeypatch.setattr(data, "ingest", flaky_ingest)
    config = _config_file(tmp_path, mlflow_template, io_retries=2, retry_backoff_seconds=0.1)
    state = training_pipeline(config_file=config, return_state=True)
    assert state.is_completed()
    assert len(calls) == 2
    assert _task_states(state)["ingest"] == "Completed"


def test_bad_data_is_not_retried_and_leaves_no_tracking_run(tmp_path, mlflow_template):
    import mlflow

    folder = tmp_path / "ndjson"
    folder.mkdir()
    (folder / "cat.ndjson").write_text("")  # a class file with no drawing: nothing to train on
    config = _config_file(tmp_path, mlflow_template, io_retries=2, retry_backoff_seconds=0.1)
    state = training_pipeline(
        config_file=config, overrides={"source": "ndjson", "data_dir": str(folder)}, return_state=True
    )
    assert state.is_failed()
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    failed = [run for run in runs if run.state.is_failed()]
    assert len(failed) == 1 and failed[0].run_count == 1  # one attempt: the same data would fail again
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_deleted_work_folder_is_rebuilt_not_served_stale_from_the_cache(tmp_path, mlflow_template):
    config = _config_file(tmp_path, mlflow_template)
    first = training_pipeline(config_file=config, return_state=True)
    assert first.is_completed()
    shutil.rmtree(tmp_path / "work")  # the cache (Prefect's results) is kept; its paths are gone
    again = training_pipeline(config_file=config, return_state=True)
    assert again.is_completed()
    assert again.result().features_dir == first.result().features_dir  # the same content, made anew
    assert (tmp_path / "work" / "features").is_dir()
