"""The tuning flow as users run it: ``sketchpipe tune`` on the Prefect test server, resumed, and on Dask."""

from pathlib import Path

import mlflow
import pytest
import yaml

from flows.cli import main
from flows.tuning import tuning_with_task_runner
from pipeline import tracking
from pipeline.config import load_settings
from tests.conftest import tiny_settings, write_settings_file


@pytest.fixture(autouse=True)
def _restore_tracking_uri():
    previous = mlflow.get_tracking_uri()
    yield
    mlflow.set_tracking_uri(previous)  # the study's storage sets the process's tracking URI


def test_tune_runs_trials_in_parallel_resumes_and_exports_settings_that_run_reads(in_tmp_cwd, tracking_db, capsys):
    settings = tiny_settings(in_tmp_cwd / "work", tracking_db, epochs=2, models={"gru": {"units": 8}})
    config = write_settings_file(settings, in_tmp_cwd / "settings.yaml")
    argv = ["tune", "--config", config, "--architecture", "gru", "--parallel", "2", "--output", "best.yaml"]
    main([*argv, "--trials", "2", "--progress", "off"])
    out = capsys.readouterr().out.splitlines()
    trial_lines = [line for line in out if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all("val_cross_entropy" in line for line in trial_lines)
    assert any(line.startswith("best: trial ") for line in out)
    assert "best settings: best.yaml" in "\n".join(out)
    tuned = load_settings("best.yaml", environ={})
    assert tuned.architectures == ("gru",) and tuned.models["gru"]["units"] in (32, 64, 128)

    main([*argv, "--trials", "3", "--progress", "off"])
    out = capsys.readouterr().out
    assert "study 'tune-gru-synthetic' resumed with 2 finished trials" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("trial ")] == ["2"]
    client = tracking.client_for(settings.resolved_tracking_uri)
    study = client.search_runs(
        [client.get_experiment_by_name(settings.experiment_name).experiment_id],
        "tags.mlflow.runName = 'tune-gru-synthetic'",
    )
    assert len(study) == 1 and study[0].data.metrics["trials"] == 3
    header = Path("best.yaml").read_text().splitlines()[0]
    assert header.startswith("# Tuned by `sketchpipe tune`: study 'tune-gru-synthetic', best of 3 trials")


@pytest.mark.slow  # a local Dask cluster: about 30 s
def test_trials_run_on_a_dask_cluster(tmp_path, tracking_db):
    settings = tiny_settings(tmp_path / "work", tracking_db, epochs=1, models={"gru": {"units": 8}}, task_runner="dask")
    config = write_settings_file(settings, tmp_path / "settings.yaml")
    result = tuning_with_task_runner(settings, 2)(
        architecture="gru", trials=2, config_file=config, parallel=2, output=str(tmp_path / "best.yaml")
    )
    assert sorted(t["number"] for t in result["trials"]) == [0, 1]
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["architectures"] == ["gru"]
