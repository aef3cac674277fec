"""Training: determinism, and resuming a run that was killed (SIGKILL) after an epoch."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.stages.training import train, training_config
from pipeline.training import train_model
from tests.conftest import settings_mapping, tiny_settings


def test_same_seed_gives_the_same_metrics(tiny_features, dataset_settings, tmp_path):
    config = training_config(dataset_settings.replace(epochs=2), "conv_lstm")
    first = train_model(config, tiny_features, tmp_path / "a")
    second = train_model(config, tiny_features, tmp_path / "b")
    assert first.history == second.history
    assert first.epochs_run == 2 and len(first.history["val_loss"]) == 2


def test_architectures_built_at_the_same_time_in_threads_get_the_same_weights_as_built_alone(dataset_settings):
    # Keras draws unseeded initialiser and dropout seeds from Python's process-wide `random`; the
    # default task runner builds the architectures in threads at the same time, and other threads of
    # the process (Prefect's, MLflow's) draw from `random` too: one does so here all along
    import random
    import threading

    import numpy as np

    from pipeline.training import seeded_model

    configs = [training_config(dataset_settings, name) for name in ("lstm", "transformer")]
    alone = [[w.copy() for w in seeded_model(config, 4).get_weights()] for config in configs]
    stop = threading.Event()
    draws = [0]

    def neighbour() -> None:
        while not stop.is_set():
            random.random()
            draws[0] += 1

    noisy = threading.Thread(target=neighbour, daemon=True)
    noisy.start()
    try:
        for _ in range(3):
            built: dict[int, list] = {}
            start = threading.Barrier(len(configs))

            def build(index: int, built: dict = built, start: threading.Barrier = start) -> None:
                start.wait()
                built[index] = seeded_model(configs[index], 4).get_weights()

            threads = [threading.Thread(target=build, args=(i,)) for i in range(len(configs))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for index, weights in enumerate(alone):
                assert all(np.array_equal(a, b) for a, b in zip(weights, built[index], strict=True))
    finally:
        stop.set()
        noisy.join()
    assert draws[0] > 1000  # the neighbour did draw while the models were built


_KILLED_RUN = textwrap.dedent(
    """
    import json, os, signal, sys
    import keras
    from pipeline.config import Settings, configure_runtime
    configure_runtime()
    from pipeline.stages.training import train

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:  # epoch 0 is complete and backed up; epoch 1 has begun
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, like a lost machine

    settings = Settings(**json.loads(sys.argv[1]))
    train(settings, "lstm", sys.argv[2], sys.argv[3], callbacks=[KillAfterFirstEpoch()])
    """
)


def test_a_killed_run_resumes_from_its_last_completed_epoch(tiny_features, tmp_path, tracking_db):
    settings = tiny_settings(tmp_path / "work", tracking_db, epochs=3, early_stopping_patience=10, lr_patience=10)
    client = tracking.client_for(settings.resolved_tracking_uri)
    experiment_id = tracking.ensure_experiment(client, settings.experiment_name, settings.artifact_location)
    parent = tracking.start_parent_run(client, experiment_id, "resume-test", {}, {})
    as_json = json.dumps(settings_mapping(settings))

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, as_json, str(tiny_features), parent], capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_id = tracking.find_child_run(client, parent, "lstm")
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == [0]

    resumed = train(settings, "lstm", tiny_features, parent)
    assert resumed.run_id == run_id
    assert resumed.epochs_run == 3
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [0, 1, 2]

    again = train(settings, "lstm", tiny_features, parent)  # finished: not trained again
    assert again == resumed
    assert len(client.get_metric_history(run_id, "loss")) == 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a disk for real")
def test_a_full_disk_leaves_no_truncated_model_behind(tiny_features, dataset_settings, tmp_path):
    """The final save finds the disk full (its file is a link to ``/dev/full``): the error says so, and
    neither ``model.keras`` nor a partial file is left, while the best checkpoint, written whole earlier,
    is there under its name."""
    import errno

    config = training_config(dataset_settings.replace(epochs=1), "lstm")
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.partial.keras").symlink_to("/dev/full")
    with pytest.raises(OSError) as caught:
        train_model(config, tiny_features, out)
    assert caught.value.errno == errno.ENOSPC or "No space left on device" in str(caught.value)
    assert not (out / "model.keras").exists() and not list(out.glob("*.partial.keras"))
    assert (out / "best.keras").stat().st_size > 0
    ok = train_model(config, tiny_features, tmp_path / "ok")
    assert Path(ok.model_path).name == "model.keras" and not list((tmp_path / "ok").glob("*.partial.keras"))


def test_training_with_augmentation_runs_and_differs(tiny_features, dataset_settings, tmp_path):
    plain = train_model(training_config(dataset_settings.replace(epochs=1), "gru"), tiny_features, tmp_path / "a")
    config = training_config(
        dataset_settings.replace(epochs=1, augment_scale=0.1, augment_rotation=10, augment_stroke_dropout=0.1), "gru"
    )
    augmented = train_model(config, tiny_features, tmp_path / "b")
    assert augmented.epochs_run == 1 and augmented.history["loss"] != plain.history["loss"]
    assert augmented.history["val_loss"][0] > 0  # validation ran on the untouched valid split


def test_smoothed_sparse_cross_entropy_is_cross_entropy_against_smoothed_targets():
    import numpy as np

    from pipeline.training import SparseSmoothedCrossentropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 5))
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype("float32")
    labels = np.array([0, 4, 2, 2, 1, 3])
    targets = np.full((6, 5), 0.2 / 5) + 0.8 * np.eye(5)[labels]
    expected = -(targets * np.log(probabilities)).sum(axis=1).mean()
    assert float(SparseSmoothedCrossentropy(0.2)(labels, probabilities)) == pytest.approx(expected, rel=1e-5)
    plain = -np.log(probabilities[np.arange(6), labels]).mean()
    assert float(SparseSmoothedCrossentropy(0.0)(labels, probabilities)) == pytest.approx(plain, rel=1e-5)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_epoch():
    import numpy as np

    from pipeline.training import TrainingConfig, learning_rate_schedule

    config = TrainingConfig("lstm", epochs=5, learning_rate=0.01, lr_schedule="cosine", warmup_epochs=1)
    schedule = learning_rate_schedule(config, steps_per_epoch=10)
    rates = np.array([float(schedule(step)) for step in range(51)])
    assert rates[0] == 0.0 and rates[10] == pytest.approx(0.01)
    assert np.all(np.diff(rates[:11]) > 0) and np.all(np.diff(rates[10:]) < 0)
    assert rates[50] == pytest.approx(0.0, abs=1e-9)
    assert learning_rate_schedule(TrainingConfig("lstm", learning_rate=0.01), 10) == 0.01  # plateau: a number


def test_regularised_training_uses_adamw_the_schedule_and_reloads(tiny_features, dataset_settings, tmp_path):
    import keras

    config = training_config(
        dataset_settings.replace(
            epochs=2, weight_decay=0.01, label_smoothing=0.1, lr_schedule="cosine", warmup_epochs=1
        ),
        "gru",
    )
    trained = train_model(config, tiny_features, tmp_path / "m")
    assert trained.epochs_run == 2
    # the smoothed loss is above the plain cross-entropy logged beside it
    assert all(s > c for s, c in zip(trained.history["loss"], trained.history["cross_entropy"], strict=True))
    assert len(trained.history["val_cross_entropy"]) == 2
    model = keras.saving.load_model(trained.model_path)  # the loss class is registered with Keras
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.optimizer.weight_decay == 0.01
    assert float(model.optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)  # decayed to 0 at the end


def test_the_rate_halves_after_lr_patience_epochs_without_progress_while_training_goes_on(
    tiny_features, dataset_settings, tmp_path
):
    # a rate far too high: validation stalls, so the schedule acts within a few epochs
    settings = dataset_settings.replace(epochs=6, learning_rate=0.5, lr_patience=1, early_stopping_patience=6)
    trained = train_model(training_config(settings, "gru"), tiny_features, tmp_path / "m")
    assert trained.epochs_run == 6  # early stopping has its own, longer patience
    losses, rates = trained.history["val_loss"], trained.history["learning_rate"]
    # ReduceLROnPlateau's rule with patience 1: an epoch that does not improve on the best val_loss
    # halves the rate of the next one (the history holds the rate each epoch trained with)
    expected, rate, best = [], 0.5, float("inf")
    for loss in losses:
        expected.append(rate)
        if loss < best - 1e-4:
            best = loss
        else:
            rate *= 0.5
    assert rates == pytest.approx(expected)
    assert min(rates) < 0.5  # the case is not vacuous: the rate did halve


def test_the_weights_moving_average_is_what_validation_scores_and_the_saved_model_keeps(
    tiny_features, dataset_settings, tmp_path
):
    """Averaging the weights leaves training itself alone (the same losses, step for step) and changes
    what is evaluated; early stopping, the checkpoint and the saved model keep the averaged weights
    of the best epoch, so the saved model scores exactly the best validation loss that was logged."""
    import keras

    from pipeline.features import make_dataset

    settings = dataset_settings.replace(epochs=3, early_stopping_patience=5, lr_patience=5)  # no rate change
    plain = train_model(training_config(settings, "gru"), tiny_features, tmp_path / "plain")
    config = training_config(settings.replace(ema_momentum=0.9), "gru")
    averaged = train_model(config, tiny_features, tmp_path / "ema")
    # the same updates (up to multithreaded float sums), other weights evaluated
    assert averaged.history["loss"] == pytest.approx(plain.history["loss"], rel=1e-5)
    assert averaged.history["val_loss"] != pytest.approx(plain.history["val_loss"], rel=1e-4)
    valid = make_dataset(tiny_features, "valid", config.batch_size)
    for path in (averaged.model_path, tmp_path / "ema" / "best.keras"):
        model = keras.saving.load_model(path)
        assert model.optimizer.use_ema
        scored = model.evaluate(valid, verbose=0, return_dict=True)["loss"]
        assert scored == pytest.approx(min(averaged.history["val_loss"]), rel=1e-5)


def test_epochs_of_a_fixed_number_of_batches_run_on_through_the_split(tiny_features, dataset_settings, tmp_path):
    import keras

    from pipeline.features import make_dataset

    per_pass = int(make_dataset(tiny_features, "train", 64).cardinality())
    steps = per_pass // 2 + 1  # epochs end part-way through a pass

    class Count(keras.callbacks.Callback):
        batches: list[int] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.batches.append(0)

        def on_train_batch_end(self, batch, logs=None):
            self.batches[-1] += 1

    counter = Count()
    config = training_config(dataset_settings.replace(epochs=3, steps_per_epoch=steps, validation_sample=16), "gru")
    assert config.steps_per_epoch == steps and config.validation_sample == 16
    trained = train_model(config, tiny_features, tmp_path / "m", callbacks=[counter])
    assert counter.batches == [steps, steps, steps]  # no short epoch where a pass ends
    assert trained.epochs_run == 3 and len(trained.history["val_loss"]) == 3
    assert keras.saving.load_model(trained.model_path, compile=False).count_params() == trained.num_params
    whole = training_config(dataset_settings.replace(steps_per_epoch=0, validation_sample=0), "gru")
    assert whole.steps_per_epoch is None and whole.validation_sample is None
