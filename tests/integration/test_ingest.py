"""Live ingestion on real Feast stores (SQLite and Redis) and through a real `bentoml serve`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest

from feature_repo.contract import (
    REALTIME_FEATURE_SERVICE,
    RECENT_FEATURES,
    RECENT_ITEMS,
    RECENT_VIEW,
    REQUEST_TS,
)
from tests.integration.conftest import ROOT, bentoml_serve, project_environment, redis_process

pytestmark = pytest.mark.integration

T = pd.Timestamp("2017-11-26 01:00:00", tz="UTC")


def _events(rows) -> pd.DataFrame:
    from models.data.event_log import canonical

    return canonical(
        {
            "user_id": u,
            "item_id": i,
            "category_id": c,
            "behavior": b,
            "event_timestamp": T + pd.Timedelta(seconds=s),
        }
        for u, i, c, b, s in rows
    )


@pytest.fixture(params=["sqlite", "redis"])
def ingestor(request, tmp_path, use_environment):
    extra = {"CTR_ONLINE_STORE": request.param}
    if request.param == "redis":
        extra["CTR_REDIS_CONNECTION"] = request.getfixturevalue("redis_server")
        import redis

        host, port = extra["CTR_REDIS_CONNECTION"].split(":")
        redis.Redis(host=host, port=int(port)).flushall()  # the server is shared by the session
    use_environment(project_environment(tmp_path, **extra))
    from models.data.event_log import Ingestor
    from models.features.store import apply_repo
    from models.settings import get_settings

    settings = get_settings()
    apply_repo(settings)
    return Ingestor(settings)


def _realtime(ingestor, user: int, item: int, at: pd.Timestamp) -> dict:
    store = ingestor.store
    return store.get_online_features(
        features=store.get_feature_service(REALTIME_FEATURE_SERVICE),
        entity_rows=[{"user_id": user, "item_id": item, REQUEST_TS: int(at.timestamp())}],
    ).to_dict()


def _state(ingestor, user: int) -> dict:
    refs = [f"{RECENT_VIEW}:{name}" for name in RECENT_FEATURES]
    return ingestor.store.get_online_features(features=refs, entity_rows=[{"user_id": user}]).to_dict()


def test_a_pushed_event_is_read_back_right_after_the_push(ingestor):
    before = _realtime(ingestor, 1, 10, T + pd.Timedelta(seconds=30))
    assert before["user_events_5m"] == [0.0] and before["item_seen_recently"] == [0.0]

    result = ingestor.ingest(_events([(1, 10, 100, "pv", 0), (1, 11, 100, "cart", 20)]))
    assert (result.accepted, result.duplicates, result.users_updated) == (2, 0, 1)
    after = _realtime(ingestor, 1, 10, T + pd.Timedelta(seconds=30))
    assert after["user_events_5m"] == [2.0]
    assert after["user_intents_1h"] == [1.0]
    assert after["item_seen_recently"] == [1.0]
    assert after["user_seconds_since_last_event"] == [10.0]


def test_delivering_the_same_events_twice_leaves_the_same_values(ingestor):
    events = _events([(2, 20 + k, 200 + k % 2, "pv", 5 * k) for k in range(30)])
    first = ingestor.ingest(events)
    state = _state(ingestor, 2)
    again = ingestor.ingest(events.sample(frac=1.0, random_state=1))  # redelivered, shuffled
    partly = ingestor.ingest(pd.concat([events.iloc[:5], events.iloc[:5]]))  # and repeated in a batch
    assert (first.accepted, again.accepted, partly.accepted) == (30, 0, 0)
    # the state keeps the last 20: the 10 older ones come back as "late", logged but not applied
    assert (again.duplicates, again.late, partly.duplicates, partly.late) == (20, 10, 5, 5)
    assert _state(ingestor, 2) == state
    assert state[RECENT_ITEMS][0] == list(range(30, 50))  # the last 20 of items 20..49, oldest first
    assert len(ingestor.log.read()) == 30  # each id once, as the batch job reads the log


def test_logged_events_reach_the_next_batch_run(ingestor, tmp_path):
    from models import pipeline
    from models.settings import get_settings

    ingestor.ingest(_events([(3, 30, 300, "pv", 0), (3, 31, 300, "buy", 60)]))
    raw = tmp_path / "raw.csv"
    start = int(T.timestamp())
    raw.write_text(f"3,30,300,pv,{start}\n4,40,400,pv,{start + 5}\n")  # the first is in the log too
    settings = get_settings()
    summary = pipeline.ingest(type(settings)(**{**settings.__dict__, "raw_events": raw}))
    assert summary["rows"] == 3 and summary["event_log_rows"] == 2 and summary["duplicates_dropped"] == 1


def test_events_sent_while_redis_is_down_are_logged_and_applied_when_it_is_back(tmp_path, use_environment):
    from models.data.event_log import Ingestor
    from models.features.store import apply_repo, fail_fast, open_store
    from models.settings import get_settings
    from services.degradation import StoreGuard

    (tmp_path / "redis").mkdir()
    with redis_process(tmp_path / "redis") as redis:
        use_environment(
            project_environment(tmp_path, CTR_ONLINE_STORE="redis", CTR_REDIS_CONNECTION=redis.connection)
        )
        settings = get_settings()
        apply_repo(settings)
        # As the ingest service does: no client retries, and a deadline on store calls.
        store = fail_fast(open_store(settings))
        ingestor = Ingestor(settings, store=store, guard=StoreGuard(0.5, retry_after_s=0))
        ingestor.ingest(_events([(5, 50, 500, "pv", 0)]))

        redis.stop()
        first = ingestor.ingest(_events([(5, 51, 500, "cart", 10), (6, 60, 600, "pv", 12)]))
        second = ingestor.ingest(_events([(5, 52, 501, "pv", 20), (5, 52, 501, "pv", 20)]))
        assert (first.received, first.accepted, first.deferred, first.pending) == (2, 0, 2, 2)
        assert (second.deferred, second.duplicates, second.pending) == (1, 1, 3)
        assert "ConnectionError" in ingestor.store_error
        assert len(ingestor.log.read()) == 4  # every event is in the offline log at once
        assert ingestor.retry_pending() == 3  # still down: kept

        redis.start()
        assert ingestor.retry_pending() == 0
        assert ingestor.store_error == ""
        assert _state(ingestor, 5)[RECENT_ITEMS] == [[50, 51, 52]]
        assert _state(ingestor, 6)[RECENT_ITEMS] == [[60]]
        # Delivered again after the recovery: recognised, nothing counted twice.
        again = ingestor.ingest(_events([(5, 51, 500, "cart", 10)]))
        assert (again.accepted, again.duplicates, again.pending) == (0, 1, 0)
        assert len(ingestor.log.read()) == 4


@pytest.fixture(scope="module")
def ingest_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("ingest")
    env = project_environment(data_dir)
    apply = subprocess.run(
        ["ctr", "run", "--stage", "apply_features"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert apply.returncode == 0, apply.stderr[-3000:]
    with bentoml_serve(["ctr", "ingest"], env, data_dir / "ingest.log") as url:
        yield {"url": url, "env": env, "data_dir": data_dir}


def _stream() -> Path:
    """The shared hour of live traffic, else the committed sample (the replayer sorts it by time)."""
    shared = ROOT.parent / "shared/data/taobao_userbehavior/userbehavior_stream_20171126T0100Z_0200Z.csv"
    return shared if shared.exists() else ROOT / "data/sample/userbehavior_user_slice.csv.gz"


def _replay(server, limit: int) -> dict:
    import json

    stream = _stream()
    result = subprocess.run(
        ["ctr", "replay", str(stream), "--speedup", "0", "--limit", str(limit), "--url", server["url"]],
        env=server["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{limit:,}/{limit:,} events" in result.stderr  # the progress line reached the end
    # Nothing but the progress line: no log line per HTTP request written over it.
    assert "HTTP Request" not in result.stderr, result.stderr[:2000]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_replaying_the_stream_twice_through_the_service_counts_each_event_once(
    ingest_server, use_environment
):
    first = _replay(ingest_server, 3000)
    assert first["sent"] == first["accepted"] == 3000
    use_environment(ingest_server["env"])
    from models.data.event_log import EventLog
    from models.data.replay import load_stream
    from models.features.store import open_store
    from models.settings import get_settings

    settings = get_settings()
    store = open_store(settings)
    refs = [f"{RECENT_VIEW}:{name}" for name in RECENT_FEATURES]
    users = [{"user_id": int(u)} for u in load_stream(_stream())["user_id"].iloc[:3000].unique()[:20]]
    state = store.get_online_features(features=refs, entity_rows=users).to_dict()
    assert all(items for items in state[RECENT_ITEMS])

    second = _replay(ingest_server, 3000)
    # all known: duplicates, or older than a user's kept last events ("late": logged, not applied)
    assert second["accepted"] == 0 and second["duplicates"] + second["late"] == 3000
    assert store.get_online_features(features=refs, entity_rows=users).to_dict() == state
    assert len(EventLog(settings.event_log_dir).read()) == 3000


def test_ctrl_c_stops_a_replay_with_the_totals_so_far(ingest_server, tmp_path):
    """The README's replay at 60x (the hour takes a minute), stopped by Ctrl-C once it is sending."""
    import json
    import signal
    import time

    stdout, stderr = tmp_path / "replay.out", tmp_path / "replay.err"
    command = ["ctr", "replay", str(_stream()), "--speedup", "60", "--url", ingest_server["url"]]

    def as_in_a_terminal() -> None:
        # a test run started in the background (nohup, `&`) ignores SIGINT, and so would the
        # replay it starts: Ctrl-C reaches a replay started from a terminal with the default action
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    with stdout.open("w") as out, stderr.open("w") as err:
        replay = subprocess.Popen(
            command,
            env=ingest_server["env"],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            preexec_fn=as_in_a_terminal,
        )
    try:
        deadline = time.monotonic() + 120
        while " events (" not in stderr.read_text():  # the progress line: events are going out
            assert replay.poll() is None and time.monotonic() < deadline, stderr.read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(1)
        replay.send_signal(signal.SIGINT)
        returncode = replay.wait(timeout=60)
    finally:
        if replay.poll() is None:
            replay.kill()
            replay.wait()
    errors = stderr.read_text()
    assert returncode == 130, errors[-3000:]
    assert "Traceback" not in errors and "KeyboardInterrupt" not in errors, errors[-3000:]
    assert "HTTP Request" not in errors, errors[:2000]
    totals = json.loads(stdout.read_text().strip().splitlines()[-1])
    assert totals["interrupted"] is True
    assert 0 < totals["sent"] < len(_stream().read_text().splitlines())
    assert totals["sent"] == totals["accepted"] + totals["duplicates"] + totals["late"]


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"behavior": "click"}, "behavior"),
        ({"user_id": -1}, "user_id"),
        ({"event_timestamp": "2017-11-26T09:00:00"}, "timezone"),
        ({"item_id": "abc"}, "item_id"),
    ],
)
def test_bad_events_get_a_400_that_names_the_field(ingest_server, event, expected):
    good = {"user_id": 1, "item_id": 2, "category_id": 3, "behavior": "pv", "event_timestamp": 1511658000}
    response = httpx.post(f"{ingest_server['url']}/events", json={"events": [{**good, **event}]}, timeout=30)
    assert response.status_code == 400
    assert expected in response.text
