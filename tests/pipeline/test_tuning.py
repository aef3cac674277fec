"""Tuning: an Optuna study kept in a real MLflow store, trials as nested runs, pruning, resuming, export."""

import mlflow
import pytest

from pipeline import tracking, tuning
from pipeline.config import load_settings
from tests.conftest import tiny_settings


@pytest.fixture
def tune_settings(tmp_path, tracking_db, dataset_settings):
    previous = mlflow.get_tracking_uri()
    settings = tiny_settings(dataset_settings.work_dir, tracking_db, epochs=3, models={"gru": {"units": 8}})
    yield settings
    mlflow.set_tracking_uri(previous)  # the study's storage sets the process's tracking URI


def _run(settings, ref, features, count):
    study = tuning.open_study(ref, seed_offset=len(tuning.open_study(ref).trials))
    return [tuning.run_trial(settings, ref, tuning.ask_trial(study, "gru"), features) for _ in range(count)]


def test_trials_are_nested_runs_hopeless_ones_are_pruned_and_the_study_resumes(tune_settings, tiny_features, tmp_path):
    settings = tune_settings
    ref = tuning.prepare_study(settings, "gru", "study-a", startup_trials=1, warmup_epochs=0)
    first = _run(settings, ref, tiny_features, 5)
    assert [t["number"] for t in first] == [0, 1, 2, 3, 4]
    assert len({t["params"]["learning_rate"] for t in first}) == 5  # every trial drew its own parameters
    states = [t["state"] for t in first]
    assert "PRUNED" in states and "COMPLETE" in states, states

    client = tracking.client_for(settings.resolved_tracking_uri)
    study_run = client.search_runs([ref.experiment_id], "tags.mlflow.runName = 'study-a'")
    assert len(study_run) == 1
    trials = client.search_runs([ref.experiment_id], f"tags.mlflow.parentRunId = '{study_run[0].info.run_id}'")
    assert sorted(r.info.run_name for r in trials) == [f"gru-trial-{n}" for n in range(5)]
    by_name = {r.info.run_name: r for r in trials}
    for trial in first:
        run = by_name[f"gru-trial-{trial['number']}"]
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[trial["state"]]
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial["params"]["learning_rate"])
        epochs = len(client.get_metric_history(run.info.run_id, "val_loss"))
        assert 1 <= epochs <= 3 and (trial["state"] == "PRUNED" or epochs == 3)

    # a stopped tune: one trial handed out and never run; resuming marks it failed, numbering goes on
    tuning.ask_trial(tuning.open_study(ref), "gru")
    again = tuning.prepare_study(settings, "gru", "study-a", startup_trials=1, warmup_epochs=0)
    assert again.experiment_id == ref.experiment_id
    study = tuning.open_study(again)
    assert [t.state.name for t in study.trials].count("FAIL") == 1
    assert tuning.finished_trials(again) == 5
    more = _run(settings, again, tiny_features, 1)
    assert more[0]["number"] == 6
    assert more[0]["params"] not in [t["params"] for t in first]  # the resumed sampler is not replaying
    assert len(client.search_runs([ref.experiment_id], "tags.mlflow.runName = 'study-a'")) == 1
    assert tuning.finished_trials(again) == 6


def test_each_trial_is_shown_as_it_ends_and_the_best_is_exported_as_a_settings_file_that_run_loads(
    tune_settings, tiny_features, tmp_path, capsys
):
    settings = tune_settings.replace(progress="on")
    ref = tuning.prepare_study(settings, "gru", "study-b", startup_trials=2)
    done = _run(settings, ref, tiny_features, 2)
    best = min((t for t in done if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    # live on the terminal: a training bar per trial, then its line with the best so far
    err = capsys.readouterr().err.replace("\r", "\n")
    assert "trial 0 epoch 3/3" in err and "trial 1 epoch 3/3" in err
    lines = [line for line in err.splitlines() if line.startswith("trial ") and "val_cross_entropy" in line]
    assert [line.split()[:2] for line in lines] == [["trial", "0"], ["trial", "1"]]
    assert f"val_cross_entropy {done[1]['value']:.4f}" in lines[1]
    assert lines[1].endswith(f"(best so far: trial {best['number']}, {best['value']:.4f})")
    exported = tuning.export_best(ref, settings, tmp_path / "tuned.yaml")
    assert exported["number"] == best["number"]
    loaded = load_settings(tmp_path / "tuned.yaml", environ={})
    assert loaded.architectures == ("gru",)
    assert loaded.learning_rate == pytest.approx(best["params"]["learning_rate"])
    assert loaded.label_smoothing == pytest.approx(best["params"]["label_smoothing"])
    model = loaded.models["gru"]
    assert model["units"] == best["params"]["model_units"] and model["pooling"] == best["params"]["model_pooling"]
    assert loaded.work_dir == settings.work_dir and loaded.epochs == 3  # the data and budget it was tuned with
    client = tracking.client_for(settings.resolved_tracking_uri)
    study_run = client.get_run(exported["study_run_id"])
    assert study_run.data.metrics["best_val_cross_entropy"] == pytest.approx(best["value"])
    assert study_run.data.tags["best_trial_run_id"] == exported["run_id"]
    assert [a.path for a in client.list_artifacts(exported["study_run_id"])] == ["tuned.yaml"]


def test_the_search_space_covers_every_architecture():
    from pipeline.config import ARCHITECTURES
    from pipeline.models import MODEL_BUILDERS

    for architecture in ARCHITECTURES:
        space = tuning.search_space(architecture)
        shared = {"learning_rate", "weight_decay", "label_smoothing", "model_dropout", "model_positions"}
        assert {*shared, "model_raster_size"} <= set(space)
        # every model parameter drawn is one the builder takes
        builder = MODEL_BUILDERS[architecture].__code__.co_varnames
        drawn = {name.removeprefix("model_") for name in space if name.startswith("model_")} - {"stem"}
        assert drawn <= set(builder)
        assert "model_stem" not in space or "stem_filters" in builder


def test_a_drawn_stem_becomes_the_models_stem_filters():
    settings = load_settings(overrides={"architectures": "gru"}, environ={})
    assert tuning.settings_of({"model_stem": "48-64"}, settings, "gru").models["gru"]["stem_filters"] == [48, 64]
    assert tuning.settings_of({"model_stem": "none"}, settings, "gru").models["gru"]["stem_filters"] == []
    dilated = tuning.settings_of({"model_stem_dilations": "1-2-4-8"}, settings, "transformer").models["transformer"]
    assert dilated["stem_dilations"] == [1, 2, 4, 8]
    wavenet = tuning.settings_of({"model_dilation_rates": "1-2-4-8-16", "ema_momentum": 0.99}, settings, "wavenet")
    assert wavenet.models["wavenet"]["dilation_rates"] == [1, 2, 4, 8, 16] and wavenet.ema_momentum == 0.99
    assert wavenet.architectures == ("wavenet",)
    for drawn, halvings in (("none", []), ("1", [1]), ("1-2", [1, 2])):
        halved = tuning.settings_of({"model_halve_after": drawn}, settings, "wavenet").models["wavenet"]
        assert halved["halve_after"] == halvings
