"""The event log, event validation and the replay schedule, without services."""

import pandas as pd
import pytest

from models.data.event_log import EventLog, canonical
from models.data.events import event_ids
from models.data.replay import batches

T = pd.Timestamp("2017-11-26 15:59:58", tz="UTC")


def _event(**change):
    return {
        "user_id": 1,
        "item_id": 2,
        "category_id": 3,
        "behavior": "pv",
        "event_timestamp": 1511711998,
        **change,
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [({"behavior": "click"}, "behavior"), ({"user_id": -3}, "user_id"), ({"item_id": 2.5}, "item_id")],
)
def test_canonical_rejects_bad_fields_by_name(change, field):
    with pytest.raises(ValueError, match=field):
        canonical([_event(**change)])


def test_event_ids_depend_on_every_field_and_nothing_else():
    base = canonical([_event()])
    same = canonical([_event(event_timestamp="2017-11-26T23:59:58+08:00")])  # the same instant
    assert event_ids(base)[0] == event_ids(same)[0]
    for change in (
        {"user_id": 9},
        {"item_id": 9},
        {"category_id": 9},
        {"behavior": "buy"},
        {"event_timestamp": 0},
    ):
        assert event_ids(canonical([_event(**change)]))[0] != event_ids(base)[0]


def test_event_log_partitions_by_day_and_reads_each_id_once(tmp_path):
    log = EventLog(tmp_path / "events")
    events = canonical([_event(event_timestamp=1511740798), _event(event_timestamp=1511740802, item_id=5)])
    events["event_id"] = event_ids(events)
    events["ingested_at"] = pd.Timestamp.now(tz="UTC")
    log.append(events)  # either side of midnight UTC
    log.append(events.iloc[:1])  # a redelivery that reached the log
    assert sorted(p.name for p in (tmp_path / "events").iterdir()) == ["date=2017-11-26", "date=2017-11-27"]
    assert not list((tmp_path / "events").rglob("*.partial"))
    assert len(log.read()) == 2
    next_day = log.read(start=pd.Timestamp("2017-11-27", tz="UTC"))
    assert next_day["item_id"].tolist() == [5]


def test_replay_schedule_follows_the_recorded_clock_sped_up():
    events = canonical(
        [_event(event_timestamp=1511658000 + s, item_id=s) for s in (0, 0, 1, 30, 60)]
    ).sort_values("event_timestamp")
    schedule = [(at, batch["item_id"].tolist()) for at, batch in batches(events, speedup=60, max_batch=10)]
    # 60x: one recorded minute is one second; events in the same 50 ms tick go together
    assert schedule == [(0.0, [0, 0, 1]), (0.5, [30]), (1.0, [60])]
    unlimited = list(batches(events, speedup=0, max_batch=2))
    assert [len(b) for _, b in unlimited] == [2, 2, 1] and all(at == 0 for at, _ in unlimited)


def test_a_replay_that_fell_behind_sends_what_is_due_in_one_batch():
    events = canonical(
        [_event(event_timestamp=1511658000 + s, item_id=s) for s in range(0, 120, 6)]
    ).sort_values("event_timestamp")
    # 60x: one event every 0.1 s. On time, each goes alone; 1 s behind, the 11 events due by then
    # go together (at most max_batch), then the rest, due in the next ticks, one by one again.
    on_time = [len(batch) for _, batch in batches(events, speedup=60, max_batch=8, elapsed=lambda: 0.0)]
    assert on_time == [1] * 20
    late = batches(events, speedup=60, max_batch=8, elapsed=lambda: 1.0)
    assert [len(batch) for _, batch in late] == [8, 3, *[1] * 9]
