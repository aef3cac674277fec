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
