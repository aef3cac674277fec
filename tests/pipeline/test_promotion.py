"""The promotion rule, including a property test over random sequences of candidates."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.promotion import compare_on_same_test_set, mcnemar_exact_p


def test_mcnemar_exact_matches_hand_computed_binomial():
    # b=9, c=1: p = 2 * P(X<=1 | n=10, 1/2) = 2 * 11/1024
    assert mcnemar_exact_p(9, 1) == pytest.approx(22 / 1024)
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(5, 5) == pytest.approx(1.0)


def test_clear_win_is_promoted_and_a_tie_is_not():
    champion = np.array([True] * 50 + [False] * 50)
    candidate = np.array([True] * 80 + [False] * 20)
    result = compare_on_same_test_set(candidate, champion)
    assert result.promote and result.candidate_only_right == 30 and result.champion_only_right == 0
    assert not compare_on_same_test_set(champion, champion).promote


def test_small_gain_is_not_significant():
    champion = np.array([True] * 50 + [False] * 50)
    candidate = champion.copy()
    candidate[50:53] = True  # +3 sketches
    result = compare_on_same_test_set(candidate, champion)
    assert not result.promote and "not significant" in result.reason


def test_margin_is_respected():
    champion = np.array([True] * 50 + [False] * 50)
    candidate = np.array([True] * 70 + [False] * 30)
    assert compare_on_same_test_set(candidate, champion, margin=0.1).promote
    assert not compare_on_same_test_set(candidate, champion, margin=0.25).promote


def test_mismatched_test_sets_are_refused():
    with pytest.raises(ValueError, match="same test sketches"):
        compare_on_same_test_set(np.ones(3, bool), np.ones(4, bool))


@settings(max_examples=200, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 60),
    candidates=st.integers(1, 8),
    margin=st.floats(0.0, 0.2),
    alpha=st.floats(0.001, 0.5),
)
def test_champion_never_moves_to_a_worse_version(data, n, candidates, margin, alpha):
    truth_vectors = st.lists(st.booleans(), min_size=n, max_size=n).map(np.array)
    champion = data.draw(truth_vectors)
    for _ in range(candidates):
        candidate = data.draw(truth_vectors)
        result = compare_on_same_test_set(candidate, champion, margin=margin, alpha=alpha)
        if result.promote:
            assert candidate.mean() > champion.mean() + margin - 1e-12
            champion = candidate
        assert result.p_value <= 1.0
