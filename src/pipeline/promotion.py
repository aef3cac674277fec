"""The promotion gate: does a candidate beat the champion on the same test set?

Pure functions over paired per-sketch correctness, so the rule is testable without a registry.
"""

from __future__ import annotations

import dataclasses

import numpy as np


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
    gain = candidate_accuracy - champion_accuracy
    if gain <= max(margin, 0.0):
        promote, reason = False, f"accuracy gain {gain:+.4f} is not above the margin {margin:.4f}"
    elif p_value >= alpha:
        promote, reason = False, f"accuracy gain {gain:+.4f} is not significant (McNemar p={p_value:.3g} >= {alpha})"
    else:
        promote, reason = True, f"accuracy gain {gain:+.4f} > margin {margin:.4f}, McNemar p={p_value:.3g} < {alpha}"
    return GateResult(candidate_accuracy, champion_accuracy, b, c, p_value, promote, reason)


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


def promote_best(
    settings,
    candidates: list,
    sketches: list[np.ndarray],
    truth: list[str],
    test_set: str,
    predictions: dict[str, list[str]] | None = None,
) -> PromotionDecision:
    """Compare the best candidate with the current champion on one test set and move the aliases.

    Both models are judged on the same raw sketches and compared by class name. The champion is
    loaded and scored the way serving uses it (with its own logged preprocessing), so a champion
    trained on another dataset or class list is re-evaluated on this test set rather than trusted
    by its old score; a candidate whose ``predictions`` on these sketches are known is not scored again.

    Args:
        settings: the pipeline settings (registered model name, margin, alpha, tracking store).
        candidates: this run's registered versions (``tracking.RegisteredVersion``).
        sketches: the test set's raw stroke-3 sketches.
        truth: their class names.
        test_set: a name for the test set, recorded with the decision.
        predictions: version -> its predicted class names on these sketches, where already known
            (this run's candidates, from their evaluation); other versions are loaded and scored.
    """
    from pipeline import tracking
    from pipeline.serving import load_classifier

    if not candidates:
        raise ValueError("no candidate versions to promote")
    name = settings.registered_model_name
    best = max(candidates, key=lambda c: (c.test_accuracy, -int(c.version)))
    champion = tracking.alias_version(name, tracking.CHAMPION)
    gate = None
    if champion is None:
        alias, reason = tracking.CHAMPION, "no champion yet"
    elif champion == best.version:
        alias, reason = tracking.CHAMPION, "already the champion"
    else:
        truth_array = np.asarray(truth)
        known = predictions or {}
        correct = {
            version: np.asarray(
                known[version]
                if version in known
                else load_classifier(settings, f"models:/{name}/{version}").top_classes(sketches)
            )
            == truth_array
            for version in (best.version, champion)
        }
        gate = compare_on_same_test_set(
            correct[best.version], correct[champion], settings.promotion_margin, settings.promotion_alpha
        )
        alias, reason = (tracking.CHAMPION if gate.promote else tracking.CHALLENGER), gate.reason
    if alias == tracking.CHAMPION and champion != best.version:
        tracking.set_champion(name, best.version)
    elif alias == tracking.CHALLENGER:
        tracking.set_alias(name, tracking.CHALLENGER, best.version)
    decision = PromotionDecision(
        candidate_version=best.version,
        candidate_accuracy=gate.candidate_accuracy if gate else best.test_accuracy,
        champion_version=champion,
        champion_accuracy=gate.champion_accuracy if gate else None,
        p_value=gate.p_value if gate else None,
        alias=alias,
        reason=reason,
        test_set=test_set,
    )
    tracking.record_decision(
        name,
        best.version,
        {
            "promotion_verdict": alias,
            "promotion_reason": reason,
            "promotion_test_set": test_set,
            "promotion_compared_to": champion or "none",
            "promotion_p_value": "n/a" if gate is None else f"{gate.p_value:.4g}",
        },
    )
    return decision
