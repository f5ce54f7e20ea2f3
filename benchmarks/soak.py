"""The soak: the ranker and the ingest service under a steady load for half an hour on a
Taobao-size catalogue, with the champion moved every few minutes, checked for what a long run
reveals and a short benchmark hides: errors, lost events, memory that keeps growing, a serving log
that falls behind.

* The catalogue: benchmarks/catalogue_serving.py's (the real slice's features under --data-dir, a
  finished `make demo`, plus a SYNTHETIC catalogue of --users shoppers and --items items in one
  redis-server).
* The load, all at once for --minutes: /rank with 100 candidates at --rate req/s (open loop, each
  request drawn afresh: a synthetic shopper and heavy-tailed candidates); the real stream hour
  replayed to POST /events at --ingest-rate events/s, round after round, each round moved after
  the last so that every event is its shopper's newest; and the `champion` alias of the served
  model moved every --move-every s between its registered version and a copy of it that the
  promotion gate's record admits (a registry copied for the run, so the demo's is left alone).
* The bar: 0 errors and 0 lost requests on both services; 0 lost events (every event received is
  accepted, a duplicate or late, the event log holds every accepted and late one, none left
  pending); each service's RSS (its whole process tree, sampled every --sample-s) grows by at most
  10 % from the end of the warm-up (--warmup-s) to its peak after it; each champion move served
  within CTR_MODEL_RELOAD_S plus a second; the serving log complete once the ranker has stopped
  (rows = the items of every /rank answer).

Usage: python benchmarks/soak.py [--data-dir var] [--minutes 30] [--rate 50] [--ingest-rate 500]
       [--move-every 300] [--users 1e6] [--items 4e6]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import environment, print_table, write_results  # noqa: E402
from benchmarks.catalogue_serving import (  # noqa: E402
    add_catalogue_arguments,
    events_fed,
    rank_body,
    running_services,
    serving_catalogue,
)
from benchmarks.load import open_loop, summary  # noqa: E402

TITLE = "A 30-minute soak on a Taobao-size catalogue (SYNTHETIC catalogue in Redis)"
RSS_GROWTH_LIMIT = 0.10


class FreshRankBodies(Sequence):
    """/rank bodies drawn when asked: body i from its own seeded generator, so that a long load
    holds none of them and never repeats one."""

    def __init__(self, n: int, users: int, items: int, seed: int = 0) -> None:
        self.n, self.users, self.items, self.seed = n, users, items, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        return rank_body(np.random.default_rng((self.seed, i)), self.users, self.items)


def tree_rss(pid: int) -> int:
    """Bytes resident in process `pid` and all its descendants (a service's workers included)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += process.memory_info().rss
    return total


def sample_rss(pids: dict[str, int], every_s: float, stop: threading.Event, out: list[dict]) -> None:
    began = time.monotonic()
    while not stop.is_set():
        out.append({"t_s": time.monotonic() - began, **{name: tree_rss(pid) for name, pid in pids.items()}})
        stop.wait(every_s)


def rss_growth(samples: list[dict], name: str, warmup_s: float) -> dict:
    """The service's RSS at the end of the warm-up (the median of the minute after it), its peak
    after it, and the growth between them."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    if not after:
        return {"rss_warm_mib": None, "rss_peak_mib": None, "rss_growth": None}
    settled = [s[name] for s in after if s["t_s"] < warmup_s + 60] or [after[0][name]]
    warm, peak = float(np.median(settled)), float(max(s[name] for s in after))
    return {
        "rss_warm_mib": round(warm / 2**20),
        "rss_peak_mib": round(peak / 2**20),
        "rss_growth": round(peak / warm - 1, 4),
    }


def copy_registry(data_dir: Path, folder: Path) -> str:
    """The demo's MLflow registry copied for the run (its artifacts stay where they are, read only),
    with its promotion key; returns the copy's tracking URI."""
    target = folder / "mlflow"
    target.mkdir()
    shutil.copy(data_dir / "mlflow/mlflow.db", target / "mlflow.db")
    key = data_dir / "mlflow/promotion.key"
    if key.exists():
        shutil.copy(key, target / "promotion.key")
        os.chmod(target / "promotion.key", 0o600)
    return f"sqlite:///{target / 'mlflow.db'}"


def two_champions(env: dict[str, str]) -> tuple[str, str]:
    """The served model's champion version and a copy of it (same run and artifact) that the gate's
    record admits as champion: the two versions the soak moves the alias between."""
    from models.evaluation.promotion import record_promotion
    from models.registry import client
    from models.settings import get_settings

    with environment(**{k: env[k] for k in ("MLFLOW_TRACKING_URI", "CTR_DATA_DIR")}):
        settings = get_settings()
        tracking = client(settings)
        name = settings.served_model_name
        first = tracking.get_model_version_by_alias(name, "champion")
        second = tracking.create_model_version(name, first.source, first.run_id, tags=first.tags)
        metrics = json.loads(first.tags["promotion_record"])["metrics"]
        record_promotion(settings, name, str(second.version), "champion", metrics)
    return str(first.version), str(second.version)


def move_champion(env: dict[str, str], version: str) -> None:
    from models.registry import client
    from models.settings import get_settings

    with environment(**{k: env[k] for k in ("MLFLOW_TRACKING_URI", "CTR_DATA_DIR")}):
        settings = get_settings()
        client(settings).set_registered_model_alias(settings.served_model_name, "champion", version)


def switch_seconds(answers: list[tuple[float, str]], moves: list[tuple[float, str]]) -> list[float | None]:
    """Per move of the alias (time, version): seconds until the answers that arrive after it come
    from that version only (None: never within the load). Both lists are on one clock."""
    due = np.array([a[0] for a in answers])
    versions = np.array([a[1] for a in answers])
    out: list[float | None] = []
    for index, (at, version) in enumerate(moves):
        until = moves[index + 1][0] if index + 1 < len(moves) else float("inf")
        inside = (due >= at) & (due < until)
        other = np.flatnonzero(inside & (versions != version))
        served = np.flatnonzero(inside & (versions == version))
        if len(other):  # the first answer of the new version after the last of an old one
            served = served[due[served] > due[other].max()]
        out.append(round(float(due[served].min() - at), 2) if len(served) else None)
    return out


def move_times(seconds: float, every: float, reload_s: float) -> list[float]:
    """When to move the alias in a load of `seconds`: every `every` s, but none so late that the
    ranker could not follow it (one reload interval and a second) before the load ends."""
    return [every * k for k in range(1, int(seconds // every) + 1) if every * k + reload_s + 1 <= seconds]


def count_rows(folder: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in folder.rglob("*.parquet"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_catalogue_arguments(parser, ingest_rate=500.0)
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the load")
    parser.add_argument("--move-every", type=float, default=300.0, help="seconds between champion moves")
    parser.add_argument("--warmup-s", type=float, default=300.0, help="RSS growth is read after this")
    parser.add_argument("--sample-s", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument("--reload-s", type=float, default=15.0, help="CTR_MODEL_RELOAD_S of the ranker")
    args = parser.parse_args()
    data_dir, users, items = args.data_dir.resolve(), int(args.users), int(args.items)
    seconds = args.minutes * 60
    with serving_catalogue(data_dir, users, items) as (env, folder, catalogue):
        env = {
            **env,
            "MLFLOW_TRACKING_URI": copy_registry(data_dir, folder),
            "CTR_MODEL_RELOAD_S": f"{args.reload_s:g}",
        }
        versions = two_champions(env)
        rank_bodies = FreshRankBodies(int(args.rate * seconds) + 50, users, items)
        answers: list[tuple[float, str]] = []
        served_items = [0]
        moves: list[tuple[float, str]] = []
        samples: list[dict] = []
        results: dict[str, list] = {}

        def on_rank(_due: float, body: dict) -> None:  # timed on the moves' clock, when it arrived
            answers.append((time.monotonic() - started, body["model"]["version"]))
            served_items[0] += len(body["items"])

        with running_services(env, folder) as ((ranker, rank_process), (ingest, ingest_process)):
            import httpx

            for index in range(50):  # warm-up: models loaded, connections open (logged, not timed)
                body = rank_bodies[len(rank_bodies) - 1 - index]
                served_items[0] += len(httpx.post(f"{ranker}/rank", json=body, timeout=30).json()["items"])
            stop = threading.Event()
            pids = {"ranker": rank_process.pid, "ingest": ingest_process.pid}
            sampler = threading.Thread(target=sample_rss, args=(pids, args.sample_s, stop, samples))
            started = time.monotonic()  # the clock of the moves and the answers

            def mover() -> None:
                current = 0
                for at in move_times(seconds, args.move_every, args.reload_s):
                    if stop.wait(at - (time.monotonic() - started)):
                        return
                    current = 1 - current
                    moves.append((time.monotonic() - started, versions[current]))
                    move_champion(env, versions[current])
                    print(f"{moves[-1][0]:7.0f} s: champion -> version {versions[current]}", flush=True)

            moving = threading.Thread(target=mover, daemon=True)
            sampler.start()
            moving.start()
            with events_fed(ingest, args.ingest_rate, seconds, args.ingest_batch) as fed:
                results["rank"] = open_loop(ranker, rank_bodies, args.rate, seconds, on_answer=on_rank)
                results["ingest"], ingested = fed.result()
            stop.set()
            sampler.join()
        # the services stopped: the ranker's serving log flushed on shutdown
        logged = count_rows(folder / "serving_log")
        event_log = count_rows(folder / "events")

    rank, posted = summary(results["rank"]), summary(results["ingest"])
    switches = switch_seconds(answers, moves)
    ranker_rss, ingest_rss = (
        rss_growth(samples, "ranker", args.warmup_s),
        rss_growth(samples, "ingest", args.warmup_s),
    )
    accounted = ingested["accepted"] + ingested["duplicates"] + ingested["late"]
    limit, logged_events = f"<= {RSS_GROWTH_LIMIT:.0%}", ingested["accepted"] + ingested["late"]
    checks = {
        "/rank: no error, no lost request": rank["non_200"] == 0,
        "POST /events: no error, no lost request": posted["non_200"] == 0,
        "every event received accounted for (accepted, duplicate or late)": accounted == ingested["received"],
        "the event log holds every accepted and late event": event_log == logged_events,
        "no event left pending": ingested["pending"] == 0,
        f"ranker RSS growth after warm-up {limit}": (ranker_rss["rss_growth"] or 0) <= RSS_GROWTH_LIMIT,
        f"ingest RSS growth after warm-up {limit}": (ingest_rss["rss_growth"] or 0) <= RSS_GROWTH_LIMIT,
        "each champion move served within the reload interval + 1 s": all(
            s is not None and s <= args.reload_s + 1 for s in switches
        ),
        "serving log complete (rows = items of every /rank answer)": logged == served_items[0],
    }
    rows = [
        {
            "load": f"/rank 100 candidates, {args.rate:g} req/s",
            "requests": rank["requests"],
            "p50_ms": rank["p50_ms"],
            "p99_ms": rank["p99_ms"],
            "non_200": rank["non_200"],
            "fallbacks": rank["fallbacks"],
            **ranker_rss,
        },
        {
            "load": f"POST /events, {args.ingest_batch} each, {args.ingest_rate:g} events/s",
            "requests": posted["requests"],
            "p50_ms": posted["p50_ms"],
            "p99_ms": posted["p99_ms"],
            "non_200": posted["non_200"],
            "fallbacks": None,
            **ingest_rss,
        },
    ]
    check_rows = [{"check": name, "result": "pass" if ok else "FAIL"} for name, ok in checks.items()]
    print_table(TITLE, rows)
    print_table("The bar", check_rows)
    write_results(
        "soak",
        TITLE,
        rows,
        [
            f"{args.minutes:g} minutes of load after a 50-request warm-up; RSS growth read from "
            f"{args.warmup_s:g} s on (the median of the next minute against the peak after it), each "
            f"service's whole process tree sampled every {args.sample_s:g} s.",
            f"SYNTHETIC catalogue: {users:,} shoppers + {items:,} items beside the real slice in one "
            f"redis-server 7 ({catalogue['redis_mib']:,} MiB, "
            f"{catalogue['redis_bytes_per_entity']} bytes per entity, materialized in "
            f"{catalogue['materialize_s']:g} s).",
            f"Events: the real stream hour replayed round after round: {ingested['received']:,} received, "
            f"{ingested['accepted']:,} accepted, {ingested['duplicates']:,} duplicates, {ingested['late']:,} "
            f"late, {ingested['pending']} pending at the end; {event_log:,} rows in the event log.",
            f"Champion moved {len(moves)} times between versions {versions[0]} and {versions[1]} (a copy "
            f"admitted by the gate's record), CTR_MODEL_RELOAD_S={args.reload_s:g}: answers from the new "
            f"version only after {switches} s.",
            f"Serving log: {logged:,} rows for {served_items[0]:,} items answered. /rank fallbacks by "
            f"reason: {rank['fallback_reasons'] or 'none'}.",
            "The bar: "
            + "; ".join(f"{name}: {'pass' if ok else 'FAIL'}" for name, ok in checks.items())
            + ".",
            "Load generators, services and Redis share the machine's cores. Load averages (1/5/15 min) at "
            "the end: " + " / ".join(f"{v:.1f}" for v in os.getloadavg()) + ".",
        ],
    )
    if not all(checks.values()):
        raise SystemExit(
            "the soak did not meet its bar: " + ", ".join(n for n, ok in checks.items() if not ok)
        )


if __name__ == "__main__":
    main()
