import pandas as pd
import pytest

from models.data.validation import DataValidationError, raise_for_failures, validate_events, write_outcome
from models.settings import get_settings


@pytest.fixture(scope="module")
def real_events():
    from models.data.events import load_events

    return load_events(get_settings().raw_events)


def test_real_slice_quarantines_exactly_the_rows_before_the_period(real_events):
    s = get_settings()
    outcome = validate_events(real_events, s.window_start, s.window_end, s.max_bad_row_fraction)
    assert outcome.success
    assert len(outcome.quarantined) == 35  # the dataset's documented anomalies
    assert len(outcome.accepted) + len(outcome.quarantined) == len(real_events)
    assert (outcome.quarantined["event_timestamp"] < s.window_start).all()
    assert outcome.quarantined["failed_checks"].str.contains("event_timestamp").all()


def test_broken_batch_fails_with_a_clear_message_and_its_rows_in_quarantine(real_events, tmp_path):
    s = get_settings()
    batch = real_events.head(2000).copy()
    batch["behavior"] = batch["behavior"].astype(object)
    batch.loc[:199, "behavior"] = "click"  # 10% unknown behaviour
    batch.loc[500:549, "user_id"] = pd.NA  # 2.5% null ids
    outcome = validate_events(batch, s.window_start, s.window_end, s.max_bad_row_fraction)
    assert not outcome.success
    assert len(outcome.quarantined) == 250
    assert len(outcome.accepted) + len(outcome.quarantined) == 2000
    report = write_outcome(outcome, tmp_path / "q")
    with pytest.raises(DataValidationError) as error:
        raise_for_failures(outcome, report)
    message = str(error.value)
    assert "expect_column_values_to_be_in_set[behavior] (200 rows" in message
    assert "'click'" in message
    assert "expect_column_values_to_not_be_null[user_id] (50 rows" in message
    quarantined = pd.read_parquet(tmp_path / "q/rows.parquet")
    assert sorted(quarantined["source_row"]) == sorted(
        batch.loc[list(range(200)) + list(range(500, 550)), "source_row"]
    )


def test_missing_column_fails_the_batch(real_events):
    s = get_settings()
    outcome = validate_events(
        real_events.head(100).drop(columns=["category_id"]), s.window_start, s.window_end, 0.01
    )
    assert not outcome.success
    assert any("expect_column_to_exist[category_id]" in f for f in outcome.failures)


def test_empty_batch_fails(real_events):
    s = get_settings()
    outcome = validate_events(real_events.head(0), s.window_start, s.window_end, 0.01)
    assert not outcome.success
