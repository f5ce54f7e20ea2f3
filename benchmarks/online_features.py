"""Online feature benchmarks on SQLite and on a real redis-server started here:

* freshness: an event POSTed to the ingest service (a real `bentoml serve`), then read back by
  another process through Feast; p50/p99 of (readable - ingest call returned), and of the call itself;
* read latency of the rankers' FeatureServices for 1 user + 100 candidate items, through Feast's
  get_online_features and through models.features.online_reader.OnlineFeatureReader (item cache warm, a
  realistic candidate mix, cache off), through Feast's own Python feature server (`feast serve` in
  feature_repo/, POST /get-online-features over HTTP), next to the floor: the same Redis hashes
  read with redis-py in one pipeline.

Data: the Taobao user slice, through the project's own stages (ingest .. materialize).
Usage: python benchmarks/online_features.py [--reads 300] [--events 300] [--no-freshness]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment, percentiles, print_table, redis_server, write_results  # noqa: E402
from feature_repo.contract import (  # noqa: E402
    ITEM_FEATURES,
    ITEM_VIEW,
    MODEL_FEATURE_SERVICE,
    RANKER_FEATURE_SERVICE,
    RECENT_EVENT_IDS,
    RECENT_FEATURES,
    RECENT_VIEW,
    REQUEST_TS,
    USER_FEATURES,
    USER_LIST_FEATURES,
    USER_VIEW,
)
from models.ops.processes import (  # noqa: E402
    free_port,
    process_group,
    start_process_group,
    stop_process_group,
    wait_ready,
)

ROOT = Path(__file__).resolve().parent.parent
FEAST_SERVE = "feast serve (Python feature server, 1 worker): POST /get-online-features, JSON"
POPULAR_ITEMS = 5000  # the realistic mix draws candidates from this many most-viewed items
ITEM_CACHE_TTL_S = 30.0  # models/settings.py's default


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


@dataclass
class Candidates:
    user: int
    items: list[int]  # the last 100 distinct viewed items
    request_ts: int  # a minute after the user's last event
    popular: list[int]  # the most-viewed items, and their views as draw weights
    weights: list[int]


def candidates(data_dir: Path) -> Candidates:
    events = pd.read_parquet(data_dir / "lake/accepted")  # every day partition
    user = int(events["user_id"].value_counts().index[0])
    views = events.loc[events["behavior"] == "pv", "item_id"]
    items = views.drop_duplicates().tail(100).astype(int).tolist()
    last = events.loc[events["user_id"] == user, "event_timestamp"].max()
    popular = views.value_counts().head(POPULAR_ITEMS)
    return Candidates(
        user, items, int(last.timestamp()) + 60, popular.index.astype(int).tolist(), popular.tolist()
    )


def time_reads(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


@contextlib.contextmanager
def feast_serve(data_dir: Path, c: Candidates, log: Path):
    """`feast serve` in feature_repo/ on the stores the project wrote feature_store.yaml for (as a
    user runs it: FEAST_FS_YAML_FILE_PATH); yields a call that asks it for the models' service."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FEAST_FS_YAML_FILE_PATH": str(data_dir / "feast/feature_store.yaml")}
    feast = str(Path(sys.executable).parent / "feast")
    command = [feast, "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    body = {
        "feature_service": MODEL_FEATURE_SERVICE,
        "entities": {
            "user_id": [c.user] * len(c.items),
            "item_id": c.items,
            REQUEST_TS: [c.request_ts] * len(c.items),
        },
    }
    with (
        process_group(
            command, env=env, cwd=ROOT / "feature_repo", log=log, ready=f"{url}/health", timeout_s=180
        ),
        httpx.Client(base_url=url, timeout=30) as client,
    ):

        def read() -> dict:
            response = client.post("/get-online-features", json=body)
            assert response.status_code == 200, response.text[-500:]
            return response.json()

        answer = read()
        names = answer["metadata"]["feature_names"]
        assert (
            "user_seconds_since_last_event" in names
            and answer["results"][names.index("user_pv_7d")]["values"][0]
        )
        yield read


def read_latency(store_name: str, c: Candidates, n: int, redis_url: str | None, data_dir: Path) -> list[dict]:
    from models.features.online_reader import OnlineFeatureReader
    from models.features.store import open_store
    from models.settings import get_settings

    settings = get_settings()
    store = open_store(settings)
    service = store.get_feature_service(RANKER_FEATURE_SERVICE)
    realtime = store.get_feature_service(MODEL_FEATURE_SERVICE)
    rows = [{"user_id": c.user, "item_id": i} for i in c.items]
    realtime_rows = [{**row, REQUEST_TS: c.request_ts} for row in rows]
    plain = [f"{USER_VIEW}:{f}" for f in USER_FEATURES] + [f"{ITEM_VIEW}:{f}" for f in ITEM_FEATURES]
    check = store.get_online_features(features=service, entity_rows=rows).to_dict()
    assert check["user_pv_7d"][0] is not None and sum(v is not None for v in check["item_pv_7d"]) > 0

    warm = OnlineFeatureReader(store, realtime, ITEM_CACHE_TTL_S)
    cold = OnlineFeatureReader(store, realtime, 0)
    mixed = OnlineFeatureReader(store, realtime, ITEM_CACHE_TTL_S)
    # Drawn before timing: 100 distinct candidates per request, by view count among the popular items.
    rng = np.random.default_rng(0)
    weights = np.asarray(c.weights, dtype=float) / sum(c.weights)
    mix_warmup = 100  # requests before the samples, as a running service would have served
    draws = [
        rng.choice(c.popular, size=len(rows), replace=False, p=weights).tolist()
        for _ in range(mix_warmup + n)
    ]
    upcoming = iter(draws)
    upcoming_ahead = iter(draws)  # the same requests, with half the popular items read ahead
    ahead = OnlineFeatureReader(store, realtime, ITEM_CACHE_TTL_S)
    ahead.warm(c.popular[: POPULAR_ITEMS // 2])
    hits: dict[str, list[float]] = {}

    def reader(name: str, source: OnlineFeatureReader, items: Callable[[], list[int]]):
        """A timed read that also records the share of candidates served from the cache."""
        hits[name] = []

        def read() -> None:
            candidates = items()
            result = source.read(c.user, candidates, c.request_ts)
            hits[name].append(result.cached_items / len(set(candidates)))

        return read

    mix = f"OnlineFeatureReader, candidates drawn from the {POPULAR_ITEMS:,} most-viewed items"
    warm_name = "OnlineFeatureReader, same 100 candidates (cache warm)"
    mix_ahead = f"same draws, the {POPULAR_ITEMS // 2:,} most-viewed read ahead (ranker: CTR_WARM_ITEMS)"
    cold_name = "OnlineFeatureReader, cache off (TTL 0)"
    reads: dict[str, Callable[[], object]] = {
        f"{RANKER_FEATURE_SERVICE} (views + on-demand affinity)": lambda: store.get_online_features(
            features=service, entity_rows=rows
        ),
        "user + item views only (Feast)": lambda: store.get_online_features(features=plain, entity_rows=rows),
        f"{MODEL_FEATURE_SERVICE}: get_online_features -> DataFrame": lambda: pd.DataFrame(
            store.get_online_features(features=realtime, entity_rows=realtime_rows).to_dict()
        ),
        warm_name: reader(warm_name, warm, lambda: c.items),
        mix: reader(mix, mixed, lambda: next(upcoming)),
        mix_ahead: reader(mix_ahead, ahead, lambda: next(upcoming_ahead)),
        cold_name: reader(cold_name, cold, lambda: c.items),
    }
    if redis_url:
        reads["floor: same hashes, redis-py pipelined HMGET"] = redis_floor(store, redis_url, c.user, c.items)
        reads[f"floor: {MODEL_FEATURE_SERVICE} hashes (+ recent activity), redis-py pipelined HMGET"] = (
            redis_floor(store, redis_url, c.user, c.items, realtime=True)
        )
    # one read after the other; the mix warms up on its first draws, right before its samples
    samples = {
        name: time_reads(fn, n, mix_warmup if name in (mix, mix_ahead) else 20) for name, fn in reads.items()
    }
    with feast_serve(data_dir, c, data_dir / f"feast-serve-{store_name}.log") as served:
        samples[FEAST_SERVE] = time_reads(served, n)
    hit_rates = {name: sum(shares[-n:]) / n for name, shares in hits.items()}  # warm-up reads excluded
    return [
        {
            "store": store_name,
            "read": name,
            "rows": len(rows),
            **percentiles(values),
            "item_hit_rate": hit_rates.get(name, ""),
        }
        for name, values in samples.items()
    ]


def redis_floor(store, redis_url: str, user: int, items: list[int], realtime: bool = False):
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
    if realtime:  # the affinity's inputs and the user's recent activity live in the same hash
        user_fields += [_mmh3(f"{USER_VIEW}:{f}") for f in USER_LIST_FEATURES]
        user_fields += [_mmh3(f"{RECENT_VIEW}:{f}") for f in RECENT_FEATURES] + [f"_ts:{RECENT_VIEW}"]
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
    from models.features.store import open_store
    from models.settings import get_settings

    port = free_port()
    log = data_dir / f"ingest-{store_name}.log"
    server = start_process_group(
        [str(Path(sys.executable).parent / "ctr"), "ingest", "--port", str(port)], cwd=ROOT, env=env, log=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(server, f"{url}/readyz", timeout_s=180, log=log, name="ctr ingest")
        store = open_store(get_settings())
        refs = [f"{RECENT_VIEW}:{RECENT_EVENT_IDS}"]
        stream = Path(
            ROOT.parent / "shared/data/taobao_userbehavior/userbehavior_stream_20171126T0100Z_0200Z.csv"
        )
        from models.data.events import event_ids
        from models.data.replay import load_stream, payload

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
        stop_process_group(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=300)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--no-freshness", action="store_true", help="measure online reads only")
    args = parser.parse_args()
    reads, fresh = [], []
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        data_dir = Path(tmp)
        base = {"CTR_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
        with environment(**base, CTR_ONLINE_STORE="sqlite"):
            build(data_dir)
        picked = candidates(data_dir)
        for name, extra in (("sqlite", {}), ("redis", {"CTR_REDIS_CONNECTION": redis_url})):
            with environment(**base, CTR_ONLINE_STORE=name, **extra):
                materialize()
                reads += read_latency(
                    name, picked, args.reads, redis_url if name == "redis" else None, data_dir
                )
                if not args.no_freshness:
                    fresh += freshness(name, data_dir, args.events, dict(os.environ))
    print_table("Online read, 1 user + 100 items", reads)
    if fresh:
        print_table("Event-to-online freshness", fresh)
    notes = [
        "Taobao user slice (84,252 accepted events); the user is the most active one, the 100 "
        "candidates are the last 100 distinct viewed items, request_ts a minute after the user's last "
        "event.",
        "Read: in-process FeatureStore.get_online_features, registry cache warm "
        "(CTR_FEAST_REGISTRY_TTL_S=10); 20 warm-up reads (100 requests for the drawn mix), then the "
        "samples.",
        f"{FEAST_SERVE.split(':')[0]}: `feast serve --no-access-log` in feature_repo/ with "
        "FEAST_FS_YAML_FILE_PATH=<data dir>/feast/feature_store.yaml (the stores the project wrote it "
        f"for), asked for {MODEL_FEATURE_SERVICE} with the same 100 rows and request_ts, on-demand views "
        "computed by the server; one keep-alive httpx client in the benchmark process, timed from "
        "sending the request to the decoded JSON answer.",
        f"OnlineFeatureReader (models/features/online_reader.py) returns the same frame as "
        f"`pd.DataFrame(get_online_features(service, rows).to_dict())` for {MODEL_FEATURE_SERVICE}: the "
        f"user's rows read once through Feast, item rows through a {ITEM_CACHE_TTL_S:.0f} s cache (misses "
        f"in one Feast read), the on-demand views run in process by their own transformation. Drawn mix: "
        f"100 distinct candidates per request, drawn by view count from the {POPULAR_ITEMS:,} most-viewed "
        f"items; item_hit_rate is the mean share of candidates served from the cache.",
        "Freshness: one event per POST to `bentoml serve services.ingest:Ingest`; the benchmark process "
        "polls Feast until the event's id is in the user's recent_event_ids. The push happens inside "
        "the request, so reads_needed_max = 1 means the first read after the call already saw it.",
    ]
    write_results("online_read", "Online read latency: 1 user + 100 items", reads, notes[:4])
    if fresh:
        write_results("freshness", "Event-to-online freshness", fresh, [notes[4]])


if __name__ == "__main__":
    main()
