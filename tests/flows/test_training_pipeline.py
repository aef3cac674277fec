"""The whole training flow on a real Prefect server and a real MLflow store."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from flows.training_pipeline import pipeline_with_task_runner, training_pipeline
from pipeline import registry, tracking
from pipeline.serving import load_classifier
from tests.conftest import LEARNS, tiny_settings, write_settings_file


@pytest.fixture(scope="module")
def pipeline_setup(tmp_path_factory, mlflow_template):
    root = tmp_path_factory.mktemp("flow")
    shutil.copy(mlflow_template, root / "mlflow.db")
    settings = tiny_settings(root / "work", root / "mlflow.db", architectures=("lstm", "conv_lstm"), **LEARNS)
    return settings, write_settings_file(settings, root / "settings.yaml")


@pytest.fixture(scope="module")
def first_result(pipeline_setup):
    _, config_file = pipeline_setup
    return training_pipeline(config_file=str(config_file))


def test_one_run_per_architecture_nested_under_the_flow_run(first_result, pipeline_setup):
    settings, _ = pipeline_setup
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{first_result.parent_run_id}'"
    )
    assert sorted(r.data.tags["architecture"] for r in children) == ["conv_lstm", "lstm"]
    for run in children:
        assert {"test_accuracy", "test_top3_accuracy", "loss", "val_loss", "accuracy"} <= set(run.data.metrics)
        assert run.info.status == "FINISHED"
    parent = client.get_run(first_result.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["dataset_fingerprint"] == children[0].data.params["dataset_fingerprint"]


def test_versions_registered_and_champion_loads_and_predicts(first_result, pipeline_setup):
    settings, _ = pipeline_setup
    client = tracking.client_for(settings.resolved_tracking_uri)
    versions = client.search_model_versions(f"name = '{settings.registered_model_name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    best = max(first_result.rows, key=lambda r: (r.test_accuracy, -int(r.model_version)))
    assert first_result.promoted_alias == "champion"
    assert registry.alias_version(client, settings.registered_model_name, "champion") == best.model_version

    classifier = load_classifier(settings)
    assert classifier.classes == ["circle", "square", "triangle", "star"]
    sketch = np.array([[10, 0, 0], [0, 10, 0], [-10, 0, 0], [0, -10, 1]], dtype=np.float32)
    probabilities = classifier.probabilities([sketch, sketch[:2]])
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_cli_run_prints_the_table_and_a_second_run_lands_in_the_same_experiment(first_result, pipeline_setup, capsys):
    settings, config_file = pipeline_setup
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    parents_before = client.search_runs([experiment.experiment_id], "tags.pipeline = 'training_pipeline'")
    versions_before = client.search_model_versions(f"name = '{settings.registered_model_name}'")
    main(["run", "--config", str(config_file), "--architectures", "lstm", "--epochs", "1"])
    out, err = capsys.readouterr()
    assert "Downloading artifacts" not in err  # MLflow's bars stay off (the gate reads artifacts)
    header = next(line for line in out.splitlines() if line.startswith("architecture"))
    assert header.split()[:3] == ["architecture", "test", "acc"]
    assert any(line.startswith("lstm ") for line in out.splitlines())
    new_version = str(max(int(v.version) for v in versions_before) + 1)
    assert f"promoted: test-sketch-classifier version {new_version} -> @" in out

    parents = client.search_runs([experiment.experiment_id], "tags.pipeline = 'training_pipeline'")
    assert len(parents) == len(parents_before) + 1
    versions = {str(v.version) for v in client.search_model_versions(f"name = '{settings.registered_model_name}'")}
    assert registry.alias_version(client, settings.registered_model_name, "champion") in versions


@pytest.mark.slow  # a local Dask cluster and a local Ray cluster: about a minute
@pytest.mark.parametrize("runner", ["dask", "ray"])
def test_distributed_task_runners_on_a_local_cluster(tmp_path, mlflow_template, runner):
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    settings = tiny_settings(
        tmp_path / "work",
        tmp_path / "mlflow.db",
        architectures=("lstm", "gru"),
        task_runner=runner,
        ray_address="local" if runner == "ray" else None,  # a local Ray cluster only when asked for by name
    )
    config_file = write_settings_file(settings, tmp_path / "settings.yaml")
    result = pipeline_with_task_runner(settings)(config_file=config_file)
    assert sorted(r.architecture for r in result.rows) == ["gru", "lstm"]
    assert sorted(r.model_version for r in result.rows) == ["1", "2"]


def test_resuming_a_finished_run_trains_and_registers_nothing_new(first_result, pipeline_setup):
    settings, config_file = pipeline_setup
    client = tracking.client_for(settings.resolved_tracking_uri)
    before = len(client.search_model_versions(f"name = '{settings.registered_model_name}'"))
    again = training_pipeline(config_file=str(config_file), resume_run_id=first_result.parent_run_id)
    assert {(r.architecture, r.model_version, r.run_id) for r in again.rows} == {
        (r.architecture, r.model_version, r.run_id) for r in first_result.rows
    }
    assert len(client.search_model_versions(f"name = '{settings.registered_model_name}'")) == before


def test_cli_trains_on_ndjson_simplified_and_raw_alike(first_result, pipeline_setup, tmp_path, capsys):
    """Five classes, where the store's champion knows four: the run stops before training with one line
    naming ``registered_model_name``, and trains under a name of its own."""
    from pipeline.quickdraw_formats import write_ndjson
    from pipeline.synthetic import SHAPES, draw_sketch

    settings, config_file = pipeline_setup
    client = tracking.client_for(settings.resolved_tracking_uri)
    champion = registry.alias_version(client, settings.registered_model_name, "champion")
    count = len(client.search_model_versions(f"name = '{settings.registered_model_name}'"))
    rng = np.random.default_rng(0)
    data = tmp_path / "ndjson"
    for index, name in enumerate(list(SHAPES)[:5]):
        raw = index >= 3  # two classes in the raw format, in device coordinates
        sketches = [draw_sketch(name, rng) * (np.array([3, 3, 1]) if raw else 1) for _ in range(70)]
        write_ndjson(data / f"full_{'raw' if raw else 'simplified'}_{name}.ndjson", name, sketches, raw=raw)
    argv = ["run", "--config", str(config_file), "--source", "ndjson", "--data-dir", str(data), "--num-classes", "5",
            "--epochs", "1", "--architectures", "lstm"]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1] == (
        f"sketchpipe: error: registered_model_name: the champion of '{settings.registered_model_name}' (version "
        f"{champion}) was trained on 4 classes, this run on 5; give this label space its own registered_model_name "
        "(--registered-model-name, or in --config)"
    )
    assert registry.alias_version(client, settings.registered_model_name, "champion") == champion
    assert len(client.search_model_versions(f"name = '{settings.registered_model_name}'")) == count  # none trained

    main([*argv, "--registered-model-name", "five-shapes"])
    out = capsys.readouterr().out
    assert "dataset: " in out and "(350 sketches, 0 quarantined)" in out
    promoted = next(line for line in out.splitlines() if line.startswith("promoted:"))
    assert promoted.startswith("promoted: five-shapes version 1 -> @"), promoted
    registered = client.get_model_version("five-shapes", "1")
    assert registered.tags["architecture"] == "lstm"
    classifier = load_classifier(settings.replace(registered_model_name="five-shapes"), "models:/five-shapes/1")
    assert classifier.classes == sorted(list(SHAPES)[:5])


def test_a_failed_training_task_surfaces_its_own_error_not_the_tasks_it_held_up(pipeline_setup, monkeypatch):
    """When one architecture's training fails, the flow (and so ``sketchpipe run``) fails with that error:
    before, it failed on the first task waiting for it ("Run is in PENDING state, its result is not
    available"), which says nothing of what went wrong."""
    from prefect.exceptions import UnfinishedRun

    from pipeline import models

    def cannot_build(num_classes, **params):
        raise ValueError("planted: this model cannot be built")

    monkeypatch.setitem(models.MODEL_BUILDERS, "conv_lstm", cannot_build)  # our builder, not Prefect's machinery
    _, config_file = pipeline_setup
    with pytest.raises(ValueError, match="planted: this model cannot be built") as raised:
        training_pipeline(config_file=str(config_file), overrides={"epochs": 1})
    assert not isinstance(raised.value, UnfinishedRun)


@pytest.mark.slow  # a third pipeline run on the module's store: about 40 s
def test_with_one_architecture_at_a_time_the_next_trains_once_the_one_before_is_evaluated(pipeline_setup, caplog):
    settings, config_file = pipeline_setup
    result = training_pipeline(config_file=str(config_file), overrides={"epochs": 1, "max_parallel_architectures": 1})
    assert "Training 2 architecture(s), 1 at a time" in caplog.text  # the flow logs its prints
    client = tracking.client_for(settings.resolved_tracking_uri)
    runs = {row.architecture: client.get_run(row.run_id) for row in result.rows}
    evaluated = client.get_metric_history(runs["lstm"].info.run_id, "test_accuracy")[-1].timestamp
    assert runs["conv_lstm"].info.start_time >= evaluated
    assert {row.architecture for row in result.rows} == {"lstm", "conv_lstm"}


def test_the_architectures_at_once_follow_the_setting_else_the_free_memory_and_the_split(pipeline_setup):
    from pipeline.features import read_spec
    from pipeline.stages.training import ARCHITECTURE_BYTES, BYTES_PER_TRAINING_SKETCH, parallel_architectures

    settings, _ = pipeline_setup
    features_dir = next(p.parent for p in (Path(settings.work_dir) / "features").rglob("spec.json"))
    train = read_spec(features_dir).counts["train"]
    need = ARCHITECTURE_BYTES + BYTES_PER_TRAINING_SKETCH * train
    assert parallel_architectures(settings.replace(max_parallel_architectures=3), features_dir, 7) == 3
    assert parallel_architectures(settings.replace(max_parallel_architectures=9), features_dir, 7) == 7
    assert parallel_architectures(settings, features_dir, 7, available=int(2 * need * 3.5)) == 3
    assert parallel_architectures(settings, features_dir, 7, available=need) == 1  # never none
    assert parallel_architectures(settings, features_dir, 2, available=100 * need) == 2
