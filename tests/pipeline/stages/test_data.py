"""Data stages on the tiny dataset, and their failure paths."""

from pathlib import Path

import pytest

from pipeline.stages import data
from pipeline.validation import DataValidationError


def test_download_does_nothing_unless_asked(dataset_settings):
    assert data.download(dataset_settings) == []


def test_the_validation_folder_is_named_after_the_dataset_and_its_thresholds(dataset_settings, tiny_dataset):
    folder = data.validation_dir(dataset_settings, tiny_dataset)
    assert folder.parent == Path(dataset_settings.work_dir) / "validation"
    assert folder.name.startswith(f"{Path(tiny_dataset).name}-v")
    assert data.validation_dir(dataset_settings.replace(epochs=9), tiny_dataset) == folder
    assert data.validation_dir(dataset_settings.replace(max_points=50), tiny_dataset) != folder


def test_preprocess_names_the_features_after_the_report_and_crop(dataset_settings, tiny_report, tiny_features):
    assert Path(tiny_features).name == f"{Path(tiny_report.output_dir).name}-len{dataset_settings.max_len}"
    assert (Path(tiny_features) / "spec.json").is_file()


def test_validation_fails_with_one_message_when_too_many_sketches_are_bad(dataset_settings, tiny_dataset):
    strict = dataset_settings.replace(max_points=5, max_invalid_fraction=0.01)  # most sketches are longer
    with pytest.raises(DataValidationError, match=r"% of 380 records in synthetic failed validation \(limit 1.0%\)"):
        data.validate(strict, tiny_dataset)
    quarantine = data.validation_dir(strict, tiny_dataset) / "quarantine.jsonl"
    assert quarantine.read_text().count("\n") > 0.5 * 380  # written first, so the cause can be read
