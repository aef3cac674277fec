"""Progress bars for ingest and training: shown on a terminal or when asked, never in the way."""

import io
import os

import keras
import pytest

from pipeline import progress
from pipeline.ingest import ingest
from pipeline.training import TrainingConfig, train_model
from tests.conftest import TINY_MODELS, tiny_settings


def test_auto_shows_bars_only_on_a_terminal():
    primary, secondary = os.openpty()
    with os.fdopen(primary, "w") as terminal, os.fdopen(secondary):
        assert progress.enabled("auto", terminal)
    assert not progress.enabled("auto", io.StringIO())
    assert progress.enabled("on", io.StringIO()) and not progress.enabled("off")
    with pytest.raises(ValueError, match="unknown progress mode 'loud'"):
        progress.enabled("loud")


def test_counted_passes_every_item_through_and_counts_them(capsys):
    assert list(progress.counted(iter(range(37)), "ingest demo", "record", show=True)) == list(range(37))
    err = capsys.readouterr().err
    assert "ingest demo" in err and "37record" in err
    assert list(progress.counted(range(5), "quiet", "record", show=False)) == list(range(5))
    assert capsys.readouterr().err == ""


def test_ingest_counts_every_record_it_reads(tmp_path, mlflow_template, capsys):
    settings = tiny_settings(tmp_path / "work", tmp_path / "unused.db", progress="on", num_classes=2)
    ingest(settings)
    per_class = sum(settings.synthetic_per_split.values())
    assert f"ingest synthetic: {2 * per_class}record" in capsys.readouterr().err.replace("\r", "\n")


def test_training_bar_shows_epochs_and_validation_metrics(tiny_features, tmp_path, capsys):
    keras.utils.set_random_seed(0)
    config = TrainingConfig("gru", epochs=2, batch_size=32, model_params=TINY_MODELS["gru"])
    train_model(config, tiny_features, tmp_path / "model", callbacks=[progress.training_progress("gru")])
    err = capsys.readouterr().err
    assert "gru epoch 2/2" in err and "val_loss=" in err and "val_accuracy=" in err
    assert progress._taken == set()  # the bar's terminal line was given back


def test_several_steps_per_execution_train_alike_and_the_bar_still_counts_every_batch(tiny_features, tmp_path, capsys):
    import numpy as np

    histories = {}
    for steps in (1, 3):
        keras.utils.set_random_seed(0)
        config = TrainingConfig(
            "gru", epochs=2, batch_size=16, model_params=TINY_MODELS["gru"], steps_per_execution=steps
        )
        trained = train_model(
            config, tiny_features, tmp_path / f"spe{steps}", callbacks=[progress.training_progress(f"spe{steps}")]
        )
        histories[steps] = trained.history
    err = capsys.readouterr().err.replace("\r", "\n")
    # the same updates: the same losses, however many steps run per call
    np.testing.assert_allclose(histories[3]["loss"], histories[1]["loss"], rtol=1e-4)
    np.testing.assert_allclose(histories[3]["val_loss"], histories[1]["val_loss"], rtol=1e-4)
    finals = [line for line in err.splitlines() if line.startswith("spe3 epoch 2/2")]
    done, total = finals[-1].split("|")[2].split()[0].split("/")  # "... 100%|#####| 34/34 [..."
    assert int(total) > 3 and done == total  # every batch counted, though callbacks ran once per 3
