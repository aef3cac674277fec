"""Pipeline runs at the same time against one tracking store and one Prefect server."""

import contextvars
import os
import subprocess
import sys
import threading

import mlflow
import pytest
from prefect import flow, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, TaskRunFilter, TaskRunFilterFlowRunId
from prefect.concurrency.sync import concurrency
from prefect.settings import PREFECT_API_URL

from pipeline import registry, tracking
from tasks.registry import promote_task, registry_lock
from tests.conftest import LEARNS
from tests.integration.conftest import write_config

MODEL = "test-sketch-classifier"


def test_two_runs_at_once_complete_and_leave_the_registry_consistent(tmp_path, tracking_db):
    config = write_config(tmp_path, tracking_uri=f"sqlite:///{tracking_db}", architectures=("lstm", "gru"), **LEARNS)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # both runs report to this session's Prefect server
        "PREFECT_HOME": str(tmp_path / "prefect-home"),  # shared: the data stages' cache locks live here
    }
    runs = {}
    for name, architectures in (("a", "lstm,gru"), ("b", "simple_rnn,wavenet")):
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - closed below
        command = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--architectures", architectures]
        runs[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env), log)
    for name, (process, log) in runs.items():
        process.wait(timeout=600)
        log.close()
        assert process.returncode == 0, (tmp_path / f"{name}.log").read_text()[-4000:]

    store = f"sqlite:///{tracking_db}"
    client = mlflow.MlflowClient(store, registry_uri=store)  # not the registry an earlier test pointed MLflow at
    experiment = client.get_experiment_by_name("tests")
    all_runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    children = [
        tuple(sorted(r.data.tags["architecture"] for r in all_runs if r.data.tags.get("mlflow.parentRunId") == parent))
        for parent in (p.info.run_id for p in parents)
    ]
    assert sorted(children) == [("gru", "lstm"), ("simple_rnn", "wavenet")]

    # versions numbered 1..4 once each, every one from a child run of these two pipeline runs
    versions = client.search_model_versions(f"name = '{MODEL}'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    child_ids = {r.info.run_id for r in all_runs if "mlflow.parentRunId" in r.data.tags}
    assert {v.run_id for v in versions} == child_ids
    assert all(v.tags.get("architecture") and v.tags.get("dataset_fingerprint") for v in versions)

    # one champion; the runs promoted one after the other, so exactly one found no champion
    champion = registry.alias_version(tracking.client_for(f"sqlite:///{tracking_db}"), MODEL, registry.CHAMPION)
    assert champion in {str(v.version) for v in versions}
    verdicts = [v for v in versions if "promotion_verdict" in v.tags]
    assert len(verdicts) == 2
    assert sorted(v.tags["promotion_compared_to"] == "none" for v in verdicts) == [False, True]
    history = registry.champion_history(client, MODEL)
    assert history[-1] == champion and len(history) == len(set(history))

    # the data stages ran once: the run that came second waited on the cache lock and read the result
    flow_run_names = [p.info.run_name for p in parents]
    with get_client(sync_client=True) as prefect:
        flow_runs = prefect.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=flow_run_names)))
        assert len(flow_runs) == 2 and all(f.state.is_completed() for f in flow_runs)
        task_runs = prefect.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[f.id for f in flow_runs]))
        )
    for stage in ("ingest", "validate", "preprocess"):
        states = sorted(t.state.name for t in task_runs if t.name.startswith(f"{stage}-"))
        assert states == ["Cached", "Completed"], (stage, states)


def test_promotion_waits_while_another_run_holds_the_registry(champion_store, tiny_features):
    settings, _ = champion_store
    client = mlflow.MlflowClient(settings.resolved_tracking_uri, registry_uri=settings.resolved_tracking_uri)
    registered = client.get_model_version(settings.registered_model_name, "1")
    candidate = registry.RegisteredVersion(settings.registered_model_name, "1", "gru", registered.run_id, 0.5)

    @flow
    def promote_only():
        return promote_task(settings, [candidate], tiny_features)

    outcome = {}
    with concurrency(registry_lock(settings.registered_model_name), occupy=1, strict=True):  # "another run"
        # in this test's Prefect settings (a new thread would otherwise start from the global ones)
        context = contextvars.copy_context()
        promoting = threading.Thread(
            target=context.run, args=(lambda: outcome.setdefault("decision", promote_only()),), daemon=True
        )
        promoting.start()
        promoting.join(timeout=8)
        assert promoting.is_alive(), "the gate ran while another run held the registry"
        assert "promotion_verdict" not in client.get_model_version(settings.registered_model_name, "1").tags
    promoting.join(timeout=120)
    assert outcome["decision"].alias == registry.CHAMPION
    assert client.get_model_version(settings.registered_model_name, "1").tags["promotion_verdict"] == "champion"


@pytest.mark.slow  # two pipeline runs, one of them killed: about a minute
def test_a_run_killed_while_it_holds_a_stage_lock_does_not_block_the_next(tmp_path, tracking_db):
    """``kill -9`` of a run while it ingests leaves its lock file behind; the same command again takes the
    stage over (its holder is gone) and completes, instead of waiting on the lock forever."""
    import signal
    import time

    config = write_config(tmp_path, tracking_uri=f"sqlite:///{tracking_db}", architectures=("lstm",),
                          synthetic_per_split={"train": 1500, "valid": 300, "test": 300})  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home")}
    command = [sys.executable, "-m", "flows.cli", "run", "--config", config, "--epochs", "1"]
    locks = tmp_path / "prefect-home" / "locks"
    killed = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(locks.glob("ingest-*.lock")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    held = list(locks.glob("ingest-*.lock"))
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert held and held[0].exists(), "the run was not caught holding its ingest lock"
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "promoted:" in again.stdout
    assert not list(locks.glob("*.lock"))
