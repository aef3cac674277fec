"""The promotion gate against a real registry: a trained model against untrained ones, on one test set."""

import dataclasses

import keras
import numpy as np
import pytest

from pipeline import registry, tracking
from pipeline.dataset import open_split
from pipeline.features import read_spec, record_indices
from pipeline.models import build_model
from pipeline.serving import export_model, model_metadata
from pipeline.stages.registry import promote
from pipeline.stages.training import TEST_TOP_CLASSES, training_config
from pipeline.training import train_model
from tests.conftest import tiny_settings


@pytest.fixture(scope="module")
def trained_model(tiny_features, dataset_settings, tmp_path_factory):
    # big enough to learn the tiny set (about 0.45 test accuracy on 4 classes; untrained: about 0.25)
    config = dataclasses.replace(
        training_config(dataset_settings.replace(epochs=8, early_stopping_patience=20, lr_patience=20), "conv_lstm"),
        model_params={"filters": [16], "kernel_size": 3, "units": 16, "num_layers": 1},
    )
    trained = train_model(config, tiny_features, tmp_path_factory.mktemp("trained"))
    return keras.saving.load_model(trained.model_path)


@pytest.fixture
def gate(tiny_features, tmp_path, tracking_db):
    settings = tiny_settings(tmp_path / "work", tracking_db)
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, settings.experiment_name, settings.artifact_location)
    parent = tracking.start_parent_run(client, experiment_id, "gate", {}, {})
    spec = read_spec(tiny_features)
    test = open_split(spec.dataset_dir, "test")
    labels = np.asarray(test.labels)[record_indices(tiny_features, "test")]

    def register(model, accuracy: float) -> registry.RegisteredVersion:
        run_id = tracking.start_child_run(client, experiment_id, parent, "m", {})
        return registry.log_and_register_model(
            client,
            run_id,
            export_model(model, spec.scale),
            settings.registered_model_name,
            metadata=model_metadata(spec, settings.max_abs_delta),
            tags={"architecture": "x", "test_accuracy": str(accuracy)},
        )

    def gate_promote(candidates):
        return promote(settings, candidates, tiny_features)

    def log_perfect_evaluation(version: registry.RegisteredVersion) -> None:
        """Log test top classes that get every sketch right, as a perfect model's evaluation would."""
        folder = tmp_path / f"evaluation-{version.version}"
        folder.mkdir()
        others = (labels[:, None] + np.arange(1, 3)) % len(spec.classes)
        np.save(folder / TEST_TOP_CLASSES, np.column_stack([labels, others]).astype(np.int32))
        tracking.log_artifacts(client, version.run_id, folder, "evaluation")

    return settings, client, register, gate_promote, log_perfect_evaluation


def _untrained(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_model("lstm", 4, {"units": 4, "num_layers": 1})


def test_champion_moves_only_to_a_significantly_better_version(gate, trained_model):
    settings, client, register, promote, _ = gate
    name = settings.registered_model_name
    weak = register(_untrained(1), 0.25)
    first = promote([weak])  # an untrained first model is no better than always answering one class
    assert (first.alias, first.moves_champion) == ("challenger", False), first.reason
    assert "no champion yet, but accuracy 0.2500 against the majority-class rate" in first.reason
    assert registry.alias_version(client, name, "champion") is None
    assert registry.alias_version(client, name, "challenger") == weak.version
    registry.set_champion(client, name, weak.version)  # by hand, as `sketchpipe promote --version` does

    strong = register(trained_model, 0.9)
    decision = promote([strong])
    assert decision.alias == "champion", decision.reason
    assert decision.champion_version == weak.version and decision.p_value < 0.05
    assert decision.candidate_accuracy > decision.champion_accuracy
    assert registry.alias_version(client, name, "champion") == strong.version

    # a version whose own logged score claims more, but is worse on this test set, is only a challenger
    pretender = register(_untrained(2), 0.99)
    decision = promote([pretender])
    assert decision.alias == "challenger"
    assert decision.candidate_accuracy < decision.champion_accuracy
    assert registry.alias_version(client, name, "champion") == strong.version
    assert registry.alias_version(client, name, "challenger") == pretender.version
    tags = client.get_model_version(name, pretender.version).tags
    assert tags["promotion_verdict"] == "challenger"
    assert tags["promotion_compared_to"] == strong.version
    assert float(tags["promotion_p_value"]) < 0.05


def test_the_champion_again_changes_nothing(gate):
    settings, client, register, promote, _ = gate
    version = register(_untrained(3), 0.5)
    registry.set_champion(client, settings.registered_model_name, version.version)
    decision = promote([version])
    assert (decision.alias, decision.reason) == ("champion", "already the champion")
    assert registry.alias_version(client, settings.registered_model_name, "challenger") is None


def test_a_candidate_is_judged_by_its_logged_predictions_and_only_the_champion_is_scored(gate):
    settings, client, register, promote, log_perfect_evaluation = gate
    name = settings.registered_model_name
    champion = register(_untrained(4), 0.25)
    registry.set_champion(client, name, champion.version)
    # two untrained models: scored through serving, the newcomer is no significant improvement
    candidate = register(_untrained(5), 0.3)
    scored = promote([candidate])
    assert scored.alias == "challenger"
    assert scored.candidate_accuracy < 0.6
    # once its run holds an evaluation that got every sketch right, the gate judges it by that
    # (rather than scoring the served model again) and scores only the champion
    log_perfect_evaluation(candidate)
    told = promote([candidate])
    assert (told.alias, told.candidate_accuracy) == ("champion", 1.0)
    assert told.champion_accuracy == pytest.approx(scored.champion_accuracy)
    assert registry.alias_version(client, name, "champion") == candidate.version


@keras.saving.register_keras_serializable(package="tests")
class _KnownOnlyHere(keras.layers.Layer):
    """A layer that a fresh process cannot find: what a model trained with a class of its own saves."""

    def call(self, inputs):
        return inputs


def test_a_version_that_does_not_load_where_it_is_served_never_becomes_champion(gate):
    settings, client, register, promote, log_perfect_evaluation = gate
    inputs = keras.Input((None, 3))
    model = keras.Model(inputs, _untrained(6)(_KnownOnlyHere()(inputs)))
    version = register(model, 0.9)
    log_perfect_evaluation(version)  # the best score there is: only loading can keep it out
    decision = promote([version])
    assert decision.alias == "rejected" and not decision.moves_champion
    assert decision.reason.startswith(f"models:/{settings.registered_model_name}/{version.version} does not load as")
    assert "_KnownOnlyHere" in decision.reason, decision.reason
    name = settings.registered_model_name
    assert registry.alias_version(client, name, "champion") is None
    assert registry.alias_version(client, name, "challenger") is None
    assert client.get_model_version(name, version.version).tags["promotion_verdict"] == "rejected"
    assert "tests>_KnownOnlyHere" in keras.saving.get_custom_objects()  # the registry is as it was


@pytest.mark.parametrize("tagged", [True, False], ids=["label-space-tag", "read-from-MLmodel"])
def test_the_gate_never_compares_across_label_spaces(gate, tiny_features, tagged):
    settings, client, register, promote, _ = gate
    name = settings.registered_model_name
    spec = read_spec(tiny_features)
    other = ["cat", "dog", "fish", "bird"]  # as many classes as this run's, but others
    run_id = client.create_run(client.get_experiment_by_name(settings.experiment_name).experiment_id).info.run_id
    tags = {"architecture": "x", "test_accuracy": "0.9"}
    if tagged:
        tags |= {registry.LABEL_SPACE_TAG: registry.label_space(other), "num_classes": "4"}
    champion = registry.log_and_register_model(
        client, run_id, export_model(_untrained(7), spec.scale), name,
        metadata={**model_metadata(spec, settings.max_abs_delta), "classes": other}, tags=tags,
    )  # fmt: skip
    registry.set_champion(client, name, champion.version)
    candidate = register(_untrained(8), 0.5)
    with pytest.raises(registry.LabelSpaceError, match=r"^registered_model_name: the champion of .* on 4 classes, "):
        promote([candidate])
    assert registry.alias_version(client, name, "champion") == champion.version
    # the same champion classes in the same order are the same label space
    registry.check_label_space(client, name, other)
