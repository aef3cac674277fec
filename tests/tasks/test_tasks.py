"""Each task's function through ``.fn``, chained on the tiny dataset against a real SQLite store."""

import json
import shutil
from pathlib import Path

import pytest

from pipeline import registry, tracking
from tasks.data import ingest_task, preprocess_task, validate_task
from tasks.registry import finish_tracking_run_task, promote_task, register_task, start_tracking_run_task
from tasks.training import evaluate_task, plot_evaluation_task, train_task
from tests.conftest import LEARNS, tiny_settings


@pytest.fixture(scope="module")
def settings(tmp_path_factory, mlflow_template):
    root = tmp_path_factory.mktemp("tasks")
    shutil.copy(mlflow_template, root / "mlflow.db")
    return tiny_settings(root / "work", root / "mlflow.db", **LEARNS)


@pytest.fixture(scope="module")
def chain(settings):
    """Run every task once, in pipeline order; keep each result."""
    out = {"dataset": ingest_task.fn(settings)}
    out["report"] = validate_task.fn(settings, out["dataset"])
    out["features"] = preprocess_task.fn(settings, out["report"])
    out["parent"] = start_tracking_run_task.fn(settings, out["report"], out["features"], "test-flow-run")
    out["run"] = train_task.fn(settings, "lstm", out["features"], out["parent"])
    out["evaluation"] = evaluate_task.fn(settings, out["run"], out["features"])
    out["figures"] = plot_evaluation_task.fn(settings, out["run"], out["evaluation"], out["features"])
    out["version"] = register_task.fn(settings, out["run"], out["evaluation"], out["features"])
    out["decision"] = promote_task.fn(settings, [out["version"]], out["features"])
    finish_tracking_run_task.fn(settings, out["parent"], out["decision"], ok=True)
    return out


def test_ingest_writes_a_canonical_dataset(chain, settings):
    info = json.loads((Path(chain["dataset"]) / "dataset.json").read_text())
    assert info["classes"] == ["circle", "square", "triangle", "star"]
    assert info["counts"]["train"] == dict.fromkeys(info["classes"], 60)
    assert Path(chain["dataset"]).parent == Path(settings.work_dir) / "datasets"


def test_ingest_is_deterministic(chain, settings):
    assert ingest_task.fn(settings) == chain["dataset"]


def test_validate_accounts_for_every_record(chain):
    report = chain["report"]
    assert report.records_in == 4 * 95 == report.accepted + report.quarantined


def test_preprocess_writes_flat_arrays_per_split(chain):
    for split in ("train", "valid", "test"):
        folder = Path(chain["features"]) / split
        assert sorted(p.name for p in folder.iterdir()) == ["indices.npy", "labels.npy", "offsets.npy", "strokes.npy"]


def test_train_logs_a_nested_run_with_per_epoch_metrics(chain, settings):
    client = tracking.client_for(settings.resolved_tracking_uri)
    run = client.get_run(chain["run"].run_id)
    assert run.data.tags["mlflow.parentRunId"] == chain["parent"]
    assert run.data.tags["architecture"] == "lstm"
    assert run.data.params["epochs"] == str(LEARNS["epochs"]) and run.data.params["model_units"] == "8"
    # the project's own params only: no autologged optimizer_* copies of learning_rate and friends
    assert not [key for key in run.data.params if key.startswith("optimizer")]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == list(range(LEARNS["epochs"]))
    assert Path(chain["run"].model_path).is_file()


def test_evaluate_logs_test_metrics(chain, settings):
    evaluation = chain["evaluation"]
    assert 0.0 <= evaluation.accuracy <= evaluation.top3_accuracy <= 1.0
    assert evaluation.num_examples == 80
    metrics = tracking.client_for(settings.resolved_tracking_uri).get_run(chain["run"].run_id).data.metrics
    assert metrics["test_accuracy"] == pytest.approx(evaluation.accuracy)


def test_evaluation_artifacts_hold_the_probabilities_scores_and_figures(chain, settings):
    import numpy as np

    from pipeline.dataset import open_split
    from pipeline.features import read_spec, record_indices

    client = tracking.client_for(settings.resolved_tracking_uri)
    run_id = chain["run"].run_id
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
    figures = {"confusion_matrix.png", "confused_pairs.png", "training_curves.png", "misclassified.png"}
    assert {
        "test_top_classes.npy",
        "test_top_probabilities.npy",
        "per_class.json",
        "confusion_matrix.csv",
        "per_class_scores.json",
        *figures,
    } <= logged
    assert {p.name for p in Path(chain["figures"]).glob("*.png")} == figures
    images = [Path(a.path).name for a in client.list_artifacts(run_id, "images")]  # the chart view's image grid
    assert all(any(name.startswith(f"{Path(f).stem}+step+0+") for name in images) for f in figures), images
    assert "test_probabilities.npy" not in logged  # (sketches x classes) only with keep_test_probabilities
    ranked = tracking.load_array_artifact(client, run_id, "evaluation/test_top_classes.npy")
    top = tracking.load_array_artifact(client, run_id, "evaluation/test_top_probabilities.npy")
    spec = read_spec(chain["features"])
    labels = np.asarray(open_split(spec.dataset_dir, "test").labels)[record_indices(chain["features"], "test")]
    assert ranked.shape == top.shape == (80, 3)
    assert (ranked[:, 0] == labels).mean() == pytest.approx(chain["evaluation"].accuracy)
    assert (ranked == labels[:, None]).any(axis=1).mean() == pytest.approx(chain["evaluation"].top3_accuracy)
    assert (np.diff(top, axis=1) <= 0).all()
    assert tracking.load_array_artifact(client, run_id, "evaluation/missing.npy") is None


def test_the_registered_model_is_the_one_evaluated(chain, settings):
    import numpy as np

    from pipeline.features import split_sketches
    from pipeline.serving import load_classifier

    classifier = load_classifier(settings, f"models:/{settings.registered_model_name}/{chain['version'].version}")
    sketches, _ = split_sketches(chain["features"], "test")
    client = tracking.client_for(settings.resolved_tracking_uri)
    run_id = chain["run"].run_id
    evaluated = tracking.load_array_artifact(client, run_id, "evaluation/test_top_probabilities.npy")
    ranked = tracking.load_array_artifact(client, run_id, "evaluation/test_top_classes.npy")
    served = classifier.probabilities(sketches)
    np.testing.assert_allclose(np.take_along_axis(served, ranked, axis=1), evaluated, atol=1e-5)


def test_register_and_promote(chain, settings):
    client = tracking.client_for(settings.resolved_tracking_uri)
    assert chain["version"].version == "1"
    assert chain["decision"].alias == "champion"
    assert registry.alias_version(client, settings.registered_model_name, "champion") == "1"


def test_finish_closes_the_parent_run(chain, settings):
    run = tracking.client_for(settings.resolved_tracking_uri).get_run(chain["parent"])
    assert run.info.status == "FINISHED"
