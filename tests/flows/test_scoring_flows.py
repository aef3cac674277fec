"""score -> monitor -> retrain on a real Prefect server and MLflow store, with a model the training flow
registered (and so with its reference profile)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from flows.training_pipeline import training_pipeline
from pipeline import registry, tracking
from pipeline.quickdraw_formats import write_ndjson
from pipeline.scoring.profile import REFERENCE_DIR, REFERENCE_TABLE
from pipeline.strokes import write_sketchrnn_npz
from pipeline.synthetic import draw_sketch
from tests.conftest import LEARNS, tiny_settings, write_settings_file

CLASSES = ["circle", "square", "triangle", "star", "spiral", "zigzag", "arrow", "house"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    """A champion trained and registered by the training flow (640 test sketches in its reference)."""
    root = tmp_path_factory.mktemp("scoring")
    shutil.copy(mlflow_template, root / "mlflow.db")
    settings = tiny_settings(
        root / "work",
        root / "mlflow.db",
        num_classes=8,
        synthetic_per_split={"train": 100, "valid": 20, "test": 80},
        **LEARNS,
    )
    config = write_settings_file(settings, root / "settings.yaml")
    result = training_pipeline(config_file=config)
    assert result.promoted_alias == "champion"
    return settings, config, root


def _batch(folder: Path, seed: int, transform=None, classes=CLASSES, count=640) -> Path:
    """Write ``count`` fresh synthetic sketches (a class per file, as sketch-rnn files) into ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in classes:
        sketches = [draw_sketch(name, rng) for _ in range(count // len(classes))]
        if transform is not None:
            sketches = [transform(s) for s in sketches]
        write_sketchrnn_npz(folder / f"{name}.npz", {"test": sketches})
    return folder


def _score(config: str, inputs: list[str], output: Path, *extra: str) -> None:
    main(["score", "--config", config, "--output", str(output), *extra, *inputs])


def _monitor(config: str, scores: Path, *extra: str) -> dict:
    main(["monitor", "--config", config, "--scores", str(scores), *extra])
    return json.loads(scores.with_name(scores.name.removesuffix(".parquet") + ".drift.json").read_text())


def test_registration_keeps_a_reference_profile(trained):
    settings, _, root = trained
    client = tracking.client_for(settings.resolved_tracking_uri)
    version = client.get_model_version(settings.registered_model_name, "1")
    local = Path(client.download_artifacts(version.run_id, f"{REFERENCE_DIR}/{REFERENCE_TABLE}", str(root / "ref")))
    reference = pd.read_parquet(local)
    assert len(reference) == 640  # the whole test split: fewer than reference_sample
    assert {"points", "aspect", "pen_up_share", "predicted_class", "confidence", "embedding_0"} <= set(reference)
    assert set(reference["predicted_class"]) <= set(CLASSES)
    assert (reference["format"] == "simplified").all()


def test_score_writes_every_record_as_a_row_or_in_quarantine(trained, tmp_path, capsys):
    settings, config, _ = trained
    folder = _batch(tmp_path / "batch", seed=11, count=40)
    bad = write_ndjson(tmp_path / "batch" / "mixed.ndjson", "circle", [draw_sketch("circle", np.random.default_rng(2))])
    with open(bad, "a", encoding="utf-8") as sink:
        sink.write("{broken\n")
        sink.write(json.dumps({"drawing": [[[0, 1e6], [0, 0]]]}) + "\n")  # a move no training sketch had
    out = tmp_path / "scores.parquet"
    _score(config, [str(folder)], out, "--top-k", "2")
    printed = capsys.readouterr().out
    table = pq.read_table(out).to_pandas()
    quarantine = pd.read_csv(out.with_name("scores.quarantine.csv"))
    assert len(table) == 41 and len(quarantine) == 2  # records in = scored + quarantined
    assert "scored 41 of 43 sketches" in printed and "2 quarantined" in printed
    assert sorted(quarantine["reason"]) == ["moves further than training allowed", "not JSON"]
    assert table["model_name"].astype(str).unique().tolist() == [settings.registered_model_name]
    assert table["model_version"].astype(str).unique().tolist() == ["1"]
    tops = zip(table["top_classes"], table["predicted_class"], strict=True)
    assert all(len(top) == 2 and top[0] == first for top, first in tops)
    assert np.allclose(table["confidence"], [p[0] for p in table["top_probabilities"]])
    assert all(p[0] >= p[1] for p in table["top_probabilities"])
    assert table.loc[table["record"] == "line 1", "key_id"].tolist() == ["1"]
    assert {f"embedding_{i}" for i in range(8)} <= set(table)  # an 8-unit LSTM: 8 components
    # the same sketches through predict's path give the same top class
    from pipeline.serving import load_classifier
    from pipeline.strokes import load_sketchrnn_npz

    sketches = load_sketchrnn_npz(folder / "star.npz")["test"]
    expected = load_classifier(settings).top_classes(sketches)
    got = table[table["source"].astype(str).str.endswith("star.npz")]["predicted_class"].tolist()
    assert got == expected
    client = tracking.client_for(settings.resolved_tracking_uri)
    run = client.get_run(printed.split("MLflow run ")[1].split()[0])
    assert run.data.tags["model_version"] == "1" and run.data.metrics["scored"] == 41
    assert run.data.metrics["quarantined"] == 2


def test_score_refuses_bad_arguments_in_one_line(trained, tmp_path, capsys):
    _, config, _ = trained
    folder = _batch(tmp_path / "b", seed=1, count=4)
    for argv, message in (
        ([str(folder)], "--output: "),
        (["--model-uri", "runs:/abc/model", str(folder)], "--model-uri: "),
        (["--model-uri", "models:/test-sketch-classifier/9", str(folder)], "no such registered version"),
        ([str(tmp_path / "missing.npz")], "missing.npz"),
    ):
        output = tmp_path / ("scores.csv" if argv[0] == str(folder) else "s.parquet")
        with pytest.raises(SystemExit) as stopped:
            _score(config, argv, output)
        assert stopped.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("seed", [21, 22, 23])
def test_held_out_sketches_of_the_same_kind_raise_no_alarm(trained, tmp_path, seed):
    _, config, _ = trained
    out = tmp_path / "scores.parquet"
    _score(config, [str(_batch(tmp_path / "held-out", seed))], out)
    summary = _monitor(config, out)
    assert not summary["drift_detected"], summary["drifted_columns"]
    assert summary["drift_share"] < 0.2


def _turned(sketch: np.ndarray) -> np.ndarray:
    return np.column_stack([-sketch[:, 1], sketch[:, 0], sketch[:, 2]]).astype(np.int16)


@pytest.mark.parametrize(
    ("shift", "moved"),
    [
        ("rotated", {"width", "height"}),
        ("class mix", {"predicted_class"}),
        ("raw", {"format"}),
    ],
)
def test_shifted_batches_are_found_and_the_moved_columns_named(trained, tmp_path, shift, moved):
    _, config, _ = trained
    out = tmp_path / "scores.parquet"
    if shift == "rotated":
        inputs = [str(_batch(tmp_path / "turned", 31, transform=_turned))]
    elif shift == "class mix":
        inputs = [str(_batch(tmp_path / "two", 32, classes=["spiral", "arrow"]))]
    else:  # raw drawings in device coordinates, with times, scored by a model trained on simplified ones
        rng = np.random.default_rng(33)
        sketches = [draw_sketch(CLASSES[i % 8], rng).astype(np.float64) * [3.1, 3.1, 1] for i in range(640)]
        inputs = [str(write_ndjson(tmp_path / "raw.ndjson", "any", sketches, raw=True))]
    _score(config, inputs, out)
    summary = _monitor(config, out)
    assert summary["drift_detected"], summary
    assert moved <= set(summary["drifted_columns"])
    if shift == "raw":
        assert "duration_s" not in summary["columns"]  # the reference has no times: not compared


def test_drift_starts_the_training_deployment(trained, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    from flows.deployment import scheduled_deployment

    _, config, _ = trained
    deployment_id = scheduled_deployment("0 3 * * *", config_file=config).apply()
    out = tmp_path / "scores.parquet"
    _score(config, [str(_batch(tmp_path / "turned", 41, transform=_turned))], out)
    new_data = str(tmp_path / "new-data")
    _monitor(config, out, "--retrain-on-drift", "--retrain-data-dir", new_data)
    printed = capsys.readouterr().out
    assert "DRIFT DETECTED" in printed and "retraining: started flow run" in printed
    flow_run_id = printed.split("started flow run ")[1].split()[0]

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    import asyncio

    flow_run = asyncio.run(read())
    assert str(flow_run.deployment_id) == str(deployment_id)
    assert flow_run.parameters["overrides"] == {"data_dir": new_data}
    assert "retrain-on-drift" in flow_run.tags


def test_monitor_without_drift_starts_nothing_and_refuses_what_it_cannot_read(trained, tmp_path, capsys):
    _, config, _ = trained
    out = tmp_path / "scores.parquet"
    _score(config, [str(_batch(tmp_path / "same", 51))], out)
    _monitor(config, out, "--retrain-on-drift")
    assert "retraining" not in capsys.readouterr().out
    (tmp_path / "not.parquet").write_text("x")
    with pytest.raises(SystemExit) as stopped:
        _monitor(config, tmp_path / "not.parquet")
    assert stopped.value.code == 2 and "--scores: " in capsys.readouterr().err


def test_a_version_without_reference_cannot_be_monitored(trained, tmp_path, capsys):
    settings, config, _ = trained
    client = tracking.client_for(settings.resolved_tracking_uri)
    scores = tmp_path / "scores.parquet"
    _score(config, [str(_batch(tmp_path / "b", 61, count=8))], scores)
    registered = registry.model_source(client, f"models:/{settings.registered_model_name}/1")
    run = client.create_run(client.get_experiment_by_name(settings.experiment_name).experiment_id)
    other = client.create_model_version(settings.registered_model_name, registered, run.info.run_id)
    with pytest.raises(SystemExit) as stopped:
        _monitor(config, scores, "--model-uri", f"models:/{settings.registered_model_name}/{other.version}")
    assert stopped.value.code == 2 and "has no reference profile" in capsys.readouterr().err


def test_the_scheduled_monitoring_flow_scores_the_inbox_then_compares(trained, tmp_path):
    from flows.scoring import monitoring_pipeline

    _, config, _ = trained
    output = tmp_path / "scores" / "latest.parquet"  # its folder is made
    summary = monitoring_pipeline(inputs=[str(_batch(tmp_path / "inbox", 71))], output=str(output), config_file=config)
    assert pq.read_metadata(output).num_rows == 640
    assert not summary.drift_detected and summary.current_rows == 640
    assert json.loads(output.with_name("latest.drift.json").read_text())["drift_share"] == summary.drift_share


@pytest.mark.slow
def test_parts_score_alike_on_a_local_dask_cluster(trained, tmp_path):
    _, config, _ = trained
    folder = _batch(tmp_path / "batch", 81, count=160)
    threads, dask = tmp_path / "threads.parquet", tmp_path / "dask.parquet"
    _score(config, [str(folder)], threads, "--parts", "3")
    _score(config, [str(folder)], dask, "--parts", "3", "--task-runner", "dask")
    by_threads, by_dask = pq.read_table(threads).to_pandas(), pq.read_table(dask).to_pandas()
    assert len(by_dask) == 160 and by_dask["record"].tolist() == by_threads["record"].tolist()
    assert by_dask["predicted_class"].tolist() == by_threads["predicted_class"].tolist()
    np.testing.assert_allclose(by_dask["confidence"], by_threads["confidence"], atol=1e-5)
