import numpy as np
import pytest

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


def test_evaluate_model_scores_the_given_sketches_in_order_and_reports_speed_and_size(tiny_features):
    from pipeline.evaluation import compiled_inference, evaluate_model
    from pipeline.features import normalising_layer, pad_batch, read_spec, split_sketches
    from pipeline.models import build_model
    from pipeline.serving import export_model

    spec = read_spec(tiny_features)
    trained = build_model("gru", 4, {"units": 4, "num_layers": 1})
    serving = export_model(trained, spec.scale)
    sketches, labels = split_sketches(tiny_features, "test")
    assert len(sketches) == spec.counts["test"] and max(len(s) for s in sketches) <= spec.max_len
    evaluation, predictions = evaluate_model(
        serving, sketches, labels, 4, model_size_bytes=1234, keep_probabilities=True, batch_size=16
    )
    probabilities = predictions.probabilities
    assert probabilities.shape == (len(sketches), 4)
    np.testing.assert_array_equal(predictions.ranked, np.argsort(-probabilities, axis=1, kind="stable")[:, :3])
    np.testing.assert_allclose(predictions.top_probabilities, -np.sort(-probabilities, axis=1)[:, :3])
    assert evaluate_model(serving, sketches, labels, 4, model_size_bytes=1)[1].probabilities is None
    # row i is sketch i: the trained network on sketch i alone, normalised as preprocessing does
    infer = compiled_inference(trained)
    for i in (0, len(sketches) // 2, len(sketches) - 1):
        alone = infer(normalising_layer(spec.scale)(pad_batch([sketches[i]]))).numpy()[0]
        np.testing.assert_allclose(probabilities[i], alone, atol=1e-5)
    assert evaluation.accuracy == np.mean(probabilities.argmax(axis=1) == labels)
    assert evaluation.num_examples == len(sketches)
    assert 0 < evaluation.latency_p50_ms <= evaluation.latency_p95_ms
    assert evaluation.throughput_per_s > 0
    assert evaluation.num_params == trained.count_params()
    assert evaluation.model_size_bytes == 1234
    assert len(evaluation.precision) == len(evaluation.recall) == 4


def test_top_k_indices_rank_as_a_full_sort_does_and_break_ties_by_index():
    from pipeline.evaluation import score_ranked, top_k_indices

    rng = np.random.default_rng(0)
    probabilities = rng.random((50, 345)).astype(np.float32)
    np.testing.assert_array_equal(
        top_k_indices(probabilities, 3), np.argsort(-probabilities, axis=1, kind="stable")[:, :3]
    )
    assert top_k_indices(np.array([[0.2, 0.4, 0.4, 0.0]]), 3).tolist() == [[1, 2, 0]]
    assert top_k_indices(np.array([[0.7, 0.3]]), 3).tolist() == [[0, 1]]  # k above the class count
    labels = np.array([2, 0, 1])
    ranked = np.array([[2, 0, 1], [1, 0, 2], [0, 2, 3]])
    scores = score_ranked(ranked, labels, 4)
    assert scores["accuracy"] == pytest.approx(1 / 3) and scores["top3_accuracy"] == pytest.approx(2 / 3)


def test_the_split_read_in_chunks_scores_as_the_list_does(tiny_features):
    from pipeline.dataset import open_split
    from pipeline.evaluation import evaluate_chunks, evaluate_model, split_chunks
    from pipeline.features import read_spec, record_indices, split_sketches
    from pipeline.models import build_model
    from pipeline.serving import export_model

    spec = read_spec(tiny_features)
    serving = export_model(build_model("lstm", 4, {"units": 4, "num_layers": 1}), spec.scale)
    sketches, labels = split_sketches(tiny_features, "test")
    listed, by_list = evaluate_model(serving, sketches, labels, 4, model_size_bytes=1, keep_probabilities=True)
    indices = record_indices(tiny_features, "test")
    chunks = list(split_chunks(spec.dataset_dir, indices, size=7))  # chunks that cut the split anywhere
    assert sum(len(lengths) for _, lengths in chunks) == len(indices)
    streamed, by_chunks = evaluate_chunks(
        serving, iter(chunks), np.asarray(open_split(spec.dataset_dir, "test").labels)[indices], 4, 1, spec.max_len,
        keep_probabilities=True, batch_size=5,
    )  # fmt: skip
    np.testing.assert_allclose(by_chunks.probabilities, by_list.probabilities, atol=1e-5)
    np.testing.assert_array_equal(by_chunks.ranked[:, 0], by_list.ranked[:, 0])
    assert streamed.accuracy == listed.accuracy and streamed.confusion == listed.confusion
