"""The model registry against a real (SQLite) MLflow store: versions, aliases, champion history."""

import keras
import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
from mlflow.models import Model

from pipeline import registry, tracking
from pipeline.features import pad_batch
from pipeline.models import build_model
from pipeline.promotion import PromotionDecision
from pipeline.training import compile_model


@pytest.fixture
def store(tracking_db, tmp_path):
    client = tracking.client_for(f"sqlite:///{tracking_db}")
    return client, tracking.ensure_experiment(client, "tests", (tmp_path / "artifacts").as_uri())


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.keras"
    compile_model(build_model("lstm", 3, {"units": 4, "num_layers": 1}), 1e-3, 1.0).save(path)
    return path


def _register(store, saved_model, accuracy: float, name: str = "m") -> registry.RegisteredVersion:
    client, experiment_id = store
    parent = tracking.start_parent_run(client, experiment_id, "p", {}, {})
    run_id = tracking.start_child_run(client, experiment_id, parent, "lstm", {})
    return registry.log_and_register_model(
        client,
        run_id,
        keras.saving.load_model(saved_model),
        name,
        metadata={"classes": ["a", "b", "c"], "scale": 1.0, "max_len": 10},
        tags={"architecture": "lstm", "dataset_fingerprint": "f" * 64, "test_accuracy": str(accuracy)},
    )


@pytest.mark.parametrize("by", ["version", "alias"])
def test_versions_are_loadable_with_signature_and_metadata(store, saved_model, tmp_path, by):
    client, _ = store
    version = _register(store, saved_model, 0.6)
    registry.set_champion(client, "m", version.version)
    uri = f"models:/m/{version.version}" if by == "version" else "models:/m@champion"
    local = registry.download_model(client, uri, tmp_path / "model")
    info = Model.load(str(local / "MLmodel"))
    assert info.metadata["classes"] == ["a", "b", "c"]
    assert info.signature.inputs.input_names() == ["strokes"] and info.signature.params.params[0].name == "k"
    assert info.flavors["python_function"]["loader_module"] == "pipeline.pyfunc"
    model = mlflow.keras.load_model(str(local))
    assert model.predict(np.ones((2, 5, 3), np.float32), verbose=0).shape == (2, 3)
    served = mlflow.pyfunc.load_model(str(local)).predict({"strokes": [[[1, 2, 0]], [[3, 1, 0], [2, 2, 1]]]}, {"k": 2})
    assert list(served.columns) == ["class", "probability", "top_classes", "top_probabilities"]
    assert served["top_classes"].map(len).tolist() == [2, 2] and set(served["class"]) <= {"a", "b", "c"}


def test_a_retried_registration_finds_the_version_by_run_id(store, saved_model):
    client, _ = store
    version = _register(store, saved_model, 0.6)
    assert registry.find_registered_version(client, "m", version.run_id) == version
    assert registry.find_registered_version(client, "m", "no-such-run") is None


def test_manual_promotion_and_rollback(store, saved_model):
    client, _ = store
    a, b = _register(store, saved_model, 0.6), _register(store, saved_model, 0.5)
    registry.set_champion(client, "m", a.version)
    registry.set_champion(client, "m", b.version)
    registry.set_champion(client, "m", b.version)  # again: no second entry to roll back onto
    assert registry.alias_version(client, "m", "champion") == b.version
    assert registry.champion_history(client, "m") == [a.version, b.version]
    assert registry.rollback_champion(client, "m") == a.version
    assert registry.alias_version(client, "m", "champion") == a.version
    with pytest.raises(ValueError, match="no earlier champion"):
        registry.rollback_champion(client, "m")
    assert registry.alias_version(client, "m", "champion") == a.version


def test_unknown_version_changes_nothing(store, saved_model):
    client, _ = store
    a = _register(store, saved_model, 0.6)
    registry.set_champion(client, "m", a.version)
    with pytest.raises(mlflow.exceptions.MlflowException):
        registry.set_champion(client, "m", "99")
    assert registry.alias_version(client, "m", "champion") == a.version
    assert registry.champion_history(client, "m") == [a.version]


def test_applying_a_decision_moves_the_right_alias_and_tags_the_candidate(store, saved_model):
    client, _ = store
    a, b = _register(store, saved_model, 0.6), _register(store, saved_model, 0.7)
    first = PromotionDecision(a.version, 0.6, None, None, None, "champion", "no champion yet", "t/test")
    registry.apply_promotion(client, "m", first)
    losing = PromotionDecision(b.version, 0.7, a.version, 0.6, 0.2, "challenger", "not significant", "t/test")
    registry.apply_promotion(client, "m", losing)
    assert registry.alias_version(client, "m", "champion") == a.version
    assert registry.alias_version(client, "m", "challenger") == b.version
    tags = client.get_model_version("m", b.version).tags
    assert (tags["promotion_verdict"], tags["promotion_compared_to"], tags["promotion_p_value"]) == (
        "challenger",
        a.version,
        "0.2",
    )


def test_without_a_champion_the_reason_says_why_and_what_to_do(store, saved_model, tmp_path, capsys):
    from flows.cli import main

    client, _ = store
    nothing_yet = "m has no registered version yet (train one with `sketchpipe run`)"
    assert registry.no_champion_reason(client, "m") == nothing_yet
    kept_out = _register(store, saved_model, 0.3)
    why = "no champion yet, but accuracy 0.3000 against the majority-class rate 0.3400 is not above it"
    registry.apply_promotion(
        client, "m", PromotionDecision(kept_out.version, 0.3, None, None, 0.7, "challenger", why, "t/test")
    )
    reason = registry.no_champion_reason(client, "m")
    assert reason == (
        f"m has no champion: the promotion gate kept version {kept_out.version} out ({why}); give --model-uri "
        f"models:/m/{kept_out.version}, or make it the champion: sketchpipe promote --version {kept_out.version}"
    )
    # what `predict` says, in one line, instead of MLflow's "alias champion not found"
    (tmp_path / "s.json").write_text("[[1, 2, 0], [3, 4, 1]]")
    (tmp_path / "c.yaml").write_text(f"registered_model_name: m\nwork_dir: {tmp_path / 'work'}\n")
    uri = client.tracking_uri
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--config", str(tmp_path / "c.yaml"), "--tracking-uri", uri, str(tmp_path / "s.json")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"sketchpipe: error: {reason}"
    with pytest.raises(SystemExit) as stopped:  # and `serve-model`, before it starts a server
        main(["serve-model", "--config", str(tmp_path / "c.yaml"), "--tracking-uri", uri])
    assert stopped.value.code == 2 and capsys.readouterr().err.strip() == f"sketchpipe: error: {reason}"
    registry.set_champion(client, "m", kept_out.version)
    assert registry.no_champion_reason(client, "m") is None


def test_promotions_at_the_same_time_lose_no_history_entry(store):
    import threading

    client, _ = store
    client.create_registered_model("h")
    versions = [client.create_model_version("h", source=f"file:///nowhere/{i}").version for i in range(50)]
    halves = [versions[:25], versions[25:]]
    start = threading.Barrier(2)

    def promote(own: list) -> None:
        start.wait()
        for version in own:  # never its own previous version twice in a row: each call adds an entry
            registry.set_champion(client, "h", str(version))

    threads = [threading.Thread(target=promote, args=(half,)) for half in halves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = registry.champion_history(client, "h")
    assert sorted(history, key=int) == [str(v) for v in versions]  # all 50, none overwritten
    assert [v for v in history if int(v) <= 25] == [str(v) for v in versions[:25]]  # each thread's in order


def test_the_requirement_scan_runs_once_in_the_background():
    scan = registry.warm_model_logging()
    assert scan is not None and scan is registry.warm_model_logging()  # once per process
    scan.join(timeout=60)
    assert not scan.is_alive()


def test_a_model_that_draws_the_sketch_serves_what_it_predicts(store, tmp_path):
    # the raster branch (its picture drawn inside the model) survives logging, the registry and pyfunc
    client, _ = store
    hyperparameters = {"filters": 4, "dilation_rates": [1], "positions": True, "raster_size": 8, "raster_filters": 2}
    path = tmp_path / "raster.keras"
    compile_model(build_model("wavenet", 3, hyperparameters), 1e-3, 1.0).save(path)
    version = _register(store, path, 0.6, name="raster")
    local = registry.download_model(client, f"models:/raster/{version.version}", tmp_path / "model")
    sketches = [[[1, 2, 0], [0, 3, 1]], [[3, 1, 0], [2, 2, 0], [-1, 4, 1]]]
    served = mlflow.pyfunc.load_model(str(local)).predict({"strokes": sketches}, {"k": 3})
    expected = keras.saving.load_model(path).predict(pad_batch([np.array(s, np.float32) for s in sketches]), verbose=0)
    order = np.argsort(-expected, axis=1)
    assert served["top_classes"].tolist() == [[["a", "b", "c"][i] for i in row] for row in order]
    np.testing.assert_allclose(np.stack(served["top_probabilities"]), np.take_along_axis(expected, order, 1), atol=1e-5)
