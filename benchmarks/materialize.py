"""Materialization into Redis at Taobao's size: Feast 0.67's own `materialize` beside the
project's bounded one (models/features/materialize.py), on the same SYNTHETIC offline sources.

The sources are shaped like the project's user and item views (feature_repo/contract.py: the
USER_FEATURES floats with the two top-category lists, the ITEM_FEATURES floats with the item's
category id), one entity row in five a shopper and four in five an item, as in Taobao (1 M
shoppers, 4 M items). Every entity has a snapshot on the last day and every other one an older
snapshot too, so each source holds 1.5 rows per entity and the newest must be picked.

Each measurement runs in a child process of its own (peak RSS per path, imports included), into a
flushed redis-server; rows/s counts entity rows over the materialize call's wall time. Redis memory
is `INFO memory` used_memory after the run, less the empty server's.

Usage: python benchmarks/materialize.py [--both 200000,1000000] [--new-only 5000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import print_table, redis_server, write_results  # noqa: E402
from feature_repo.contract import (  # noqa: E402
    INTEGER_FEATURES,
    ITEM_FEATURES,
    ITEM_VIEW,
    USER_FEATURES,
    USER_TOP_CATEGORIES,
    USER_TOP_CATEGORY_SHARES,
    USER_VIEW,
)

LAST_DAY_US = 1512316800 * 1_000_000  # 2017-12-03 16:00 UTC, the shop's midnight ending the window
DAY_US = 86_400 * 1_000_000
CHUNK = 250_000  # entities generated at a time


def _environment(data_dir: Path, redis: str) -> dict[str, str]:
    return {
        **os.environ,
        "CTR_DATA_DIR": str(data_dir),
        "CTR_ONLINE_STORE": "redis",
        "CTR_REDIS_CONNECTION": redis,
        "PYTHONUNBUFFERED": "1",
    }


def _source_batches(n: int, seed: int, key: str, features: list[str], lists: bool, id_offset: int = 0):
    """SYNTHETIC snapshot rows of n entities (ids from `id_offset`): the last day for all, the day
    before for every other."""
    rng = np.random.default_rng(seed)
    for first in range(0, n, CHUNK):
        ids = np.arange(first, min(n, first + CHUNK), dtype=np.int64) + id_offset
        for day, chosen in ((0, ids), (1, ids[::2])):
            m = len(chosen)
            columns = {
                key: pa.array(chosen),
                "event_timestamp": pa.array(
                    np.full(m, LAST_DAY_US - day * DAY_US), pa.timestamp("us", tz="UTC")
                ),
            }
            for name in features:
                if name in INTEGER_FEATURES:
                    columns[name] = pa.array(rng.integers(1, 9439, m, dtype=np.int64))
                else:  # counts, rates and trends: small whole numbers and fractions
                    values = np.where(rng.random(m) < 0.5, rng.integers(0, 30, m), rng.random(m) * 3)
                    columns[name] = pa.array(values.astype(np.float32))
            if lists:
                offsets = pa.array(np.arange(0, 5 * m + 1, 5, dtype=np.int32))
                categories = rng.integers(1, 9439, 5 * m, dtype=np.int64)
                shares = rng.dirichlet(np.ones(5), m).astype(np.float32).ravel()
                columns[USER_TOP_CATEGORIES] = pa.ListArray.from_arrays(offsets, pa.array(categories))
                columns[USER_TOP_CATEGORY_SHARES] = pa.ListArray.from_arrays(offsets, pa.array(shares))
            yield pa.record_batch(columns)


def prepare(data_dir: Path, entities: int, users: int | None = None, id_offset: int = 0) -> dict[str, int]:
    """Apply the repo to a scratch data dir and write the two SYNTHETIC sources (child process):
    `users` shoppers (default: one entity in five) and the rest items, ids from `id_offset`."""
    from models.features.store import apply_repo, open_store, source_path
    from models.settings import get_settings

    settings = get_settings()
    apply_repo(settings)
    store = open_store(settings)
    users = entities // 5 if users is None else users
    written = {}
    for view, n, key, features, lists in (
        (USER_VIEW, users, "user_id", USER_FEATURES, True),
        (ITEM_VIEW, entities - users, "item_id", ITEM_FEATURES, False),
    ):
        path = source_path(store, view)
        path.parent.mkdir(parents=True, exist_ok=True)
        batches = _source_batches(n, len(written), key, features, lists, id_offset)
        first = next(batches)
        rows = first.num_rows
        with pq.ParquetWriter(path, first.schema) as out:
            out.write_batch(first)
            for batch in batches:
                out.write_batch(batch)
                rows += batch.num_rows
        written[view] = rows
    return written


def measure(path: str) -> dict:
    """One materialization of the two views (child process): seconds and peak RSS."""
    from datetime import UTC, datetime

    from models.features.store import open_store
    from models.settings import get_settings

    store = open_store(get_settings())
    start = datetime(2017, 11, 25, tzinfo=UTC)
    end = datetime(2017, 12, 4, tzinfo=UTC)
    began = time.perf_counter()
    if path == "feast":
        store.materialize(start_date=start, end_date=end, feature_views=[USER_VIEW, ITEM_VIEW])
    else:
        from models.features.materialize import materialize

        materialize(store, start, end, views=[USER_VIEW, ITEM_VIEW], progress=print)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _rss_gb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    line = next((x for x in status.splitlines() if x.startswith("VmRSS:")), "VmRSS: 0 kB")
    return int(line.split()[1]) / 2**20


def _child(args: list[str], env: dict[str, str], cap_gb: float | None = None) -> dict | None:
    """Run a child step; with `cap_gb`, stop it once its RSS passes the cap (None comes back): the
    machine is shared, and Feast's own materialize grows with the rows."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", *args], env=env, stdout=out, stderr=err
        )
        while child.poll() is None:
            if cap_gb is not None and _rss_gb(child.pid) > cap_gb:
                child.kill()
                child.wait()
                return None
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def _redis_used(redis: str) -> int:
    import redis as client

    host, port = redis.split(":")
    connection = client.Redis(host=host, port=int(port))
    try:
        return int(connection.info("memory")["used_memory"])
    finally:
        connection.close()


def _flush(redis: str) -> None:
    import redis as client

    host, port = redis.split(":")
    connection = client.Redis(host=host, port=int(port))
    try:
        connection.flushall()
    finally:
        connection.close()


def run(both: list[int], new_only: list[int], cap_gb: float) -> list[dict]:
    rows = []
    with redis_server() as redis, tempfile.TemporaryDirectory(prefix="bench-materialize-") as scratch:
        for entities in sorted({*both, *new_only}):
            data_dir = Path(scratch) / str(entities)
            env = _environment(data_dir, redis)
            source_rows = _child(["prepare", str(entities)], env)
            for path in ("feast", "batches"):
                if path == "feast" and entities not in both:
                    continue
                _flush(redis)
                empty = _redis_used(redis)
                began = time.perf_counter()
                result = _child(["measure", path], env, cap_gb)
                used = _redis_used(redis) - empty
                row = {
                    "path": "Feast materialize" if path == "feast" else "bounded batches",
                    "entity_rows": entities,
                    "source_rows": sum(source_rows.values()),
                }
                if result is None:
                    row["seconds"] = (
                        f"stopped at {cap_gb:g} GiB RSS after {time.perf_counter() - began:.0f} s"
                    )
                    rows.append(row)
                    continue
                row.update(
                    seconds=round(result["seconds"], 1),
                    rows_per_s=round(entities / result["seconds"]),
                    peak_rss_gb=round(result["peak_rss_gb"], 2),
                    redis_mb=round(used / 2**20, 1),
                    redis_bytes_per_entity=round(used / entities),
                )
                rows.append(row)
                print_table("so far", rows[-1:])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--both", default="200000,1000000", help="entity rows for both paths")
    parser.add_argument("--new-only", default="5000000", help="entity rows for the bounded path only")
    parser.add_argument("--rss-cap-gb", type=float, default=12.0, help="stop a child past this RSS")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, value = args.child
        out = prepare(Path(os.environ["CTR_DATA_DIR"]), int(value)) if kind == "prepare" else measure(value)
        print(json.dumps(out))
        return
    sizes = [int(float(s)) for s in args.both.split(",") if s]
    more = [int(float(s)) for s in args.new_only.split(",") if s]
    rows = run(sizes, more, args.rss_cap_gb)
    title = "Materialization into Redis: Feast's materialize vs bounded batches (SYNTHETIC)"
    print_table(title, rows)
    notes = [
        "SYNTHETIC offline sources shaped like user_behavior_stats (15 floats + 2 lists of 5) and "
        "item_behavior_stats (18 floats + category id); 1 entity row in 5 a shopper, 4 in 5 an item; "
        "1.5 source rows per entity (the newest is picked).",
        "Each path in a child process of its own (peak RSS includes Feast's imports); Redis 7 on the "
        "same machine, flushed before each run, `INFO memory` used_memory less the empty server's. "
        f"A child whose RSS passes {args.rss_cap_gb:g} GiB is stopped (the task limit).",
        "Both paths write byte-identical Redis hashes (tests/integration/test_materialize.py on the "
        "real slice).",
    ]
    write_results("materialize", title, rows, notes)


if __name__ == "__main__":
    main()
