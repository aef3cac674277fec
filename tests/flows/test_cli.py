"""Command-line contract: wrong values stop at once with one line naming the flag."""

from pathlib import Path

import pytest

from flows.cli import main


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "--epochs", "0"], "--epochs"),
        (["run", "--architectures", "lstm,resnet"], "--architectures"),
        (["run", "--source", "csv"], "--source"),
        (["run", "--epochs", "two"], "--epochs"),
        (["run", "--task-runner", "spark"], "--task-runner"),
        (
            ["run", "--task-runner", "ray"],
            "ray_address (config file or SKETCHPIPE_RAY_ADDRESS): --task-runner ray needs",
        ),
        (["run", "--config", "missing.yaml"], "--config"),
        (["promote"], "--version"),
        (["download", "--format", "png", "--all"], "--format"),
        (["download", "--format", "sketchrnn", "--classes", "cat,unicorn"], "--classes"),
        (["download", "--format", "raw"], "--classes"),
        (["validate", "--source", "tfrecord", "--data-dir", "x", "--download"], "--download"),
        (["promote", "--version", "abc"], "--version"),
        (["promote", "--version", "0"], "--version"),
        (["validate", "--classes", "circle,unicorn"], "--classes: unknown class unicorn"),
        (["validate", "--num-classes", "13"], "--num-classes: the synthetic set has 12 classes, not 13"),
        (["validate", "--source", "ndjson", "--data-dir", "missing"], "missing: no such folder"),
        (["validate", "--source", "sketchrnn", "--data-dir", "."], ": holds no *.npz files"),
        (["predict", "nope.json"], "nope.json: No such file or directory"),
        (["tune", "--architecture", "resnet", "--trials", "2"], "--architecture: unknown architecture 'resnet'"),
        (["tune", "--architecture", "gru", "--trials", "0"], "--trials"),
        (["tune", "--trials", "2"], "--architecture"),
        (["tune", "--architecture", "gru", "--trials", "2", "--study", "it's"], "--study: study name"),
        (["tune", "--architecture", "gru", "--trials", "2", "--parallel", "x"], "--parallel"),
        (["tune", "--architecture", "gru", "--trials", "1", "--output", "no/t.yaml"], "--output: no folder no to"),
        (["tune", "--architecture", "gru", "--trials", "1", "--output", "."], "--output: . is a folder"),
        (["serve", "--cron", "61 * * * *"], "--cron: not a cron expression: '61 * * * *'"),
        (["serve-model", "--port", "0"], "--port: a port is a whole number from 1 to 65535 (got '0')"),
        (["ui", "--port", "99999"], "--port: a port is a whole number from 1 to 65535"),
        (["download", "--format", "raw", "--classes", "cat", "--dest", "/proc/x"], "--dest: cannot create /proc/x"),
        (["run", "--epoch", "2"], "unrecognized arguments: --epoch 2"),  # no abbreviation of --epochs
        (["score", "--output", "s.csv", "."], "--output: s.csv: the scores file must end in .parquet"),
        (["score", "--output", "s.parquet", "missing"], "missing: No such file or directory"),
        (["monitor", "--scores", "missing.parquet"], "--scores: missing.parquet: no such file"),
        (["monitor", "--scores", "s.parquet", "--drift-share", "2"], "--drift-share: must be in (0, 1]"),
    ],
)
def test_wrong_values_fail_fast_naming_the_flag(in_tmp_cwd, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert flag in err and err.startswith("sketchpipe")


@pytest.mark.parametrize("command", ["run", "validate", "tune"])
def test_a_work_dir_that_cannot_be_made_is_named_before_any_work(in_tmp_cwd, capsys, command):
    Path("taken").write_text("a file where the work folder's parent should be\n")
    Path("c.yaml").write_text("work_dir: taken/work\n")
    with pytest.raises(SystemExit) as exit_info:
        tune = ["--architecture", "gru", "--trials", "1"] if command == "tune" else []
        main([command, "--config", "c.yaml", *tune])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "sketchpipe: error: work_dir: cannot create taken/work (Not a directory)\n"


def test_training_on_one_class_is_refused_naming_where_it_was_chosen(in_tmp_cwd, capsys):
    """A classifier of one class learns nothing and is always right: ``run`` stops before training,
    naming the flag or the data folder; ``validate`` of one class file is fine."""
    Path("one").mkdir()
    Path("one/cat.ndjson").write_text(
        "".join(f'{{"word": "cat", "key_id": "{i}", "drawing": [[[0, 9, {i}], [0, 9, 3]]]}}\n' for i in range(40))
    )
    main(["validate", "--source", "ndjson", "--data-dir", "one"])
    assert "accepted: 40" in capsys.readouterr().out
    for argv, flag in (
        (["--source", "ndjson", "--data-dir", "one"], "--data-dir"),
        (["--classes", "circle"], "--classes"),
        (["--num-classes", "1"], "--num-classes"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", *argv, "--epochs", "1", "--progress", "off"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sketchpipe: error: {flag}: the dataset has one class (") and err.count("\n") == 1, err
        assert err.endswith("); training needs at least 2\n")


def test_data_that_fails_validation_is_a_user_error_naming_the_main_reason_and_its_first_record(in_tmp_cwd, capsys):
    """Too many bad records stop ``validate`` and ``run`` with exit code 2, like any other bad input; the
    line says what was wrong most often and where it first was."""
    Path("bad").mkdir()
    for word in ("cat", "dog"):
        head = f'{{"word": "{word}", "key_id": "{word}'
        lines = [f'{head}{i}", "drawing": [[[0, 9, {i}], [0, 9, 3]]]}}' for i in range(20)]
        if word == "dog":  # 1e400 is infinite: 3 of 40 records (7.5%) where 5% may fail
            lines[4:7] = [f'{{"word": "dog", "key_id": "d{i}", "drawing": [[[1e400, 2], [1, 2]]]}}' for i in range(3)]
        Path(f"bad/{word}.ndjson").write_text("\n".join(lines) + "\n")
    reason = 'most often "ingest: non-finite coordinate" (3 records; the first: dog.ndjson line 5)'
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--source", "ndjson", "--data-dir", "bad"])
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    assert out.startswith("FAILED: 7.5% of 40 records in ndjson failed validation (limit 5.0%), " + reason), out
    assert "accepted: 37  quarantined: 3  skipped: 0" in out
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--source", "ndjson", "--data-dir", "bad", "--epochs", "1", "--progress", "off"])
    assert exit_info.value.code == 2
    [err] = capsys.readouterr().err.splitlines()
    assert err.startswith("sketchpipe: error: 7.5% of 40 records") and reason in err, err


def test_download_fetches_into_dest_and_reports_what_it_did(in_tmp_cwd, capsys):
    from tests.bucket_server import FakeBucket

    with FakeBucket() as bucket:
        bucket.put("full/raw/The Eiffel Tower.ndjson", b'{"word": "The Eiffel Tower"}\n')
        bucket.put("full/raw/cat.ndjson", b'{"word": "cat"}\n')
        argv = ["download", "--format", "raw", "--classes", "cat,The Eiffel Tower", "--dest", "raw", "--base-url",
                bucket.url, "--progress", "off"]  # fmt: skip
        main(argv)
        main(argv)
        assert len(bucket.requests) == 2
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "2 raw class files in raw: 2 fetched (0.0 MiB), 0 already complete",
        "2 raw class files in raw: 0 fetched (0.0 MiB), 2 already complete",
    ]
    assert (in_tmp_cwd / "raw" / "The Eiffel Tower.ndjson").read_bytes() == b'{"word": "The Eiffel Tower"}\n'


def test_download_of_a_missing_file_is_one_line_naming_class_and_url(in_tmp_cwd, capsys):
    from tests.bucket_server import FakeBucket

    with FakeBucket() as bucket, pytest.raises(SystemExit) as exit_info:
        main(["download", "--format", "sketchrnn", "--classes", "cat", "--base-url", bucket.url, "--progress", "off"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sketchpipe: error: cat: not found (HTTP 404) at {bucket.url}/sketchrnn/cat.npz"
    assert not (in_tmp_cwd / "data" / "raw" / "sketchrnn" / "cat.npz").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"dx": 1}', "expected dataframe_records, dataframe_split, inputs, instances or strokes"),
        ('"cat"', "expected a stroke-3 list of [dx, dy, pen] rows, or a list of them"),
        ("[[1, 2]]", "sketch 0 is not a non-empty list of [dx, dy, pen] rows"),
        ('[[[1, 2, 0], [3, "a", 1]]]', "sketch 0: a value is not a number"),
        ("[[[1, 2, 0], [3, 4]]]", "sketch 0 is not a list of [dx, dy, pen] rows"),
        ("not json", "not JSON"),
    ],
)
def test_predict_on_a_bad_sketch_file_is_one_line_naming_it(in_tmp_cwd, capsys, content, message):
    (in_tmp_cwd / "s.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "s.json"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sketchpipe: error: s.json: ") and message in err
    assert not (in_tmp_cwd / "mlflow").exists()  # refused before any store is opened


def test_a_config_file_with_a_wrong_model_hyperparameter_fails_before_anything_runs(in_tmp_cwd, capsys):
    (in_tmp_cwd / "bad.yaml").write_text("architectures: [wavenet]\nmodels:\n  wavenet: {filtres: 8}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", "bad.yaml"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sketchpipe: error: models (in bad.yaml): wavenet takes no 'filtres'")
    assert len(err.strip().splitlines()) == 1, err
    assert not (in_tmp_cwd / "data").exists()  # nothing ran


@pytest.mark.parametrize(
    ("text", "environ", "argv", "message"),
    [
        (
            b"epochs: [1\n",
            {},
            [],
            "--config: bad.yaml is not valid YAML: expected ',' or ']', but got '<stream end>' (line 2",
        ),
        (b"epochs: 2\n\xe9t\xe9: 1\n", {}, [], "--config: bad.yaml is not valid YAML: UnicodeDecodeError"),
        (b"max_per_class: ten\n", {}, [], "max_per_class (in bad.yaml): cannot read 'ten' as int"),
        (b"max_per_class: ten\n", {}, ["--max-per-class", "3"], None),  # the flag wins: the file's value goes unread
        (b"epochs: 0\n", {}, [], "epochs (in bad.yaml): must be at least 1 (got 0)"),
        (b"epochs: 3\n", {"SKETCHPIPE_EPOCHS": "0"}, [], "SKETCHPIPE_EPOCHS: must be at least 1 (got 0)"),
        (b"max_per_class: 5\n", {}, ["--max-per-class", "0"], "--max-per-class: must be at least 1 (got 0)"),
    ],
)
def test_a_wrong_value_is_named_where_it_was_set(in_tmp_cwd, capsys, monkeypatch, text, environ, argv, message):
    (in_tmp_cwd / "bad.yaml").write_bytes(text)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--config", "bad.yaml", "--classes", "circle,nope", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    # with every setting right, the command gets as far as the unknown class
    expected = message or "--classes: unknown class nope"
    assert err.startswith(f"sketchpipe: error: {expected}"), err


def test_asking_a_real_source_for_more_classes_than_it_has_names_the_flag(in_tmp_cwd, capsys):
    import numpy as np

    from pipeline.strokes import write_sketchrnn_npz

    write_sketchrnn_npz(in_tmp_cwd / "raw" / "cat.npz", {"train": [np.ones((3, 3), np.int16)]})
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", "--source", "sketchrnn", "--data-dir", "raw", "--num-classes", "2"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "sketchpipe: error: --num-classes: asked for 2 classes but the source has 1\n"


@pytest.mark.parametrize("argv", [["predict", "s.json"], ["promote", "--version", "1"], ["promote", "--rollback"]])
def test_commands_that_need_a_store_do_not_create_an_empty_one(in_tmp_cwd, capsys, argv):
    (in_tmp_cwd / "s.json").write_text("[[1, 2, 0], [3, 4, 1]]")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        f"sketchpipe: error: --tracking-uri: no tracking store at {in_tmp_cwd / 'mlflow' / 'mlflow.db'} "
        "(train with `sketchpipe run` first)\n"
    )
    assert not (in_tmp_cwd / "mlflow").exists()


def test_a_missing_folder_is_not_taken_for_a_full_disk():
    """``/proc`` has no free space (it holds no files): a folder missing there was reported as a full disk."""
    import errno

    from flows.cli import disk_full

    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/proc/x/raw")
    assert disk_full(missing, [Path("/proc/x/raw")]) is None
    assert disk_full(RuntimeError("wrapped"), [Path("/proc/x/raw")]) is None  # /proc's 0 bytes free mean nothing
    full = OSError(errno.ENOSPC, "No space left on device", "/data/x")
    wrapped = RuntimeError("could not write")
    wrapped.__cause__ = full
    assert disk_full(wrapped, [Path("/proc")]).startswith("no space left on device writing /data/x")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a disk for real")
def test_a_full_disk_is_named_in_one_line(in_tmp_cwd, capsys):
    """A write that finds the disk full (``/dev/full`` answers every write with ENOSPC) ends in one
    line that says so, however deep the OSError sits, and leaves no file under the final name."""
    from tests.bucket_server import FakeBucket

    (in_tmp_cwd / "raw").mkdir()
    (in_tmp_cwd / "raw" / "cat.npz.part").symlink_to("/dev/full")  # the download's resumable part file
    with FakeBucket() as bucket, pytest.raises(SystemExit) as exit_info:
        bucket.put("sketchrnn/cat.npz", b"x" * 2_000)  # small: sent whole before the client gives up
        main(["download", "--format", "sketchrnn", "--classes", "cat", "--dest", "raw", "--base-url", bucket.url,
              "--progress", "off"])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sketchpipe: error: no space left on device"), err
    assert not (in_tmp_cwd / "raw" / "cat.npz").exists()


def test_an_unexpected_error_is_one_line_without_verbose_and_a_traceback_with_it(in_tmp_cwd, capsys, monkeypatch):
    from pipeline.stages import data

    def broken(settings):
        raise RuntimeError("the reader broke\nwith a second line")

    monkeypatch.setattr(data, "ingest", broken)  # a fault in the pipeline's own code, not a user error
    with pytest.raises(SystemExit) as exit_info:
        main(["validate"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        "sketchpipe: error: RuntimeError: the reader broke",
        "sketchpipe: (--verbose shows the traceback)",
    ]
    with pytest.raises(RuntimeError, match="the reader broke"):
        main(["validate", "--verbose"])


def test_a_model_uri_that_is_no_model_is_refused_in_one_line(in_tmp_cwd, capsys, tracking_db):
    """A folder that holds no logged model was copied whole into the serving cache (a minute and more for a
    big one) before it was refused; ``serve-model`` left MLflow's traceback for a version that does not
    exist. Both now stop at once, naming the flag."""
    Path("s.json").write_text("[[1, 2, 0], [3, 4, 1]]")
    Path("big").mkdir()
    Path("big/data.bin").write_bytes(b"\0" * 1000)
    for argv, message in (
        (["predict", "--model-uri", "big", "s.json"], "--model-uri: cannot load big: big holds no MLmodel file"),
        (["serve-model", "--model-uri", "big"], "--model-uri: cannot load big: big holds no MLmodel file"),
        (["serve-model", "--model-uri", "models:/nope/3", "--tracking-uri", f"sqlite:///{tracking_db}"],
         "--model-uri: cannot load models:/nope/3: Model Version (name=nope, version=3) not found"),
    ):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith(f"sketchpipe: error: {message}") and len(err.strip().splitlines()) == 1, err
    assert not Path("data/serving-cache").exists() or not any(Path("data/serving-cache").rglob("data.bin"))


def test_a_tracking_server_that_does_not_answer_is_named_not_taken_for_a_missing_version(in_tmp_cwd, capsys):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for argv in (["promote", "--version", "1"], ["predict", "s.json"]):
        Path("s.json").write_text("[[1, 2, 0], [3, 4, 1]]")
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--tracking-uri", url])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        expected = f"--tracking-uri: MLflow tracking server {url} is unreachable (ConnectionError)"
        assert err == f"sketchpipe: error: {expected}\n"


def test_resuming_a_run_that_is_not_a_pipeline_run_is_refused_naming_the_flag(in_tmp_cwd, capsys, tracking_db):
    import mlflow

    uri = f"sqlite:///{tracking_db}"
    client = mlflow.MlflowClient(uri)
    child = client.create_run(client.create_experiment("elsewhere"), run_name="lstm").info.run_id
    finished = client.create_run(client.get_experiment_by_name("elsewhere").experiment_id,
                                 tags={"pipeline": "training_pipeline"}).info.run_id  # fmt: skip
    client.set_terminated(finished, "FINISHED")
    for run_id, message in (
        ("abc", f"--resume: no run abc in the tracking store {uri}"),
        (child, f"--resume: run {child} (lstm) is not a pipeline run; give the id `run` printed at its end"),
        (finished, f"--resume: run {finished} finished; there is nothing to resume (start a new one without --resume)"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["run", "--resume", run_id, "--tracking-uri", uri])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"sketchpipe: error: {message}\n"
    assert not Path("data/datasets").exists()  # nothing ran


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--source", "ndjson", "--data-dir", "missing"], "--data-dir: missing: no such folder"),
        (["--source", "ndjson", "--data-dir", "data-in", "--classes", "cat,dogz"],
         "--classes: unknown class dogz; available: cat, fish"),
        (["--source", "ndjson", "--data-dir", "data-in", "--num-classes", "3"],
         "--num-classes: asked for 3 classes but the source has 2"),
        (["--num-classes", "1"], "--num-classes: the dataset has one class (circle); training needs at least 2"),
    ],
)  # fmt: skip
def test_what_the_source_cannot_give_stops_run_before_anything_starts(in_tmp_cwd, capsys, argv, message):
    """Checked from the file names, before Prefect's server, TensorFlow or ingest start."""
    Path("data-in").mkdir()
    for name in ("cat", "fish"):
        Path(f"data-in/{name}.ndjson").write_text('{"word": "x", "drawing": [[[0, 1], [0, 1]]]}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"sketchpipe: error: {message}\n"
    assert not Path("data/datasets").exists() and not Path(".prefect").exists()


def test_a_store_that_is_not_a_database_is_named_by_its_flag(in_tmp_cwd, capsys):
    Path("store.db").write_text("not a database")
    Path("s.json").write_text("[[1, 2, 0], [3, 4, 1]]")
    for argv in (["predict", "s.json"], ["promote", "--version", "1"], ["serve-model"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--tracking-uri", "sqlite:///store.db"])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == "sketchpipe: error: --tracking-uri: store.db is not an SQLite database\n"
