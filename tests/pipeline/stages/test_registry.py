"""Tracking stages against a real SQLite store: opening, comparing and closing a pipeline's run."""

import pytest

from pipeline import tracking
from pipeline.promotion import PromotionDecision
from pipeline.report import ArchitectureResult
from pipeline.stages import registry
from tests.conftest import tiny_settings


@pytest.fixture
def settings(tmp_path, tracking_db):
    return tiny_settings(tmp_path / "work", tracking_db)


def test_a_tracking_run_records_the_dataset_and_validation_and_closes(settings, tiny_report, tiny_features):
    run_id = registry.start_tracking_run(settings, tiny_report, tiny_features, "flow-run-1")
    client = tracking.client_for(settings.resolved_tracking_uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "flow-run-1" and run.info.status == "RUNNING"
    assert run.data.params["classes"] == "circle,square,triangle,star" and run.data.params["num_classes"] == "4"
    assert run.data.metrics["records_in"] == tiny_report.records_in
    logged = {a.path for a in client.list_artifacts(run_id, "validation")}
    assert "validation/summary.json" in logged and "validation/quarantine.jsonl" in logged

    rows = [ArchitectureResult("lstm", 0.5, 0.8, 0.4, 1.0, 1, 100, 1.0, "r", "1")]
    decision = PromotionDecision("1", 0.5, None, None, None, "champion", "no champion yet", "t/test")
    csv_path, markdown = registry.compare(settings, run_id, rows, decision)
    assert csv_path.is_file() and markdown.startswith("# lstm wins this run")
    registry.finish_tracking_run(settings, run_id, decision, ok=True)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"comparison", "promotion.json", "dataset", "validation"}


def test_resuming_reopens_the_same_run(settings, tiny_report, tiny_features):
    run_id = registry.start_tracking_run(settings, tiny_report, tiny_features, "flow-run-2")
    registry.finish_tracking_run(settings, run_id, None, ok=False)
    client = tracking.client_for(settings.resolved_tracking_uri)
    assert client.get_run(run_id).info.status == "FAILED"
    assert registry.start_tracking_run(settings, tiny_report, tiny_features, "again", resume_run_id=run_id) == run_id
    assert client.get_run(run_id).info.status == "RUNNING"


def test_an_unreachable_tracking_server_stops_before_anything_is_written(tmp_path, tiny_report, tiny_features):
    from tests.integration.conftest import free_port

    url = f"http://127.0.0.1:{free_port()}"
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db").replace(tracking_uri=url)
    with pytest.raises(tracking.TrackingStoreUnavailableError, match=f"MLflow tracking server {url} is unreachable"):
        registry.start_tracking_run(settings, tiny_report, tiny_features, "flow-run")
