"""The whole pipeline at the real dataset's 345 classes, as a user runs it: ``sketchpipe run`` in its own
process, with its own Prefect server and MLflow store, its peak memory measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.download import official_categories
from pipeline.quickdraw_formats import write_ndjson
from pipeline.synthetic import SHAPES, draw_sketch
from tests.conftest import TINY_MODELS

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "quickdraw-raw-345"

# Runs the CLI in this process and reports the process's own peak RSS (the Prefect server is another
# process and is not counted).
_MEASURED_CLI = """
import sys
from flows.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
# VmHWM is this program's own high-water mark: ru_maxrss keeps, across exec, the RSS of the process that
# started it (pytest's, gigabytes by the end of the suite)
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(f"peak_rss_mb {peak_kb / 1024:.0f}", file=sys.stderr)
sys.exit(code)
"""


def _run_cli(workdir: Path, args: list[str], timeout: float = 1200) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``sketchpipe ARGS`` from ``workdir`` (its own .prefect/ and mlflow/); return it and its peak RSS in MB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SKETCHPIPE_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(workdir / ".prefect")
    process = subprocess.run(
        [sys.executable, "-c", _MEASURED_CLI, *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-5000:]
    peak = next(line for line in process.stderr.splitlines() if line.startswith("peak_rss_mb"))
    print(f"sketchpipe {args[0]}: peak RSS {peak.split()[1]} MB")  # shown with -s or on failure
    return process, float(peak.split()[1])


def _config(workdir: Path, **settings) -> str:
    path = workdir / "settings.yaml"
    path.write_text(yaml.safe_dump({"models": TINY_MODELS, "batch_size": 64, "max_len": 60, **settings}))
    return str(path)


def _promoted_version(stdout: str, store: str) -> str:
    """Return the version the run's promotion line names, checking that the registry agrees with it.

    A first model becomes champion only if it beats the test set's majority-class rate significantly: a
    tiny model after one epoch on 345 classes may not, so either alias is right, if it is the one applied.
    """
    promoted = next(line for line in stdout.splitlines() if line.startswith("promoted:"))
    version, alias = promoted.split(" version ")[1].split()[0], promoted.split(" -> @")[1].split()[0]
    assert alias in ("champion", "challenger") and "no champion yet" in promoted, promoted
    assert "against the majority-class rate" in promoted, promoted
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    assert str(client.get_model_version_by_alias("quickdraw-synthetic", alias).version) == version
    return version


@pytest.mark.slow  # about a minute: the 345-class runs are the slow suite's
def test_the_whole_flow_at_345_classes_registers_promotes_and_stays_within_memory(tmp_path):
    classes = official_categories()
    rng = np.random.default_rng(0)
    shapes = list(SHAPES)
    for index, name in enumerate(classes):
        sketches = [draw_sketch(shapes[index % len(shapes)], rng) for _ in range(8)]
        write_ndjson(tmp_path / "data" / f"{name}.ndjson", name, sketches, first_key=1000 * index)
    config = _config(tmp_path, valid_share=0.1, test_share=0.2, epochs=1)
    process, peak_mb = _run_cli(
        tmp_path,
        ["run", "--config", config, "--source", "ndjson", "--data-dir", "data", "--architectures", "wavenet"],
    )
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    version = _promoted_version(process.stdout, store)
    assert f"({345 * 8} sketches, 0 quarantined)" in process.stdout
    # quiet by default: the result on stdout; no Prefect INFO line nor TensorFlow start-up line on stderr
    noise = [line for line in process.stderr.splitlines() if any(m in line for m in ("INFO", "absl", "oneDNN"))]
    assert noise == [], noise[:5]
    # TensorFlow, Prefect's client, MLflow and GX take about 1.2 GB here (1,230 MB measured at 345 classes)
    assert peak_mb < 2000, f"peak RSS {peak_mb:.0f} MB"

    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    registered = client.get_model_version("quickdraw-synthetic", version)
    run = client.get_run(registered.run_id)
    assert run.data.tags["num_classes"] == "345"
    assert run.data.tags["classes"].startswith("345 classes (all in the dataset/classes.txt artifact)")
    parent = client.get_run(run.data.tags["mlflow.parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.params["num_classes"] == "345"
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {f"evaluation/{f}" for f in ("confusion_matrix.png", "confused_pairs.png")} <= logged
    local = Path(client.download_artifacts(run.info.run_id, "evaluation", str(tmp_path / "artifacts")))
    confusion = pd.read_csv(local / "confusion_matrix.csv", index_col=0)
    assert confusion.shape == (345, 345) and list(confusion.columns) == sorted(classes)  # file-name order
    table = json.loads((local / "per_class_scores.json").read_text())
    assert table["columns"][:3] == ["class", "precision", "recall"] and len(table["data"]) == 345
    names = Path(client.download_artifacts(parent.info.run_id, "dataset/classes.txt", str(tmp_path / "parent")))
    assert names.read_text().splitlines() == sorted(classes)


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real Quick, Draw! sample not found at {REAL_DATA}")
def test_real_raw_drawings_of_345_classes_run_end_to_end(tmp_path):
    config = _config(tmp_path, epochs=1)
    process, peak_mb = _run_cli(
        tmp_path,
        ["run", "--config", config, "--source", "ndjson", "--data-dir", str(REAL_DATA),
         "--architectures", "wavenet,conv_lstm"],
    )  # fmt: skip
    _promoted_version(process.stdout, f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    dataset = next(line for line in process.stdout.splitlines() if line.startswith("dataset: "))
    sketches = int(dataset.split("(")[1].split()[0])
    assert 7000 < sketches <= 7653  # drawings the game did not recognise are skipped and counted
    assert peak_mb < 2500, f"peak RSS {peak_mb:.0f} MB"
    rows = [line.split()[0] for line in process.stdout.splitlines() if line.startswith(("wavenet ", "conv_lstm "))]
    assert sorted(rows) == ["conv_lstm", "wavenet"]


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real Quick, Draw! sample not found at {REAL_DATA}")
def test_the_real_data_profile_trains_on_real_drawings(tmp_path):
    profile = Path(__file__).resolve().parents[2] / "configs" / "quickdraw.yaml"
    process, _ = _run_cli(
        tmp_path,
        ["run", "--config", str(profile), "--source", "ndjson", "--data-dir", str(REAL_DATA), "--epochs", "6",
         "--progress", "off"],
    )  # fmt: skip
    row = next(line for line in process.stdout.splitlines() if line.startswith("wavenet "))
    accuracy = float(row.split()[1])
    assert accuracy > 10 / 345, row  # ten times chance after 6 epochs on ~14 drawings per class
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    run = client.search_runs(
        [client.get_experiment_by_name("sketchpipe").experiment_id], "tags.architecture = 'wavenet'"
    )[0]
    params = run.data.params
    assert params["label_smoothing"] == "0.1" and params["model_positions"] == "True"
    assert params["model_gated"] == "True" and params["steps_per_execution"] == "8"
    assert params["model_dilation_rates"] == "[1, 1, 1]" and params["model_halve_after"] == "[1, 2]"
    assert params["model_raster_size"] == "14"
    assert params["model_raster_filters"] == "24"
    assert params["early_stopping_patience"] == "6" and params["lr_patience"] == "2"
    assert params["augment_rotation"] == "10.0" or params["augment_rotation"] == "10"
    assert params["augment_reverse_strokes"] == "0.1" and params["augment_shuffle_strokes"] == "0.1"
    assert params["augment_point_dropout"] == "0.05"
    assert "val_cross_entropy" in run.data.metrics  # the plain cross-entropy beside the smoothed loss

    # the profile's champion (label-smoothed) serves: predict in a new process answers with class names,
    # and again from the cache (LiteRT), and mlflow.pyfunc loads it in a process that never trained
    sample = tmp_path / "one.ndjson"
    sample.write_text((REAL_DATA / "cat.ndjson").read_text().splitlines()[0] + "\n")
    argv = ["predict", "--config", str(profile), "--format", "json", str(sample)]
    answers = [json.loads(_run_cli(tmp_path, argv)[0].stdout.strip().splitlines()[-1]) for _ in range(2)]
    assert answers[0] == answers[1] and answers[0]["class"] in official_categories()
    assert list((tmp_path / "data" / "serving-cache").glob("*/model.tflite"))
    script = (
        "import mlflow.pyfunc, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/quickdraw-sketch-classifier@champion')\n"
        "print(m.predict(pd.DataFrame({'strokes': [[[3, 4, 0], [5, -2, 1]]]}))['class'][0])\n"
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"}
    loaded = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] in official_categories()


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason=f"real Quick, Draw! sample not found at {REAL_DATA}")
def test_real_drawings_at_full_length_pass_keras_cudnn_mask_check(tmp_path):
    """On a GPU, Keras's LSTM/GRU run through cuDNN, which stops training on a batch whose mask is not
    padding at the end alone (or masks a whole sketch); a CPU never runs that check. Every batch of the real
    raw drawings, uncropped, with the profile's augmentation over two epochs, passes Keras's own check."""
    import tensorflow as tf
    from keras.src.backend.tensorflow.rnn import _assert_valid_mask

    from pipeline.config import load_settings
    from pipeline.features import make_dataset
    from pipeline.ingest import ingest
    from pipeline.stages import data
    from pipeline.stages.training import training_config

    profile = Path(__file__).resolve().parents[2] / "configs" / "quickdraw.yaml"
    overrides = {"source": "ndjson", "data_dir": str(REAL_DATA), "work_dir": str(tmp_path), "max_len": 1000}
    settings = load_settings(str(profile), overrides, environ={})
    features = data.preprocess(settings, data.validate(settings, ingest(settings)))
    augmentation = training_config(settings, "lstm").augmentation
    assert augmentation is not None and augmentation.reverse_strokes > 0 and augmentation.shuffle_strokes > 0
    longest, sketches = 0, 0
    for split, epochs in (("train", 2), ("valid", 1), ("test", 1)):
        dataset = make_dataset(features, split, settings.batch_size, shuffle=True, seed=settings.seed,
                               augmentation=augmentation if split == "train" else None)  # fmt: skip
        for _ in range(epochs):
            for strokes, labels in dataset:
                _assert_valid_mask(tf.constant(np.any(strokes.numpy() != 0, axis=-1)))
                longest, sketches = max(longest, int(strokes.shape[1])), sketches + len(labels)
    assert longest > 200  # real lengths: the longest raw drawings simplify to about 300 points
    assert sketches > 2 * 4500 + 2000  # every sketch of every split went through the check
