"""``sketchpipe predict`` against a registered champion."""

import json
import os

import numpy as np
import pytest

from flows.cli import main
from pipeline.features import pad_batch
from tests.integration.conftest import run_sketchpipe


def test_predict_prints_top3_per_sketch(champion_store, tmp_path, capsys):
    settings, model = champion_store
    sketch = [[12, 3, 0], [5, -8, 0], [-7, 2, 1]]
    (tmp_path / "s.json").write_text(json.dumps([sketch, sketch[:2]]))
    main(
        [
            "predict",
            "--tracking-uri",
            settings.resolved_tracking_uri,
            "--config",
            _config(settings, tmp_path),
            str(tmp_path / "s.json"),
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    expected = model.predict(pad_batch([np.asarray(sketch, np.float32)]), verbose=0)[0]
    name, scores = lines[0].split(": ", 1)
    assert name == f"{tmp_path / 's.json'}[0]"
    pairs = [item.rsplit(" ", 1) for item in scores.split(", ")]
    assert len(pairs) == 3
    classes = ["circle", "square", "triangle", "star"]
    assert [label for label, _ in pairs] == [classes[i] for i in np.argsort(-expected)[:3]]
    assert float(pairs[0][1]) == pytest.approx(expected.max(), abs=1e-3)


def test_predict_with_an_unknown_model_fails_in_one_line(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    (tmp_path / "s.json").write_text("[[1, 2, 1]]")
    with pytest.raises(SystemExit):
        main(
            [
                "predict",
                "--tracking-uri",
                settings.resolved_tracking_uri,
                "--model-uri",
                "models:/nope/7",
                str(tmp_path / "s.json"),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model-uri" in err


def test_predict_refuses_a_move_beyond_what_training_allowed_in_one_line(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    far = settings.max_abs_delta * 5
    (tmp_path / "s.json").write_text(json.dumps([[[12, 3, 0], [5, -8, 1]], [[1, 2, 0], [far, 3, 1]]]))
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "--tracking-uri", settings.resolved_tracking_uri, "--config", _config(settings, tmp_path),
              str(tmp_path / "s.json")])  # fmt: skip
    assert stopped.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        f"sketchpipe: error: {tmp_path / 's.json'}[1]: row 1 moves {far:g}, more than the model was trained on "
        f"(max_abs_delta {settings.max_abs_delta:g})"
    )


def _config(settings, tmp_path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(f"registered_model_name: {settings.registered_model_name}\n")
    return str(path)


@pytest.mark.parametrize("verbose", [False, True])
def test_predict_prints_its_answer_and_no_native_start_up_lines(champion_store, tmp_path, verbose):
    settings, _ = champion_store
    (tmp_path / "s.json").write_text(json.dumps([[12, 3, 0], [5, -8, 0], [-7, 2, 1]]))
    config = tmp_path / "c.yaml"
    config.write_text(f"registered_model_name: {settings.registered_model_name}\nwork_dir: {tmp_path / 'work'}\n")
    argv = ["predict", "--config", str(config), "--tracking-uri", settings.resolved_tracking_uri, "s.json"]
    # without --verbose, level 0 makes TensorFlow print its start-up lines (as some releases do at any
    # level) for the command to keep off the terminal; --verbose shows them with no level set
    env = None if verbose else {"TF_CPP_MIN_LOG_LEVEL": "0"}
    done = run_sketchpipe([*argv, *(["--verbose"] if verbose else [])], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 1 and done.stdout.startswith("s.json[0]: ")
    native = ("absl::InitializeLog", "oneDNN", "cudart_stub")
    logged = tmp_path / "work" / "logs" / "tensorflow.log"
    if verbose:  # shown live, as TensorFlow prints them
        assert any(marker in done.stderr for marker in native)
    else:
        assert not any(marker in done.stderr for marker in native), done.stderr
        assert any(marker in logged.read_text() for marker in native)


def test_native_lines_after_start_up_go_to_the_log_while_python_lines_stay_on_the_terminal(tmp_path):
    """Native code writes to file descriptor 2 itself, and not only while TensorFlow starts (on some CPUs
    oneDNN logs "supports DT_BOOL only on platforms with AVX-512" at the first prediction): without
    --verbose those lines go to the log for the whole command, Python's own lines (the command's error
    line) stay on the terminal, and descriptor 2 is the terminal again once the command ends."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import argparse, contextlib, os, sys
        from flows.cli import _import_tensorflow_quietly
        from pipeline.config import load_settings
        settings = load_settings(None, {{"work_dir": {str(tmp_path / "work")!r}}}, {{}})
        args = argparse.Namespace(verbose=False, on_exit=contextlib.ExitStack())
        with args.on_exit:
            _import_tensorflow_quietly(settings, args)
            os.write(2, b"native: during the command\\n")
            print("python: during the command", file=sys.stderr)
        os.write(2, b"native: after the command\\n")
        print("python: after the command", file=sys.stderr)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "native: during the command" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith(("python:", "native:"))]
    assert lines == ["python: during the command", "native: after the command", "python: after the command"]
    logged = (tmp_path / "work" / "logs" / "tensorflow.log").read_text()
    assert "native: during the command" in logged and "after the command" not in logged


def test_a_cached_champion_is_used_only_while_the_store_is_unchanged(champion_store, tmp_path):
    """The second load of the champion reads the local copy without importing MLflow; once the
    champion moves (the store changes), the next load fetches the new one."""
    import subprocess
    import sys
    import textwrap

    import keras

    from pipeline import registry, tracking
    from pipeline.models import build_model
    from pipeline.serving import export_model, load_classifier

    settings, first_model = champion_store
    settings = settings.replace(work_dir=str(tmp_path / "work"))
    sketch = [np.array([[12, 3, 0], [5, -8, 0], [-7, 2, 1]], np.float32)]
    assert np.allclose(load_classifier(settings).probabilities(sketch), first_model(pad_batch(sketch)), atol=1e-5)
    overrides = {name: getattr(settings, name) for name in ("work_dir", "tracking_uri", "registered_model_name")}
    script = textwrap.dedent(f"""
        import sys
        from pipeline.config import load_settings
        from pipeline.serving import load_classifier
        load_classifier(load_settings(overrides={overrides!r}, environ={{}}))
        print("mlflow" in sys.modules)
    """)
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == "False"  # served from the cache: MLflow never imported

    client = tracking.client_for(settings.resolved_tracking_uri)
    run_id = client.search_model_versions(f"name = '{settings.registered_model_name}'")[0].run_id
    keras.utils.set_random_seed(7)
    other = export_model(build_model("gru", 4, {"units": 6, "num_layers": 1}), 1.0)
    metadata = {"classes": load_classifier(settings).classes, "scale": 1.0, "max_len": 60}
    version = registry.log_and_register_model(client, run_id, other, settings.registered_model_name, metadata, {})
    try:
        registry.set_champion(client, settings.registered_model_name, version.version)
        assert np.allclose(load_classifier(settings).probabilities(sketch), other(pad_batch(sketch)), atol=1e-5)
    finally:
        registry.rollback_champion(client, settings.registered_model_name)  # the module's other tests expect the first


def test_a_convolutional_champion_predicts_from_the_cache_without_tensorflow(tmp_path, mlflow_template, tiny_features):
    """The first predict converts the champion for LiteRT into the cache; the next answers the same
    in every format without importing TensorFlow."""
    import shutil

    import keras

    from pipeline import registry, tracking
    from pipeline.features import read_spec
    from pipeline.models import build_model
    from pipeline.serving import export_model, model_metadata
    from tests.conftest import tiny_settings

    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    settings = tiny_settings(tmp_path / "work", tmp_path / "mlflow.db", registered_model_name="conv")
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, settings.experiment_name, settings.artifact_location)
    run_id = tracking.start_parent_run(client, experiment_id, "p", {}, {})
    spec = read_spec(tiny_features)
    keras.utils.set_random_seed(3)
    model = export_model(build_model("wavenet", 4, {"filters": 8, "dilation_rates": [1, 2]}), spec.scale)
    version = registry.log_and_register_model(client, run_id, model, "conv", model_metadata(spec, 1000.0), {})
    registry.set_champion(client, "conv", version.version)
    sketches = [[[12, 3, 0], [5, -8, 0], [-7, 2, 1]], [[1, 1, 1]]]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.json").write_text(json.dumps({"strokes": sketches}))
    config = _config(settings, tmp_path)
    argv = ["predict", "--config", config, "--tracking-uri", settings.resolved_tracking_uri, "--format", "json", "in"]
    first = run_sketchpipe(argv, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    answers = [json.loads(line) for line in first.stdout.splitlines()]
    expected = model(pad_batch([np.asarray(s, np.float32) for s in sketches]), training=False).numpy()
    classes = read_spec(tiny_features).classes
    assert [a["class"] for a in answers] == [classes[i] for i in expected.argmax(axis=1)]
    np.testing.assert_allclose([a["probability"] for a in answers], expected.max(axis=1), atol=1e-5)
    assert list((tmp_path / "data" / "serving-cache").glob("*/model.tflite"))  # work_dir: ./data

    import subprocess
    import sys

    script = (
        "import sys\nfrom flows.cli import main\ntry:\n    main(sys.argv[1:])\nfinally:\n"
        "    print('tensorflow imported:', 'tensorflow' in sys.modules, file=sys.stderr)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SKETCHPIPE_"))}
    second = subprocess.run([sys.executable, "-c", script, *argv], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert second.returncode == 0, second.stderr[-2000:]
    assert "tensorflow imported: False" in second.stderr
    assert [json.loads(line) for line in second.stdout.splitlines()] == answers
