"""The promotion gate: does a candidate beat the champion on the same test set?

Pure functions over paired per-sketch correctness and plain values, so the rule is testable without
a registry; :func:`pipeline.registry.apply_promotion` carries a decision out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

CHAMPION = "champion"
CHALLENGER = "challenger"
REJECTED = "rejected"  # a verdict, not an alias: the version does not load where serving loads it


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The comparison of a candidate with the champion on one test set."""

    candidate_accuracy: float
    champion_accuracy: float
    candidate_only_right: int  # McNemar's b
    champion_only_right: int  # McNemar's c
    p_value: float
    promote: bool
    reason: str


def format_p(p_value: float) -> str:
    """Return ``p=0.0123``, or ``p<1e-300`` for a p-value below what a float holds (it underflowed to 0)."""
    return f"p={p_value:.3g}" if p_value >= 1e-300 else "p<1e-300"


def mcnemar_exact_p(candidate_only_right: int, champion_only_right: int) -> float:
    """Return the two-sided exact McNemar p-value: a binomial test of the discordant pairs at 1/2."""
    from scipy.stats import binomtest

    discordant = candidate_only_right + champion_only_right
    if discordant == 0:
        return 1.0
    return float(binomtest(candidate_only_right, discordant, 0.5, alternative="two-sided").pvalue)


def compare_on_same_test_set(
    candidate_correct: np.ndarray, champion_correct: np.ndarray, margin: float = 0.0, alpha: float = 0.05
) -> GateResult:
    """Decide whether the candidate replaces the champion.

    Args:
        candidate_correct: per test sketch, whether the candidate's top class was right.
        champion_correct: the same for the champion, on the same sketches in the same order.
        margin: the least accuracy gain (absolute) that counts as better.
        alpha: the significance level of McNemar's exact test on the paired predictions.

    Returns:
        ``promote`` is true only if the candidate is more accurate by more than ``margin`` (and so
        strictly more accurate) and the difference is significant (p < alpha).
    """
    candidate_correct = np.asarray(candidate_correct, dtype=bool)
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if candidate_correct.shape != champion_correct.shape or candidate_correct.ndim != 1:
        raise ValueError("candidate and champion must be scored on the same test sketches")
    if len(candidate_correct) == 0:
        raise ValueError("cannot compare on an empty test set")
    b = int(np.sum(candidate_correct & ~champion_correct))
    c = int(np.sum(~candidate_correct & champion_correct))
    candidate_accuracy = float(candidate_correct.mean())
    champion_accuracy = float(champion_correct.mean())
    p_value = mcnemar_exact_p(b, c)
    p_text = format_p(p_value)
    gain = candidate_accuracy - champion_accuracy
    if gain <= max(margin, 0.0):
        promote, reason = False, f"accuracy gain {gain:+.4f} is not above the margin {margin:.4f}"
    elif p_value >= alpha:
        promote, reason = False, f"accuracy gain {gain:+.4f} is not significant (McNemar {p_text} >= {alpha})"
    else:
        promote, reason = True, f"accuracy gain {gain:+.4f} > margin {margin:.4f}, McNemar {p_text} < {alpha}"
    return GateResult(candidate_accuracy, champion_accuracy, b, c, p_value, promote, reason)


def beats_chance(candidate_accuracy: float, test_labels: np.ndarray, margin: float = 0.0, alpha: float = 0.05):
    """Return (whether, one-sided binomial p-value, reason) a first model beats the no-skill baseline.

    The baseline is the test set's majority-class rate: the accuracy of always answering its most common
    class. A model with no champion to beat must be more accurate than that by more than ``margin``, and
    significantly so (a binomial test of its correct answers against that rate, p < ``alpha``), so a
    diverged or untrained model never becomes the one serving uses.
    """
    from scipy.stats import binomtest

    labels = np.asarray(test_labels, dtype=np.int64)
    if labels.size == 0:
        raise ValueError("cannot judge a model on an empty test set")
    baseline = float(np.bincount(labels).max() / labels.size)
    correct = round(candidate_accuracy * labels.size)
    p_value = float(binomtest(correct, labels.size, baseline, alternative="greater").pvalue) if baseline < 1 else 1.0
    gain = candidate_accuracy - baseline
    p_text = format_p(p_value)
    what = f"accuracy {candidate_accuracy:.4f} against the majority-class rate {baseline:.4f}"
    if gain <= max(margin, 0.0):
        return False, p_value, f"no champion yet, but {what} is not above it by more than the margin {margin:.4f}"
    if p_value >= alpha:
        return False, p_value, f"no champion yet, but {what} is not significant (binomial {p_text} >= {alpha})"
    return True, p_value, f"no champion yet; {what}: binomial {p_text} < {alpha}"


@dataclasses.dataclass(frozen=True)
class PromotionDecision:
    """What the promotion gate decided for this pipeline run's best candidate, and why."""

    candidate_version: str
    candidate_accuracy: float
    champion_version: str | None
    champion_accuracy: float | None
    p_value: float | None
    alias: str
    reason: str
    test_set: str

    @property
    def moves_champion(self) -> bool:
        """Return whether applying the decision points ``champion`` at a new version."""
        return self.alias == CHAMPION and self.champion_version != self.candidate_version

    def version_tags(self) -> dict[str, str]:
        """Return the decision as tags for the candidate version."""
        return {
            "promotion_verdict": self.alias,
            "promotion_reason": self.reason,
            "promotion_test_set": self.test_set,
            "promotion_compared_to": self.champion_version or "none",
            "promotion_p_value": "n/a" if self.p_value is None else f"{self.p_value:.4g}",
        }


def rejected_decision(
    candidate_version: str, candidate_accuracy: float, champion_version: str | None, reason: str, test_set: str
) -> PromotionDecision:
    """Return the decision for a candidate that cannot be served: no alias moves, and the reason is recorded."""
    return PromotionDecision(
        candidate_version=candidate_version,
        candidate_accuracy=candidate_accuracy,
        champion_version=champion_version,
        champion_accuracy=None,
        p_value=None,
        alias=REJECTED,
        reason=reason,
        test_set=test_set,
    )


def best_candidate(candidates: Sequence):
    """Return the candidate with the best test accuracy (the earlier version on a tie).

    Raises:
        ValueError: there are no candidates.
    """
    if not candidates:
        raise ValueError("no candidate versions to promote")
    return max(candidates, key=lambda c: (c.test_accuracy, -int(c.version)))


def decide_promotion(
    candidate_version: str,
    candidate_accuracy: float,
    champion_version: str | None,
    correct: Mapping[str, np.ndarray] | None,
    margin: float,
    alpha: float,
    test_set: str,
    test_labels: np.ndarray | None = None,
) -> PromotionDecision:
    """Decide which alias the best new version gets: ``champion`` or ``challenger``.

    Args:
        candidate_version: the best new version.
        candidate_accuracy: its test accuracy, reported when there is nothing to compare with.
        champion_version: the version holding ``champion`` now, or ``None``.
        correct: version -> per test sketch, whether its top class was right, for the candidate and
            the champion on the same sketches; needed only when they differ.
        margin: the least accuracy gain that counts; alpha: the significance level of either test.
        test_set: a name for the test set, recorded with the decision.
        test_labels: the test sketches' class indices; needed only when there is no champion yet.

    Returns:
        With no champion yet, ``champion`` only if :func:`beats_chance` says so; ``champion`` when the
        candidate already is it; otherwise ``champion`` only if :func:`compare_on_same_test_set` says so;
        else ``challenger``.
    """
    gate, p_value = None, None
    if champion_version is None:
        if test_labels is None:
            raise ValueError("judging a first model needs the test set's labels")
        promote, p_value, reason = beats_chance(candidate_accuracy, test_labels, margin, alpha)
        alias = CHAMPION if promote else CHALLENGER
    elif champion_version == candidate_version:
        alias, reason = CHAMPION, "already the champion"
    else:
        if not correct or candidate_version not in correct or champion_version not in correct:
            raise ValueError("comparing with a champion needs both models' correctness on the test set")
        gate = compare_on_same_test_set(correct[candidate_version], correct[champion_version], margin, alpha)
        alias, reason = (CHAMPION if gate.promote else CHALLENGER), gate.reason
    return PromotionDecision(
        candidate_version=candidate_version,
        candidate_accuracy=gate.candidate_accuracy if gate else candidate_accuracy,
        champion_version=champion_version,
        champion_accuracy=gate.champion_accuracy if gate else None,
        p_value=gate.p_value if gate else p_value,
        alias=alias,
        reason=reason,
        test_set=test_set,
    )
