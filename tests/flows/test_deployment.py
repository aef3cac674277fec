"""The scheduled deployment exists with its cron schedule, and a run of it completes."""

import asyncio
import shutil

from prefect import get_client
from prefect.deployments import run_deployment
from prefect.runner import Runner

from flows.deployment import DEPLOYMENT_NAME, scheduled_deployment
from tests.conftest import tiny_settings, write_settings_file


def test_deployment_has_its_cron_schedule_and_a_run_completes(tmp_path, mlflow_template):
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    settings = tiny_settings(tmp_path / "work", tmp_path / "mlflow.db")
    write_settings_file(settings, tmp_path / "settings.yaml")

    runner = Runner(query_seconds=1)
    deployment_id = runner.add_deployment(scheduled_deployment("0 3 * * *", str(tmp_path / "settings.yaml")))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(f"training_pipeline/{DEPLOYMENT_NAME}")
        assert deployment.id == deployment_id
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["config_file"] == str(tmp_path / "settings.yaml")

    flow_run = run_deployment(f"training_pipeline/{DEPLOYMENT_NAME}", timeout=0)  # due now
    asyncio.run(runner.start(run_once=True))  # picks up the due run, executes it, returns
    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
    assert finished.state.is_completed(), finished.state.message


def test_every_deployment_in_prefect_yaml_names_a_flow_and_its_parameters():
    import importlib
    import inspect
    from pathlib import Path

    import yaml
    from prefect.client.schemas.schedules import CronSchedule

    spec = yaml.safe_load((Path(__file__).parents[2] / "prefect.yaml").read_text())
    names = {d["name"] for d in spec["deployments"]}
    assert names == {"scheduled-training", "monitoring"}
    for deployment in spec["deployments"]:
        path, function = deployment["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), function)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment["parameters"]) <= accepted, deployment["name"]
        for schedule in deployment["schedules"]:
            CronSchedule(cron=schedule["cron"])
