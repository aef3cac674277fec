"""Training stages: settings become a training configuration per architecture."""

from pipeline.stages.training import training_config


def test_each_architecture_gets_the_shared_settings_and_its_own_hyperparameters(dataset_settings):
    lstm = training_config(dataset_settings.replace(epochs=7, learning_rate=0.01), "lstm")
    assert (lstm.architecture, lstm.epochs, lstm.learning_rate, lstm.batch_size) == ("lstm", 7, 0.01, 32)
    assert lstm.model_params == {"units": 8, "num_layers": 1}
    params = training_config(dataset_settings, "wavenet").as_params()
    assert params["model_filters"] == 8 and params["model_dilation_rates"] == [1, 2]
    assert "model_params" not in params
    assert training_config(dataset_settings.replace(models={}), "gru").model_params == {}
