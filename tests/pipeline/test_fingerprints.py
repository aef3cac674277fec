"""Cache keys: the same inputs give the same key, and any change that matters gives another."""

import os

from pipeline.fingerprints import INGEST_FIELDS, VALIDATE_FIELDS, code_version, source_fingerprint, stage_key
from tests.conftest import tiny_settings


def test_a_source_fingerprint_follows_the_files(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "cat.ndjson").write_text("a\n")
    settings = tiny_settings(tmp_path / "work", tmp_path / "db").replace(
        source="ndjson", data_dir=str(tmp_path / "raw")
    )
    first = source_fingerprint(settings)
    assert source_fingerprint(settings) == first
    (tmp_path / "raw" / "cat.ndjson").write_text("ab\n")
    assert source_fingerprint(settings) != first
    (tmp_path / "raw" / "dog.ndjson").write_text("")
    assert len({first, source_fingerprint(settings)}) == 2


def test_the_synthetic_source_is_fingerprinted_by_its_settings_alone(tmp_path):
    settings = tiny_settings(tmp_path / "work", tmp_path / "db")
    reseeded = settings.replace(seed=7)
    assert source_fingerprint(settings) == source_fingerprint(reseeded)  # no files: the generator is code
    fingerprint = source_fingerprint(settings)
    assert stage_key("ingest", settings, INGEST_FIELDS, fingerprint) != stage_key(
        "ingest", reseeded, INGEST_FIELDS, fingerprint
    )


def test_stage_keys_change_with_the_fields_a_stage_reads_and_only_those(tmp_path):
    settings = tiny_settings(tmp_path / "work", tmp_path / "db")
    key = stage_key("validate", settings, VALIDATE_FIELDS, "dataset-1")
    assert key == stage_key("validate", settings, VALIDATE_FIELDS, "dataset-1")
    assert key.startswith("validate-")
    assert key != stage_key("validate", settings.replace(min_points=3), VALIDATE_FIELDS, "dataset-1")
    assert key != stage_key("validate", settings, VALIDATE_FIELDS, "dataset-2")
    assert key == stage_key("validate", settings.replace(epochs=9), VALIDATE_FIELDS, "dataset-1")  # not read
    ingest_key = stage_key("ingest", settings, INGEST_FIELDS)
    assert ingest_key != stage_key("ingest", settings.replace(test_share=0.2), INGEST_FIELDS)
    assert len(code_version()) == 16


def test_a_file_rewritten_with_the_same_size_and_mtime_is_noticed(tmp_path):
    path = tmp_path / "raw" / "cat.ndjson"
    path.parent.mkdir()
    path.write_text("old\n")
    settings = tiny_settings(tmp_path / "work", tmp_path / "db").replace(source="ndjson", data_dir=str(path.parent))
    before = source_fingerprint(settings)
    stat = path.stat()
    path.write_text("new\n")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old modification time
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert source_fingerprint(settings) != before
