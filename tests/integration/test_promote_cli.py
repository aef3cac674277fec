"""``sketchpipe promote``: by hand, roll back, and clear errors that change nothing."""

import pytest

from flows.cli import main
from pipeline import registry, tracking
from tests.integration.conftest import run_sketchpipe


def _args(settings, tmp_path, *extra):
    config = tmp_path / "c.yaml"
    config.write_text(f"registered_model_name: {settings.registered_model_name}\n")
    return ["promote", "--config", str(config), "--tracking-uri", settings.resolved_tracking_uri, *extra]


def test_unknown_version_and_empty_history_fail_in_one_line_and_change_nothing(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    client = tracking.client_for(settings.resolved_tracking_uri)
    before = registry.alias_version(client, settings.registered_model_name, "champion")
    for extra in (["--version", "99"], ["--rollback"]):
        with pytest.raises(SystemExit) as exit_info:
            main(_args(settings, tmp_path, *extra))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("sketchpipe: error:")
        assert registry.alias_version(client, settings.registered_model_name, "champion") == before


def test_promote_by_hand_prints_the_new_champion(champion_store, tmp_path, capsys):
    settings, _ = champion_store
    main(_args(settings, tmp_path, "--version", "1"))
    assert capsys.readouterr().out.strip().endswith("@champion -> version 1")
    client = tracking.client_for(settings.resolved_tracking_uri)
    assert registry.alias_version(client, settings.registered_model_name, "champion") == "1"


def test_without_a_prefect_server_promote_moves_the_alias_without_starting_one(champion_store, tmp_path):
    settings, _ = champion_store
    done = run_sketchpipe(_args(settings, tmp_path, "--version", "1"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == f"{settings.registered_model_name} @champion -> version 1"
    assert done.stderr == ""  # one line in all: no TensorFlow/absl, MLflow or Prefect lines
    assert "temporary server" not in done.stderr + done.stdout  # Prefect started no server for it
    client = tracking.client_for(settings.resolved_tracking_uri)
    assert registry.alias_version(client, settings.registered_model_name, "champion") == "1"


def test_promote_by_hand_waits_while_the_gate_holds_the_registry(champion_store, tmp_path):
    """With no Prefect server, ``sketchpipe promote`` takes the same lock as the promotion gate: while
    the gate holds it (here, this test), the alias does not move; it moves once the lock is free."""
    import time

    settings, _ = champion_store
    client = tracking.client_for(settings.resolved_tracking_uri)
    name = settings.registered_model_name
    with registry.alias_lock(settings.resolved_tracking_uri, name):
        client.delete_registered_model_alias(name, "champion")  # as if the gate were between its read and write
        child = run_sketchpipe(_args(settings, tmp_path, "--version", "1"), cwd=tmp_path, wait=False)
        time.sleep(8)  # long enough for the command to start, open the store and reach the lock
        assert child.poll() is None, child.communicate()
        assert registry.alias_version(client, name, "champion") is None
    _, err = child.communicate(timeout=120)
    assert child.returncode == 0, err[-2000:]
    assert registry.alias_version(client, name, "champion") == "1"


def test_validate_prints_two_lines_and_nothing_else(tmp_path):
    """``sketchpipe validate`` as a user runs it: the dataset and its counts, no library's start-up lines."""
    done = run_sketchpipe(["validate", "--num-classes", "3"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.splitlines()
    assert len(out) == 2 and out[0].startswith("dataset: data/datasets/synthetic-"), out
    assert out[1] == "records in: 1800  accepted: 1800  quarantined: 0  skipped: 0"
    assert done.stderr == ""  # no TensorFlow/absl, GX or Prefect lines


def test_validate_of_tfrecord_shards_shows_no_native_start_up_lines(tmp_path):
    """The TFRecord source reads its shards with TensorFlow, whose native runtime prints start-up lines
    (oneDNN, CUDA probes) that look like errors: they go to the log, as for ``run``."""
    import numpy as np

    from pipeline.quickdraw_formats import write_tfrecord

    rng = np.random.default_rng(0)
    sketches = [np.column_stack([rng.integers(1, 9, (6, 2)), [0] * 5 + [1]]) for _ in range(60)]
    write_tfrecord(tmp_path / "shards" / "train.tfrecord-00000-of-00001", sketches, [0, 1, 2] * 20)
    (tmp_path / "shards" / "training.tfrecord.classes").write_text("cat\ndog\nowl\n")
    argv = ["validate", "--source", "tfrecord", "--data-dir", "shards"]
    done = run_sketchpipe(argv, cwd=tmp_path)  # as a user runs it: nothing but the result
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[1] == "records in: 60  accepted: 60  quarantined: 0  skipped: 0"
    assert done.stderr == "", done.stderr
    # level 0: TensorFlow prints its start-up lines, as some releases do at any level; they go to the
    # log (the lines its runtime prints later at that level, reading the shards, are the level's own)
    done = run_sketchpipe(argv, cwd=tmp_path, env={"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    start_up = ("absl::InitializeLog", "oneDNN", "cudart_stub")
    assert not any(marker in done.stderr for marker in start_up), done.stderr
    logged = (tmp_path / "data" / "logs" / "tensorflow.log").read_text()  # under work_dir
    assert any(marker in logged for marker in start_up)
