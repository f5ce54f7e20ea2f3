"""Serving on a Taobao-size catalogue: the ranker reading a Redis online store that holds ~1 M
shoppers and ~4 M items, under a fixed /rank load, with the ingest service taking live events
beside it.

* The online store: the real slice's features (a finished pipeline run under --data-dir, `make
  demo`) plus a SYNTHETIC catalogue of --users shoppers and --items items (ids above 10^10, the
  offline sources of benchmarks/materialize.py) written by the pipeline's bounded materialization.
  Redis's memory for the synthetic catalogue is recorded: bytes per entity and the total.
* /rank: 100 candidates per request drawn from the synthetic catalogue with a heavy-tailed
  popularity (item = floor(N u^3)), for synthetic shoppers, at a fixed arrival rate (open loop,
  latency from each request's scheduled time); every request of a load is drawn afresh (none is
  replayed), so the item cache's hit rate, read from the ranker's own /metrics
  (ctr_item_feature_reads_total), is what the popularity gives. /recommend at a quarter of that
  rate. --workers ranker processes (CTR_RANKER_WORKERS).
* Ingest: the real stream hour (moved after the batch data) POSTed to `ctr ingest` at
  --ingest-rate events/s in batches, during the /rank load. The push to the online store happens
  inside the call, so an event is readable when its call returns (benchmarks/online_features.py
  measures that read); the call's round trip is the freshness reported.

Everything runs on this machine: the load generators, the ranker, the ingest service and Redis
share its cores.
Usage: python benchmarks/catalogue_serving.py [--data-dir var] [--users 1e6] [--items 4e6]
       [--rate 50] [--seconds 60] [--ingest-rate 1000] [--ingest-batch 50] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, redis_server, write_results  # noqa: E402
from benchmarks.load import Outcome, open_loop, summary  # noqa: E402
from benchmarks.materialize import _redis_used  # noqa: E402
from benchmarks.service_load import CTR  # noqa: E402
from models.ops.processes import free_port, process_group  # noqa: E402
from models.settings import get_settings  # noqa: E402

ID_OFFSET = 10**10  # synthetic ids stay clear of the real slice's
STREAM = ROOT.parent / "shared/data/taobao_userbehavior/userbehavior_stream_20171126T0100Z_0200Z.csv"
LAST_SECOND = 1512316799  # the window's last second: request-time features as of the data's end
TITLE = "Serving on a Taobao-size catalogue (SYNTHETIC catalogue in Redis)"


def write_catalogue(users: int, items: int) -> dict:
    """Child: the SYNTHETIC offline sources of `users` shoppers and `items` items (ids from
    ID_OFFSET), materialized into the Redis of CTR_REDIS_CONNECTION by the pipeline's path."""
    from datetime import UTC, datetime

    import benchmarks.materialize as bench
    from feature_repo.contract import ITEM_VIEW, USER_VIEW
    from models.features.materialize import materialize
    from models.features.store import open_store
    from models.settings import get_settings

    began = time.perf_counter()
    written = bench.prepare(Path(os.environ["CTR_DATA_DIR"]), users + items, users=users, id_offset=ID_OFFSET)
    store = open_store(get_settings())
    start, end = datetime(2017, 11, 25, tzinfo=UTC), datetime(2017, 12, 4, tzinfo=UTC)
    materialize(store, start, end, views=[USER_VIEW, ITEM_VIEW], progress=print)
    return {"source_rows": sum(written.values()), "seconds": round(time.perf_counter() - began, 1)}


@contextlib.contextmanager
def serving_catalogue(
    data_dir: Path, users: int, items: int, more_env: dict[str, str] | None = None
) -> Iterator[tuple[dict[str, str], Path, dict]]:
    """For the block: a redis-server holding the finished run's features under `data_dir` (the
    real slice) and a SYNTHETIC catalogue of `users` shoppers and `items` items; yields the
    services' environment (event and serving logs in a scratch folder), that folder, and the
    catalogue's figures (entities, Redis MiB and bytes per entity, materialization seconds)."""
    if not (data_dir / "mlflow/mlflow.db").exists():
        raise SystemExit(f"no pipeline run under {data_dir}: run `make demo` first")
    with tempfile.TemporaryDirectory(prefix="bench-catalogue-") as tmp, redis_server() as redis:
        folder = Path(tmp)
        shutil.copy(data_dir / "feast/registry.db", folder / "registry.db")
        env = {
            **os.environ,
            "CTR_FEAST_REGISTRY": str(folder / "registry.db"),
            "CTR_DATA_DIR": str(data_dir),
            "CTR_ONLINE_STORE": "redis",
            "CTR_REDIS_CONNECTION": redis,
            "PYTHONPATH": str(ROOT),
            "CTR_EVENT_LOG": str(folder / "events"),
            "CTR_SERVING_LOG": str(folder / "serving_log"),
            "CTR_CHALLENGER_SHARE": "0",
            **(more_env or {}),
        }
        done = subprocess.run(
            [CTR, "run", "--stage", "apply_features", "--stage", "materialize"],
            env=env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"materializing the slice into Redis failed:\n{done.stderr[-3000:]}")
        before = _redis_used(redis)
        # The catalogue's offline files and registry of its own: the same repo, so the same Redis keys.
        synth_env = {**env, "CTR_DATA_DIR": str(folder / "synth"), "CTR_FEAST_REGISTRY": str(folder / "s.db")}
        print(f"writing the SYNTHETIC catalogue: {users:,} shoppers + {items:,} items", flush=True)
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(users), str(items)],
            env=synth_env, cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"writing the catalogue failed:\n{done.stderr[-3000:]}")
        written = json.loads(done.stdout.strip().splitlines()[-1])
        used = _redis_used(redis) - before
        catalogue = {
            "entities": users + items,
            "redis_mib": round(used / 2**20),
            "redis_bytes_per_entity": round(used / (users + items)),
            "materialize_s": written["seconds"],
        }
        print(catalogue, flush=True)
        shutil.rmtree(folder / "synth", ignore_errors=True)
        yield env, folder, catalogue


@contextlib.contextmanager
def running_services(
    env: dict[str, str], folder: Path
) -> Iterator[tuple[tuple[str, subprocess.Popen], tuple[str, subprocess.Popen]]]:
    """`ctr serve` and `ctr ingest` on free ports, logging under `folder`, until both answer
    /readyz; yields each one's URL and process, then stops them (the ranker flushes its log)."""
    rank_port, ingest_port = free_port(), free_port()
    ranker, ingest = f"http://127.0.0.1:{rank_port}", f"http://127.0.0.1:{ingest_port}"
    with (
        process_group(
            [CTR, "serve", "--port", str(rank_port)], env=env, cwd=ROOT, log=folder / "serve.log",
            ready=f"{ranker}/readyz", timeout_s=300, name="ctr serve",
        ) as rank_process,
        process_group(
            [CTR, "ingest", "--port", str(ingest_port)], env=env, cwd=ROOT, log=folder / "ingest.log",
            ready=f"{ingest}/readyz", timeout_s=300, name="ctr ingest",
        ) as ingest_process,
    ):  # fmt: skip
        yield (ranker, rank_process), (ingest, ingest_process)


def rank_body(rng: np.random.Generator, users: int, items: int) -> dict:
    """One /rank request: a random synthetic shopper and 100 distinct candidates drawn with a
    heavy-tailed popularity (item = floor(N u^3))."""
    drawn = np.unique(np.floor(items * rng.random(400) ** 3).astype(np.int64))
    chosen = rng.permutation(drawn)[:100] + ID_OFFSET
    return {
        "user_id": int(ID_OFFSET + rng.integers(users)),
        "item_ids": chosen.tolist(),
        "context": {"request_ts": LAST_SECOND},
    }


def rank_bodies(n: int, users: int, items: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [rank_body(rng, users, items) for _ in range(n)]


class ReplayedStream(Sequence):
    """POST /events bodies of `batch` events: the real stream hour moved after the batch data (every
    event its shopper's newest), then again round after round, each round after the last by the
    hour's span, so that every event is new. Body k is built when asked."""

    def __init__(self, n: int, batch: int) -> None:
        from models.data.replay import load_stream

        events = load_stream(STREAM)
        events["event_timestamp"] += pd.Timestamp("2017-12-04", tz="UTC") - events["event_timestamp"].min()
        self.events, self.n, self.batch = events, n, batch
        self.per_round = len(events) // batch
        self.span = (
            events["event_timestamp"].max() - events["event_timestamp"].min() + pd.Timedelta(seconds=1)
        )

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):  # type: ignore[override]
        from models.data.replay import payload

        rounds, j = divmod(k, self.per_round)
        part = self.events.iloc[j * self.batch : (j + 1) * self.batch]
        return payload(part.assign(event_timestamp=part["event_timestamp"] + rounds * self.span))


INGEST_TOTALS = ("received", "accepted", "duplicates", "late")


def feed_events(url: str, rate: float, seconds: float, batch: int) -> tuple[list[Outcome], dict[str, int]]:
    """POST the replayed stream to `url`/events at `rate` events/s for `seconds`, in bodies of
    `batch`; the outcomes, and the answers' totals (INGEST_TOTALS, and the last one's pending)."""
    totals = dict.fromkeys((*INGEST_TOTALS, "pending"), 0)

    def count(_: float, body: dict) -> None:
        for key in INGEST_TOTALS:
            totals[key] += body[key]
        totals["pending"] = body["pending"]

    posts = ReplayedStream(int(rate / batch * seconds), batch)
    return open_loop(url, posts, rate / batch, seconds, "/events", on_answer=count), totals


@contextlib.contextmanager
def events_fed(url: str, rate: float, seconds: float, batch: int) -> Iterator[Future]:
    """feed_events in a process of its own while the block runs (the /rank load generator keeps its
    interpreter to itself: a feeder thread beside it would take its GIL and delay its requests);
    yields the future of its result."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield pool.submit(feed_events, url, rate, seconds, batch)


def _counter(metrics: str, name: str, labels: str) -> float:
    found = re.search(rf"^{name}{{{labels}}} (\S+)$", metrics, re.M)
    return float(found[1]) if found else 0.0


MORE = ("item_cache_hit_rate", "events_per_s", "freshness_p99_ms", "entities", "redis_mib",
        "redis_bytes_per_entity", "materialize_s")  # fmt: skip


def _row(load: str, result: dict, **more) -> dict:
    """One table row, every row with the same columns (None where one does not apply)."""
    keys = ("requests", "req_per_s", "p50_ms", "p99_ms", "non_200", "fallbacks")
    return {"load": load, **{k: result.get(k) for k in keys}, **{k: more.get(k) for k in MORE}}


def add_catalogue_arguments(parser: argparse.ArgumentParser, ingest_rate: float) -> None:
    """The options of a load on the catalogue: the run, the catalogue's size and the two loads."""
    parser.add_argument("--data-dir", type=Path, default=ROOT / "var", help="a finished pipeline run")
    parser.add_argument("--users", type=float, default=1e6, help="SYNTHETIC shoppers in the online store")
    parser.add_argument("--items", type=float, default=4e6, help="SYNTHETIC items in the online store")
    parser.add_argument("--rate", type=float, default=50.0, help="/rank requests per second")
    parser.add_argument("--ingest-rate", type=float, default=ingest_rate, help="events/s POSTed beside it")
    parser.add_argument("--ingest-batch", type=int, default=50, help="events per POST /events")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_catalogue_arguments(parser, ingest_rate=1000.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load")
    parser.add_argument("--workers", type=int, default=1, help="ranker processes (CTR_RANKER_WORKERS)")
    parser.add_argument("--child", nargs=2, type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(write_catalogue(int(args.child[0]), int(args.child[1]))))
        return
    data_dir = args.data_dir.resolve()
    users, items = int(args.users), int(args.items)
    settings = get_settings()
    rows: list[dict] = []
    with serving_catalogue(data_dir, users, items, {"CTR_RANKER_WORKERS": str(args.workers)}) as (
        env,
        folder,
        catalogue,
    ):
        requests = int(args.rate * args.seconds)
        bodies, beside_bodies = (rank_bodies(requests + 50, users, items, seed=s) for s in (0, 1))
        with running_services(env, folder) as ((url, _), (ingest_url, _)):
            for body in bodies[:50]:  # warm-up: models loaded, connections open
                httpx.post(f"{url}/rank", json=body, timeout=30)
            load_before = os.getloadavg()
            rank_only = summary(open_loop(url, bodies[50:], args.rate, args.seconds))
            rows.append(
                _row(f"/rank {args.rate:g} req/s alone, {args.workers} worker(s)", rank_only, **catalogue)
            )
            print_table(TITLE, rows[-1:])

            metrics_before = httpx.get(f"{url}/metrics", timeout=10).text
            with events_fed(ingest_url, args.ingest_rate, args.seconds, args.ingest_batch) as fed:
                beside = summary(open_loop(url, beside_bodies, args.rate, args.seconds))
                ingest_outcomes, _ = fed.result()
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
            hits = _counter(metrics, "ctr_item_feature_reads_total", 'source="cache"') - _counter(
                metrics_before, "ctr_item_feature_reads_total", 'source="cache"'
            )
            misses = _counter(metrics, "ctr_item_feature_reads_total", 'source="store"') - _counter(
                metrics_before, "ctr_item_feature_reads_total", 'source="store"'
            )
            rows.append(
                _row(
                    f"/rank {args.rate:g} req/s with ingest",
                    beside,
                    item_cache_hit_rate=round(hits / (hits + misses), 3) if hits + misses else None,
                )
            )
            result = summary(ingest_outcomes)
            rows.append(
                _row(
                    f"POST /events, {args.ingest_batch} events each ({args.ingest_rate:g} events/s offered)",
                    result,
                    events_per_s=round(result["req_per_s"] * args.ingest_batch),
                    freshness_p99_ms=result.get("p99_ms"),
                )
            )
            recommend = [{"user_id": b["user_id"], "k": 20} for b in bodies]
            rows.append(
                _row(
                    f"/recommend k=20, {args.rate / 4:g} req/s",
                    summary(open_loop(url, recommend, args.rate / 4, args.seconds, "/recommend")),
                )
            )
            load_after = os.getloadavg()
    print_table(TITLE, rows)
    write_results(
        "catalogue_serving",
        TITLE,
        rows,
        [
            f"SYNTHETIC catalogue: {users:,} shoppers + {items:,} items (benchmarks/materialize.py's "
            "offline sources, ids above 10^10) beside the real slice, in one redis-server 7; the model is "
            "the run's XGBoost champion (trained on the real slice).",
            "/rank: 100 distinct candidates per request, item = floor(N u^3) (heavy-tailed popularity), "
            "a random synthetic shopper, open loop, every request drawn afresh (none replayed). Item "
            f"cache: CTR_ITEM_CACHE_TTL_S ({settings.item_cache_ttl_s:g} s), hit rate from the ranker's "
            f"ctr_item_feature_reads_total. Ranker workers: {args.workers}.",
            "Ingest: the real stream hour moved after the batch data, POSTed in batches during the "
            "second /rank run; freshness = the call's round trip (the push is inside the call).",
            "Load generators, services and Redis share the machine's 2 cores. Load averages (1/5/15 "
            "min) before the first /rank load "
            + "/".join(f"{v:.1f}" for v in load_before)
            + ", after the last "
            + "/".join(f"{v:.1f}" for v in load_after)
            + " (other jobs on the machine included).",
        ],
    )


if __name__ == "__main__":
    main()
