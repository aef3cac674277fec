"""The serving contract: every model the training flow registers loads and answers in a fresh process.

One flow run trains every architecture with its real-data model options (made tiny) and with every
setting that changes what training compiles or keeps switched on at once: label smoothing (a loss class
of this project), weight decay (AdamW), a cosine schedule with warm-up, weight averaging and
augmentation. Each registered version is then loaded with ``mlflow.pyfunc.load_model`` in a new Python
process that never imports the training code, and must answer what evaluation answered.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from flows.training_pipeline import training_pipeline
from pipeline import registry, tracking
from pipeline.features import split_sketches
from tests.conftest import LEARNS, tiny_settings, write_settings_file

# trains seven architectures and converts each for LiteRT: minutes on 2 cores (make test-slow)
pytestmark = pytest.mark.slow

# the real-data profile's model options (configs/quickdraw.yaml), at a size that trains in seconds
PROFILE_MODELS = {
    "simple_rnn": {"units": 8, "num_layers": 1, "pooling": "mean", "positions": True, "bidirectional": True,
                   "activation": "relu", "raster_size": 8, "raster_filters": 4},
    "lstm": {"units": 8, "num_layers": 2, "pooling": "mean", "positions": True, "bidirectional": True,
             "raster_size": 8, "raster_filters": 4},
    "gru": {"units": 8, "num_layers": 1, "pooling": "mean", "positions": True, "stem_filters": [8], "raster_size": 0},
    "conv_lstm": {"filters": [8], "kernel_size": 3, "units": 8, "num_layers": 1, "pooling": "mean",
                  "positions": True, "bidirectional": True, "raster_size": 8, "raster_filters": 4},
    "bilstm": {"units": 6, "num_layers": 1, "pooling": "mean", "positions": True, "raster_size": 8,
               "raster_filters": 4},
    "wavenet": {"filters": 8, "kernel_size": 2, "dilation_rates": [1, 1, 1], "halve_after": [1, 2],
                "positions": True, "gated": True, "norm": True, "raster_size": 8, "raster_filters": 4},
    "transformer": {"dim": 8, "heads": 2, "num_layers": 1, "ff_dim": 16, "positions": True, "norm_first": True,
                    "stem_dilations": [1, 2], "raster_size": 8, "raster_filters": 4},
}  # fmt: skip

# every setting that changes what training compiles (loss, optimizer, schedule) or keeps (averaged weights)
SAVED_SETTINGS = {
    "label_smoothing": 0.1,
    "weight_decay": 1e-4,
    "lr_schedule": "cosine",
    "warmup_epochs": 1,
    "ema_momentum": 0.5,
    "augment_scale": 0.1,
    "augment_rotation": 10.0,
    "augment_jitter": 0.02,
    "augment_stroke_dropout": 0.1,
    "augment_reverse_strokes": 0.1,
    "augment_point_dropout": 0.05,
    "augment_shuffle_strokes": 0.1,
    "steps_per_execution": 2,
}

# runs in a process of its own: loads each version as serving does and prints its answers
_LOAD_AND_SCORE = """
import json, sys
import mlflow.pyfunc
import pandas as pd
uris, sketches = json.loads(sys.stdin.read())
out = {}
for uri in uris:
    answer = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"strokes": sketches}), params={"k": 2})
    out[uri] = {"classes": list(answer["class"]), "top": [list(t) for t in answer["top_classes"]],
                "imported_training": "pipeline.training" in sys.modules}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def contract_run(tmp_path_factory, mlflow_template):
    root = tmp_path_factory.mktemp("contract")
    shutil.copy(mlflow_template, root / "mlflow.db")
    settings = tiny_settings(
        root / "work",
        root / "mlflow.db",
        architectures=tuple(PROFILE_MODELS),
        models=PROFILE_MODELS,
        **{**LEARNS, "epochs": 2},
        **SAVED_SETTINGS,
    )
    result = training_pipeline(config_file=write_settings_file(settings, root / "settings.yaml"))
    return settings, result


def test_every_architecture_with_every_saved_setting_loads_and_answers_in_a_fresh_process(contract_run):
    settings, result = contract_run
    client = tracking.client_for(settings.resolved_tracking_uri)
    name = settings.registered_model_name
    versions = {row.architecture: row.model_version for row in result.rows}
    assert sorted(versions) == sorted(PROFILE_MODELS)
    sketches, _ = split_sketches(Path(result.features_dir), "test")
    sample = [np.asarray(s).tolist() for s in sketches[:6]]
    uris = [f"models:/{name}/{version}" for version in versions.values()]
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.resolved_tracking_uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_SCORE],
        input=json.dumps([uris, sample]),
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(settings.work_dir).parent,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    for architecture, version in versions.items():
        answer = answers[f"models:/{name}/{version}"]
        assert not answer["imported_training"], f"{architecture}: loading imported the training code"
        # the same classes as the run's own evaluation gave these sketches (its logged top classes)
        ranked = tracking.load_array_artifact(
            client, client.get_model_version(name, version).run_id, "evaluation/test_top_classes.npy"
        )
        expected = [settings_classes(result)[i] for i in ranked[: len(sample), 0]]
        assert answer["classes"] == expected, architecture
        assert all(len(top) == 2 and top[0] == cls for top, cls in zip(answer["top"], answer["classes"], strict=True))


def test_the_served_artifact_keeps_no_training_objects(contract_run, tmp_path):
    settings, result = contract_run
    client = tracking.client_for(settings.resolved_tracking_uri)
    for row in result.rows:
        local = registry.download_model(
            client, f"models:/{settings.registered_model_name}/{row.model_version}", tmp_path / row.architecture
        )
        with zipfile.ZipFile(local / "data" / "model.keras") as saved:
            config = saved.read("config.json").decode()
        # no loss, optimizer or metric anywhere in the saved configuration, nested models included
        assert not any(word in config for word in ('"loss"', '"optimizer"', "Crossentropy")), row.architecture
        assert not json.loads(config).get("compile_config"), row.architecture


def test_each_version_records_its_label_space_and_the_gate_verdict(contract_run):
    settings, result = contract_run
    client = tracking.client_for(settings.resolved_tracking_uri)
    version = client.get_model_version(settings.registered_model_name, result.promoted_version)
    assert version.tags["promotion_verdict"] == result.promoted_alias
    assert version.tags[registry.LABEL_SPACE_TAG] == registry.label_space(settings_classes(result))
    assert version.tags["num_classes"] == "4"


def settings_classes(result) -> list[str]:
    from pipeline.features import read_spec

    return read_spec(Path(result.features_dir)).classes


def test_every_architecture_predicts_from_the_cache_without_tensorflow(contract_run):
    """predict's cache converts each version for LiteRT (any shape, or a fixed one for recurrent layers),
    checked against the Keras model; the cached load answers as the Keras model does."""
    from pipeline.serving import LiteModel, lite_cached, load_classifier

    settings, result = contract_run
    sketches, _ = split_sketches(Path(result.features_dir), "test")
    sample = [np.asarray(s, np.float32) for s in sketches[:20]]
    for row in result.rows:
        uri = f"models:/{settings.registered_model_name}/{row.model_version}"
        keras_answer = load_classifier(settings, uri, lite=True).probabilities(sample)
        assert lite_cached(settings, uri), row.architecture
        cached = load_classifier(settings, uri, lite=True)
        assert isinstance(cached.model, LiteModel), row.architecture
        np.testing.assert_allclose(cached.probabilities(sample), keras_answer, atol=1e-4, err_msg=row.architecture)
