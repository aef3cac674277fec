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
            assert result.p_value < alpha  # and only on a significant difference
            champion = candidate


def test_the_decision_without_a_champion_or_for_the_champion_itself_needs_no_comparison():
    from pipeline.promotion import decide_promotion

    labels = np.arange(100) % 4  # four classes, 25 each: always answering one is right 0.25 of the time
    first = decide_promotion("1", 0.4, None, None, 0.0, 0.05, "t", test_labels=labels)
    assert (first.alias, first.moves_champion, first.candidate_accuracy) == ("champion", True, 0.4)
    assert first.reason.startswith("no champion yet; accuracy 0.4000 against the majority-class rate 0.2500")
    assert first.p_value < 0.05
    with pytest.raises(ValueError, match="needs the test set's labels"):
        decide_promotion("1", 0.4, None, None, 0.0, 0.05, "t")
    again = decide_promotion("1", 0.4, "1", None, 0.0, 0.05, "t")
    assert (again.alias, again.moves_champion) == ("champion", False)
    with pytest.raises(ValueError, match="needs both models' correctness"):
        decide_promotion("2", 0.9, "1", None, 0.0, 0.05, "t")


def test_the_decision_follows_the_paired_comparison_and_records_it_as_tags():
    from pipeline.promotion import decide_promotion

    right = np.ones(40, bool)
    half = np.arange(40) % 2 == 0
    win = decide_promotion("2", 0.1, "1", {"2": right, "1": half}, 0.0, 0.05, "ds/test")
    assert (win.alias, win.candidate_accuracy, win.champion_accuracy) == ("champion", 1.0, 0.5)
    assert win.moves_champion and win.p_value < 0.05
    lose = decide_promotion("3", 0.99, "1", {"3": half, "1": right}, 0.0, 0.05, "ds/test")
    assert (lose.alias, lose.moves_champion) == ("challenger", False)
    assert lose.version_tags() == {
        "promotion_verdict": "challenger",
        "promotion_reason": lose.reason,
        "promotion_test_set": "ds/test",
        "promotion_compared_to": "1",
        "promotion_p_value": f"{lose.p_value:.4g}",
    }


def test_the_best_candidate_is_the_most_accurate_and_the_earlier_on_a_tie():
    from pipeline.promotion import best_candidate
    from pipeline.registry import RegisteredVersion

    versions = [RegisteredVersion("m", v, "x", "r", a) for v, a in (("3", 0.5), ("4", 0.7), ("5", 0.7))]
    assert best_candidate(versions).version == "4"
    with pytest.raises(ValueError, match="no candidate"):
        best_candidate([])


def test_a_first_model_must_beat_the_majority_class_rate_significantly():
    """A diverged model (one answer for every sketch) must not become the model serving uses."""
    from pipeline.promotion import beats_chance, decide_promotion

    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)  # always answering class 0: 0.5
    at_chance = decide_promotion("1", 0.5, None, None, 0.0, 0.05, "t", test_labels=labels)
    assert (at_chance.alias, at_chance.moves_champion) == ("challenger", False)
    assert "not above it" in at_chance.reason and "majority-class rate 0.5000" in at_chance.reason
    # a little above it, on 100 sketches, is not significant; far above it is
    promote, p, reason = beats_chance(0.55, labels)
    assert not promote and 0.05 < p < 0.5 and "not significant (binomial p=" in reason
    promote, p, _ = beats_chance(0.65, labels)
    assert promote and p < 0.01
    # the margin counts from the baseline
    assert not beats_chance(0.65, labels, margin=0.2)[0]
    # the p-value is the binomial test's: 65 or more right of 100 at 0.5
    from scipy.stats import binom

    assert beats_chance(0.65, labels)[1] == pytest.approx(binom.sf(64, 100, 0.5))
    # 345 balanced classes: a weak but real model (7 right of 690, where chance gets 2) is promoted
    many = np.repeat(np.arange(345), 2)
    assert beats_chance(7 / 690, many)[0] and not beats_chance(2 / 690, many)[0]
    with pytest.raises(ValueError, match="empty test set"):
        beats_chance(0.5, np.array([], dtype=int))


def test_a_p_value_that_underflows_is_not_printed_as_zero():
    from pipeline.promotion import format_p

    # 2,000 discordant pairs all one way: the exact p is about 2**-1999, below the smallest double
    result = compare_on_same_test_set(np.ones(2000, bool), np.zeros(2000, bool))
    assert result.p_value == 0.0 and result.promote
    assert "McNemar p<1e-300 < 0.05" in result.reason
    assert format_p(0.0123456) == "p=0.0123" and format_p(2e-300) == "p=2e-300"
