import numpy as np

from pipeline.evaluation import score_predictions


def test_scores_on_a_hand_checked_example():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1, 0.0],  # 0 right
            [0.1, 0.6, 0.2, 0.1],  # 0 -> 1, in top 3
            [0.1, 0.8, 0.1, 0.0],  # 1 right
            [0.1, 0.2, 0.3, 0.4],  # 1 -> 3, 1 is third
            [0.0, 0.1, 0.2, 0.7],  # 2 -> 3, in top 3
            [0.1, 0.1, 0.8, 0.0],  # 2 right
        ]
    )
    scores = score_predictions(probabilities, labels, num_classes=4)
    assert scores["accuracy"] == 0.5
    assert scores["top3_accuracy"] == 1.0
    assert scores["confusion"] == [[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0]]
    # per class F1: class 0: p=1, r=.5 -> 2/3; class 1: p=.5, r=.5 -> .5; class 2: p=1, r=.5 -> 2/3; class 3: 0
    assert np.isclose(scores["macro_f1"], (2 / 3 + 0.5 + 2 / 3 + 0) / 4)


def test_per_class_precision_and_recall():
    labels = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.4, 0.6]])
    scores = score_predictions(probabilities, labels, num_classes=2)
    assert scores["precision"] == [1.0, 2 / 3]
    assert scores["recall"] == [0.5, 1.0]


def test_evaluate_model_reports_speed_size_and_ordered_probabilities(tiny_features, tmp_path):
    from pipeline.evaluation import evaluate_model
    from pipeline.features import read_spec
    from pipeline.models import build_model

    model = build_model("gru", 4, {"units": 4, "num_layers": 1})
    model.save(tmp_path / "m.keras")
    evaluation, probabilities = evaluate_model(tmp_path / "m.keras", tiny_features)
    assert probabilities.shape == (read_spec(tiny_features).counts["test"], 4)
    assert evaluation.num_examples == len(probabilities)
    assert 0 < evaluation.latency_p50_ms <= evaluation.latency_p95_ms
    assert evaluation.throughput_per_s > 0
    assert evaluation.num_params == model.count_params()
    assert evaluation.model_size_bytes == (tmp_path / "m.keras").stat().st_size
    assert len(evaluation.precision) == len(evaluation.recall) == 4
