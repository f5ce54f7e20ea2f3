"""Online feature benchmarks on SQLite and on a real redis-server started here:

* freshness: an event POSTed to the ingest service (a real `bentoml serve`), then read back by
  another process through Feast; p50/p99 of (readable - ingest call returned), and of the call itself;
* read latency of the ranker's FeatureService for 1 user + 100 candidate items, next to the floor:
  the same Redis hashes read with redis-py in one pipeline.

Data: the Taobao user slice, through the project's own stages (ingest .. materialize).
Usage: python benchmarks/online_features.py [--reads 300] [--events 300]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment, free_port, percentiles, print_table, redis_server, write_results  # noqa: E402
from feature_repo.contract import (  # noqa: E402
    ITEM_FEATURES,
    ITEM_VIEW,
    RANKER_FEATURE_SERVICE,
    RECENT_EVENT_IDS,
    RECENT_VIEW,
    USER_FEATURES,
    USER_VIEW,
)

ROOT = Path(__file__).resolve().parent.parent


def build(data_dir: Path) -> None:
    from models import pipeline
    from models.settings import get_settings

    settings = get_settings()
    for stage in (pipeline.ingest, pipeline.validate, pipeline.apply_features, pipeline.build_features):
        stage(settings)
    print(f"built features under {data_dir}", flush=True)


def materialize() -> None:
    from models import pipeline
    from models.settings import get_settings

    settings = get_settings()
    pipeline.apply_features(settings)
    pipeline.materialize(settings)


def candidates(data_dir: Path) -> tuple[int, list[int]]:
    events = pd.read_parquet(data_dir / "lake/accepted_events.parquet")
    user = int(events["user_id"].value_counts().index[0])
    items = events.loc[events["behavior"] == "pv", "item_id"].drop_duplicates().tail(100).astype(int).tolist()
    return user, items


def time_reads(fn, n: int) -> list[float]:
    for _ in range(20):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


def read_latency(store_name: str, user: int, items: list[int], n: int, redis_url: str | None) -> list[dict]:
    from models.feature_store import open_store
    from models.settings import get_settings

    settings = get_settings()
    store = open_store(settings)
    service = store.get_feature_service(RANKER_FEATURE_SERVICE)
    rows = [{"user_id": user, "item_id": i} for i in items]
    plain = [f"{USER_VIEW}:{f}" for f in USER_FEATURES] + [f"{ITEM_VIEW}:{f}" for f in ITEM_FEATURES]
    check = store.get_online_features(features=service, entity_rows=rows).to_dict()
    assert check["user_pv_7d"][0] is not None and sum(v is not None for v in check["item_pv_7d"]) > 0
    out = [
        {
            "store": store_name,
            "read": f"{RANKER_FEATURE_SERVICE} (views + on-demand affinity)",
            "rows": len(rows),
            **percentiles(
                time_reads(lambda: store.get_online_features(features=service, entity_rows=rows), n)
            ),
        },
        {
            "store": store_name,
            "read": "user + item views only (Feast)",
            "rows": len(rows),
            **percentiles(time_reads(lambda: store.get_online_features(features=plain, entity_rows=rows), n)),
        },
    ]
    if redis_url:
        out.append(
            {
                "store": store_name,
                "read": "floor: same hashes, redis-py pipelined HMGET",
                "rows": len(rows),
                **percentiles(time_reads(redis_floor(store, redis_url, user, items), n)),
            }
        )
    return out


def redis_floor(store, redis_url: str, user: int, items: list[int]):
    import redis
    from feast.infra.key_encoding_utils import serialize_entity_key  # noqa: F401  (same key encoding)
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port))
    project, version = store.config.project, store.config.entity_key_serialization_version

    def key(name: str, value: int) -> bytes:
        return _redis_key(
            project, EntityKey(join_keys=[name], entity_values=[Value(int64_val=value)]), version
        )

    user_fields = [_mmh3(f"{USER_VIEW}:{f}") for f in USER_FEATURES] + [f"_ts:{USER_VIEW}"]
    item_fields = [_mmh3(f"{ITEM_VIEW}:{f}") for f in ITEM_FEATURES] + [f"_ts:{ITEM_VIEW}"]
    keys = [(key("user_id", user), user_fields)] + [(key("item_id", i), item_fields) for i in items]

    def read():
        pipe = client.pipeline(transaction=False)
        for k, fields in keys:
            pipe.hmget(k, fields)
        values = pipe.execute()
        assert values[0][0] is not None
        return [[Value.FromString(v) if v else None for v in row] for row in values]  # decode, as Feast must

    return read


def freshness(store_name: str, data_dir: Path, n: int, env: dict) -> list[dict]:
    from models.feature_store import open_store
    from models.settings import get_settings

    port = free_port()
    log = data_dir / f"ingest-{store_name}.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "ctr"), "ingest", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        store = open_store(get_settings())
        refs = [f"{RECENT_VIEW}:{RECENT_EVENT_IDS}"]
        stream = Path(
            ROOT.parent / "shared/data/taobao_userbehavior/userbehavior_stream_20171126T0100Z_0200Z.csv"
        )
        from models.events import event_ids
        from models.replay import load_stream, payload

        # The hour of real traffic, moved after the batch data so that every event is the user's newest
        # (an event older than a user's kept last events is logged but not applied, and would never show).
        events = load_stream(stream).iloc[: n + 20]
        events["event_timestamp"] += pd.Timestamp("2017-12-04", tz="UTC") - events["event_timestamp"].min()
        ids = event_ids(events)
        visible, call, end_to_end, polls = [], [], [], []
        with httpx.Client(base_url=url, timeout=30) as client:
            for k in range(len(events)):
                one = events.iloc[k : k + 1]
                user = int(one["user_id"].iloc[0])
                sent = time.perf_counter()
                response = client.post("/events", json=payload(one))
                returned = time.perf_counter()
                assert response.status_code == 200, response.text
                tries = 0
                while True:
                    tries += 1
                    if time.perf_counter() - returned > 10:
                        raise RuntimeError(f"event {k} not readable 10 s after its ingest call returned")
                    got = store.get_online_features(features=refs, entity_rows=[{"user_id": user}]).to_dict()
                    if int(ids[k]) in (got[RECENT_EVENT_IDS][0] or []):
                        break
                seen = time.perf_counter()
                if k >= 20:  # warm-up
                    visible.append(seen - returned)
                    call.append(returned - sent)
                    end_to_end.append(seen - sent)
                    polls.append(tries)
        return [
            {
                "store": store_name,
                "measure": "ingest call returned -> readable by another process",
                **percentiles(visible),
                "reads_needed_max": max(polls),
            },
            {
                "store": store_name,
                "measure": "POST /events (1 event) round trip",
                **percentiles(call),
                "reads_needed_max": "",
            },
            {
                "store": store_name,
                "measure": "POST sent -> readable (end to end)",
                **percentiles(end_to_end),
                "reads_needed_max": "",
            },
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--events", type=int, default=300)
    args = parser.parse_args()
    import os

    reads, fresh = [], []
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        data_dir = Path(tmp)
        base = {"CTR_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
        with environment(**base, CTR_ONLINE_STORE="sqlite"):
            build(data_dir)
        user, items = candidates(data_dir)
        for name, extra in (("sqlite", {}), ("redis", {"CTR_REDIS_CONNECTION": redis_url})):
            with environment(**base, CTR_ONLINE_STORE=name, **extra):
                materialize()
                reads += read_latency(name, user, items, args.reads, redis_url if name == "redis" else None)
                fresh += freshness(name, data_dir, args.events, dict(os.environ))
    print_table("Online read, 1 user + 100 items", reads)
    print_table("Event-to-online freshness", fresh)
    notes = [
        "Taobao user slice (84,252 accepted events); the 100 candidates are the last 100 distinct "
        "viewed items.",
        "Read: in-process FeatureStore.get_online_features, registry cache warm "
        "(CTR_FEAST_REGISTRY_TTL_S=10); 20 warm-up reads, then the samples.",
        "Freshness: one event per POST to `bentoml serve services.ingest:Ingest`; the benchmark process "
        "polls Feast until the event's id is in the user's recent_event_ids. The push happens inside "
        "the request, so reads_needed_max = 1 means the first read after the call already saw it.",
    ]
    write_results("online_read", "Online read latency: 1 user + 100 items", reads, notes[:2])
    write_results("freshness", "Event-to-online freshness", fresh, [notes[2]])


if __name__ == "__main__":
    main()
