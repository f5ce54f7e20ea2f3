"""The ingest service's cost per POST, and Feast's `push` against the write the ingestor makes.

The real stream hour (moved after the batch data), cut into POSTs of --batch events, goes through
the ingestor the service runs (`Ingestor.ingest`: pseudonyms, ids, the users' states read, merged
and written, the event log appended), in-process, one thread, against a real online store (a
redis-server, and SQLite). Then the same state rows are written both ways, alternating:

* `FeatureStore.push(source, rows, to=PushMode.ONLINE)`: Feast 0.67's push, which ends by listing
  the feature services with the registry cache bypassed (a re-read of the registry every call);
* `models.features.store.push_online`: `write_to_online_store` for each view the push source feeds,
  the registry cache kept; the stored states are checked equal.
Each way writes every recorded batch in turn, on a FeatureStore of its own.

Usage: python benchmarks/ingest_push.py [--batch 20] [--posts 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import environment, percentiles, print_table, redis_server, write_results  # noqa: E402

STREAM_START = pd.Timestamp("2017-12-04", tz="UTC")


def _stream() -> pd.DataFrame:
    from benchmarks.catalogue_serving import STREAM
    from models.data.replay import load_stream

    events = load_stream(STREAM)
    events["event_timestamp"] += STREAM_START - events["event_timestamp"].min()
    return events


def measure(events: pd.DataFrame, batch: int, posts: int) -> list[dict]:
    """Per-POST ingest times, then the recorded state writes replayed both ways."""
    from feast.data_source import PushMode

    from feature_repo.contract import RECENT_EVENT_IDS, RECENT_PUSH_SOURCE, RECENT_VIEW, USER_ID
    from models import pipeline
    from models.data.event_log import Ingestor
    from models.features.store import open_store, push_online
    from models.settings import get_settings

    class Recording(Ingestor):
        """The service's ingestor, keeping a copy of every batch of state rows it writes."""

        written: list[pd.DataFrame] = []

        def _push(self, rows: list[dict]) -> None:
            super()._push(rows)
            if rows:
                self.written.append(pd.DataFrame(rows))

    settings = get_settings()
    pipeline.apply_features(settings)
    ingestor = Recording(settings)
    bodies = [events.iloc[k : k + batch] for k in range(0, batch * (posts + 20), batch)]
    for body in bodies[:20]:  # warm-up: imports, connections, the registry's first read
        ingestor.ingest(body)
    ingestor.written.clear()
    ingest_s = []
    for body in bodies[20:]:
        began = time.perf_counter()
        result = ingestor.ingest(body)
        ingest_s.append(time.perf_counter() - began)
        assert result.deferred == 0 and result.accepted > 0, result
    # One way after the other, each on a store of its own: alternating them would make each pay
    # for the other's registry re-read.

    ways = {"FeatureStore.push": [], "push_online": []}
    for way, samples in ways.items():
        store = open_store(settings)
        for frame in ingestor.written:
            began = time.perf_counter()
            if way == "push_online":
                push_online(store, RECENT_PUSH_SOURCE, frame)
            else:
                store.push(RECENT_PUSH_SOURCE, frame, to=PushMode.ONLINE)
            samples.append(time.perf_counter() - began)
    last = ingestor.written[-1]
    stored = store.get_online_features(
        features=[f"{RECENT_VIEW}:{RECENT_EVENT_IDS}"], entity_rows=[{USER_ID: u} for u in last[USER_ID]]
    ).to_dict()[RECENT_EVENT_IDS]
    assert stored == [list(ids) for ids in last[RECENT_EVENT_IDS]], "the written states differ"
    rows = [
        {
            "call": f"Ingestor.ingest, {batch} events",
            **_ms(ingest_s),
            "events_per_s": round(batch / _median(ingest_s)),
        }
    ]
    rows += [
        {"call": f"{way}, one POST's states", **_ms(samples), "events_per_s": None}
        for way, samples in ways.items()
    ]
    return rows


def _median(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def _ms(samples: list[float]) -> dict:
    shown = percentiles(samples)
    return {k: round(v, 2) for k, v in shown.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=20, help="events per POST")
    parser.add_argument("--posts", type=int, default=300, help="POSTs measured (after 20 of warm-up)")
    args = parser.parse_args()
    events = _stream()
    rows: list[dict] = []
    before = os.getloadavg()
    for online in ("redis", "sqlite"):
        with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, redis_server() as redis:
            settings = {"CTR_DATA_DIR": tmp, "CTR_ONLINE_STORE": online, "CTR_REDIS_CONNECTION": redis}
            with environment(**settings):
                rows += [{"online_store": online, **row} for row in measure(events, args.batch, args.posts)]
    after = os.getloadavg()
    ratio = {r["online_store"]: r["p50_ms"] for r in rows if r["call"].startswith("FeatureStore.push")}
    new = {r["online_store"]: r["p50_ms"] for r in rows if r["call"].startswith("push_online")}
    print_table("Ingest per POST, and Feast's push against push_online (real stream hour)", rows)
    write_results(
        "ingest_push",
        "Ingest per POST, and Feast's push against push_online (real stream hour)",
        rows,
        [
            "The real stream hour (real events, not synthetic) in POSTs of "
            f"{args.batch} events through the service's ingestor, in-process, one thread; the online "
            "store a real redis-server 7 or SQLite in a fresh data dir. The same state rows then written "
            "by each call in turn (all by one, then all by the other); the stored states checked equal.",
            "Median push / push_online: "
            + ", ".join(f"{k} {ratio[k] / new[k]:.1f}x" for k in ratio if new.get(k)),
            f"Load averages (1/5/15 min) before {before[0]:.1f}/{before[1]:.1f}/{before[2]:.1f}, "
            f"after {after[0]:.1f}/{after[1]:.1f}/{after[2]:.1f}.",
        ],
    )


if __name__ == "__main__":
    main()
