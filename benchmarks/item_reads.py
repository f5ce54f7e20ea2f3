"""Item-feature reads on a cache miss: what the ranker pays per item its cache does not hold.

On a SYNTHETIC catalogue (benchmarks/materialize.py's offline sources, materialized by the
pipeline's bounded materialization) in a real redis-server and in SQLite, batches of --batch
distinct items drawn at random (one in twenty an id the store has no row for) are read three ways:

* `get_online_features` with the item views' refs, `.to_dict()`: how the reader read its misses
  before;
* `OnlineFeatureReader`'s miss read (the online store's `online_read`, one call per item view, the
  values converted by Feast's converter): how it reads them now; every batch's values are checked
  equal to the first way's;
* Redis only, the floor: the same hashes read with redis-py in one pipeline and decoded.

In-process, one thread; cost per item = the call's median time / batch.
Usage: python benchmarks/item_reads.py [--items 300000] [--sqlite-items 50000] [--batch 100] [--reads 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment, percentiles, print_table, redis_server, write_results  # noqa: E402
from feature_repo.contract import ITEM_FEATURES, ITEM_VIEW, MODEL_FEATURE_SERVICE, USER_VIEW  # noqa: E402

ID_OFFSET = 10**10
TITLE = "Item-feature reads on a cache miss (SYNTHETIC catalogue)"


def _floor(store, redis_url: str):
    import redis
    from feast.infra.online_stores.helpers import _mmh3, _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port))
    project, version = store.config.project, store.config.entity_key_serialization_version
    fields = [_mmh3(f"{ITEM_VIEW}:{f}") for f in ITEM_FEATURES] + [f"_ts:{ITEM_VIEW}"]

    def read(items: list[int]):
        pipe = client.pipeline(transaction=False)
        for i in items:
            key = EntityKey(join_keys=["item_id"], entity_values=[Value(int64_val=i)])
            pipe.hmget(_redis_key(project, key, version), fields)
        return [[Value.FromString(v) if v else None for v in row] for row in pipe.execute()]

    return read


def measure(kind: str, items: int, batch: int, reads: int, redis_url: str | None) -> list[dict]:
    import benchmarks.materialize as bench
    from models.features.materialize import materialize
    from models.features.online_reader import OnlineFeatureReader
    from models.features.store import open_store
    from models.settings import get_settings

    with tempfile.TemporaryDirectory(prefix=f"bench-item-reads-{kind}-") as tmp:
        extra = {"CTR_REDIS_CONNECTION": redis_url} if redis_url else {}
        with environment(CTR_DATA_DIR=tmp, CTR_ONLINE_STORE=kind, **extra):
            users = max(items // 4, 1)
            bench.prepare(Path(tmp), users + items, users=users, id_offset=ID_OFFSET)
            store = open_store(get_settings())
            began = time.perf_counter()
            materialize(
                store, datetime(2017, 11, 25, tzinfo=UTC), datetime(2017, 12, 4, tzinfo=UTC),
                views=[USER_VIEW, ITEM_VIEW],
            )  # fmt: skip
            print(f"{kind}: {users + items:,} entities materialized in {time.perf_counter() - began:.0f} s")
            store = open_store(get_settings())
            reader = OnlineFeatureReader(store, store.get_feature_service(MODEL_FEATURE_SERVICE), 0)
            refs, names = reader._plan.item_refs, reader._plan.item_features

            def feast_read(ids: list[int]) -> list[tuple]:
                values = store.get_online_features(
                    features=refs, entity_rows=[{"item_id": i} for i in ids]
                ).to_dict()
                return list(zip(*(values[n] for n in names), strict=True))

            def reader_read(ids: list[int]) -> list[tuple]:
                block, _ = reader._read_items(ids)
                return list(zip(*(block.python(k) for k in range(len(names))), strict=True))

            ways = {
                "get_online_features": feast_read,
                "OnlineFeatureReader miss read (online_read)": reader_read,
            }
            if redis_url:
                ways["redis-py pipeline + decode (floor)"] = _floor(store, redis_url)
            rng = np.random.default_rng(0)
            samples: dict[str, list[float]] = {w: [] for w in ways}
            unknown = 0
            for k in range(reads + 10):
                ids = (rng.choice(items, batch, replace=False) + ID_OFFSET).tolist()
                for j in range(0, batch, 20):  # one in twenty unknown
                    ids[j] = 9 * ID_OFFSET + k * batch + j
                expected = None
                for way, read in ways.items():
                    began = time.perf_counter()
                    got = read(ids)
                    spent = time.perf_counter() - began
                    if k >= 10:  # the first reads warm connections and caches
                        samples[way].append(spent)
                    if way == "get_online_features":
                        expected = got
                    elif way.startswith("OnlineFeatureReader"):
                        assert got == expected, "the reader's values differ from get_online_features'"
                unknown += sum(all(v is None for v in row) for row in expected)
            assert unknown == (reads + 10) * len(range(0, batch, 20)), unknown  # and no other
    rows = []
    for way, spent in samples.items():
        stats = percentiles(spent)
        rows.append(
            {
                "store": kind,
                "read": way,
                "items_in_store": items,
                "batch": batch,
                "reads": stats["n"],
                "p50_ms": round(stats["p50_ms"], 2),
                "p99_ms": round(stats["p99_ms"], 2),
                "us_per_item": round(stats["p50_ms"] * 1000 / batch, 1),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=300_000, help="SYNTHETIC items in Redis")
    parser.add_argument("--sqlite-items", type=int, default=50_000, help="SYNTHETIC items in SQLite")
    parser.add_argument("--batch", type=int, default=100, help="items per read (the misses of a request)")
    parser.add_argument("--reads", type=int, default=300, help="reads per way")
    args = parser.parse_args()
    rows: list[dict] = []
    load_before = os.getloadavg()
    with redis_server() as redis:
        rows += measure("redis", args.items, args.batch, args.reads, redis)
    print_table(TITLE, rows)
    rows += measure("sqlite", args.sqlite_items, args.batch, args.reads, None)
    print_table(TITLE, rows)
    write_results(
        "item_reads",
        TITLE,
        rows,
        [
            f"SYNTHETIC catalogue: {args.items:,} items (Redis) and {args.sqlite_items:,} (SQLite), "
            "ids above 10^10, benchmarks/materialize.py's offline sources; redis-server 7 on loopback.",
            f"{args.batch} distinct random items per read, one in twenty unknown; in-process, one "
            "thread; the reader's values equal get_online_features' for every read.",
            "us_per_item = p50 / batch.",
            "Load averages (1/5/15 min, 2 cores, shared with other jobs): before "
            + "/".join(f"{v:.1f}" for v in load_before)
            + ", after "
            + "/".join(f"{v:.1f}" for v in os.getloadavg())
            + ".",
        ],
    )


if __name__ == "__main__":
    main()
