"""The promotion gate's rule: a model with any failed check never becomes champion, the first
sane model of an empty registry does, and after that only a model that beats the champion by
more than the required gain."""

from __future__ import annotations

import pytest

from models.evaluation.promotion import decide


def test_a_failed_check_refuses_the_model_whatever_its_auc():
    decision = decide(0.99, ["calibration error 0.2 > CTR_MAX_CALIBRATION_ERROR 0.05"], 0.5, 0.001)
    assert decision["promoted"] is False and decision["champion_changed"] is False
    reason = "sanity checks failed: calibration error 0.2 > CTR_MAX_CALIBRATION_ERROR 0.05"
    assert decision["reason"] == reason


def test_every_failure_is_named_in_the_reason():
    decision = decide(0.7, ["3 of 10 test scores are NaN or infinite", "scoring is slow"], None, 0.0)
    assert "NaN" in decision["reason"] and "scoring is slow" in decision["reason"]
    assert decision["promoted"] is False


def test_the_first_sane_model_of_an_empty_registry_is_promoted():
    decision = decide(0.6, [], None, 0.001)
    assert decision == {
        "promoted": True,
        "champion_changed": True,
        "reason": "first model in an empty registry, sanity checks passed",
    }


@pytest.mark.parametrize(
    ("candidate", "champion", "gain", "promoted"),
    [
        (0.7300, 0.7200, 0.001, True),
        (0.7200, 0.7200, 0.0, False),  # an equal model is not promoted
        (0.7205, 0.7200, 0.001, False),  # better, but not by the required gain
        (0.7100, 0.7200, 0.001, False),  # worse
    ],
)
def test_a_challenger_must_beat_the_champion_by_more_than_the_gain(candidate, champion, gain, promoted):
    decision = decide(candidate, [], champion, gain)
    assert decision["promoted"] is promoted and decision["champion_changed"] is promoted
    assert decision["required_auc"] == pytest.approx(champion + gain)
    assert decision["champion_auc"] == champion
    assert decision["reason"].startswith(f"test AUC {candidate:.4f} {'>' if promoted else '<='} required")
