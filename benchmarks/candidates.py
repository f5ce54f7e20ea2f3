"""Candidate generation (models/retrieval/): recall on the real test days, build time, lookup latency.

Quality: the index is built on the events before CTR_TEST_START and every user with events on the
test days asks once, at the shop hour of their first test-day event, with their last 20 events;
recall@k is the share of the distinct items they touch on the test days that the list holds, averaged
over users. "new items" leaves out the items the user had touched before (and excludes them from the
list). Compared: co-visitation + category + popular fill, popularity of the hour (the cold-start list),
overall popularity.

Data: the real 814-user Taobao slice; the slice plus the real one-hour stream file (30 k other users'
events of 2017-11-26, more co-visitation evidence, same test users); and for build time and latency
only, SYNTHETIC logs fitted to the slice (benchmarks/batch_features.py), whose items are drawn
independently, so nearly every pair is distinct: a worst case for the number of pairs.

Usage: python benchmarks/candidates.py [--synthetic 1000000 --synthetic 5000000]
Writes benchmarks/candidates.json and prints the section for RESULTS.md (it does not append to it).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HERE, machine, percentiles, print_table  # noqa: E402
from feature_repo.contract import EVENT_COLUMNS, EVENT_TIMESTAMP, USER_ID  # noqa: E402
from models.retrieval.build import build_index  # noqa: E402
from models.retrieval.evaluation import RECALL_METHODS, recall_at_k, recent_history  # noqa: E402
from models.retrieval.index import CandidateIndex  # noqa: E402
from models.settings import PROJECT_ROOT, get_settings  # noqa: E402

KS = (20, 50, 100)
STREAM = PROJECT_ROOT.parent / "shared/data/taobao_userbehavior/userbehavior_stream_20171126T0100Z_0200Z.csv"


def window_events(path: Path) -> pd.DataFrame:
    from models.data.events import load_events

    settings = get_settings()
    events = load_events(path).dropna()
    inside = (events[EVENT_TIMESTAMP] >= settings.window_start) & (
        events[EVENT_TIMESTAMP] < settings.window_end
    )
    return events.loc[inside, list(EVENT_COLUMNS)].reset_index(drop=True)


def lookup_latency(index: CandidateIndex, histories: pd.DataFrame, repeat: int, seed: int = 7) -> dict:
    """recommend_with_sources(k=100) over the users' histories, each at a random hour."""
    rng = np.random.default_rng(seed)
    requests = [(r.items, r.categories) for r in histories.itertuples()] * repeat
    hours = rng.integers(0, 24, size=len(requests)).tolist()
    for (items, categories), hour in zip(requests[: len(histories)], hours, strict=False):  # warm-up
        index.recommend_with_sources(items, categories, 100, hour)
    samples, sources = [], {}
    for (items, categories), hour in zip(requests, hours, strict=True):
        started = time.perf_counter()
        _, source = index.recommend_with_sources(items, categories, 100, hour)
        samples.append(time.perf_counter() - started)
        for s in source:
            sources[s] = sources.get(s, 0) + 1
    cold = []
    for hour in hours[:2000]:
        started = time.perf_counter()
        index.cold_start(100, hour)
        cold.append(time.perf_counter() - started)
    total = sum(sources.values())
    return {
        "lookup": percentiles(samples),
        "cold": percentiles(cold),
        "shares": {s: n / total for s, n in sorted(sources.items())},
    }


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build_timed(events: pd.DataFrame, until) -> tuple[CandidateIndex, float]:
    started = time.perf_counter()
    index = build_index(events, until)
    return index, time.perf_counter() - started


def save_load(index: CandidateIndex) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder = index.save(Path(tmp) / "candidates")
        saved = time.perf_counter() - started
        size = sum(p.stat().st_size for p in folder.iterdir())
        started = time.perf_counter()
        CandidateIndex.load(folder)
        return {"save_s": saved, "load_s": time.perf_counter() - started, "mib": size / 2**20}


def real_rows(label: str, events: pd.DataFrame, targets: pd.DataFrame) -> tuple[list[dict], dict]:
    """Recall rows for one build; `targets` holds the events the test-day targets come from."""
    settings = get_settings()
    train = events[events[EVENT_TIMESTAMP] < settings.test_start]
    index, seconds = build_timed(train, settings.test_start)
    evaluated = pd.concat([train, targets[targets[EVENT_TIMESTAMP] >= settings.test_start]])
    recall = recall_at_k(index, evaluated, settings.test_start, settings.window_end, KS)
    new = recall_at_k(index, evaluated, settings.test_start, settings.window_end, KS, new_items_only=True)
    rows = [
        {
            "data": label,
            "method": method,
            **{f"recall@{k} %": 100 * recall[method][k] for k in KS},
            **{f"new items recall@{k} %": 100 * new[method][k] for k in (50, 100)},
        }
        for method in RECALL_METHODS
    ]
    users = targets.loc[targets[EVENT_TIMESTAMP] >= settings.test_start, USER_ID].nunique()
    histories = recent_history(train, settings.test_start)
    histories = histories[histories.index.isin(targets[USER_ID].unique())]
    speed = {
        "data": label,
        "events": index.summary()["events"],
        **{k: index.summary()[k] for k in ("items", "pairs")},
        "build_s": seconds,
        **save_load(index),
        "test_users": int(users),
        **lookup_latency(index, histories, repeat=5),
    }
    return rows, speed


def synthetic_speed(real: pd.DataFrame, n: int) -> dict:
    from benchmarks.batch_features import synthetic_events

    events = synthetic_events(real, n)
    until = events[EVENT_TIMESTAMP].max() + pd.Timedelta(seconds=1)
    index, seconds = build_timed(events, until)
    histories = recent_history(events[events[USER_ID] <= 2000], until)
    summary = index.summary()
    return {
        "data": f"SYNTHETIC {n / 1e6:g} M",
        "events": summary["events"],
        "items": summary["items"],
        "pairs": summary["pairs"],
        "build_s": seconds,
        **save_load(index),
        "test_users": 0,
        **lookup_latency(index, histories, repeat=1),
    }


def speed_row(s: dict) -> dict:
    return {
        "data": s["data"],
        "events": s["events"],
        "items": s["items"],
        "pairs": s["pairs"],
        "build_s": s["build_s"],
        "events_per_s": round(s["events"] / s["build_s"]),
        "save_s": s["save_s"],
        "load_s": s["load_s"],
        "MiB": s["mib"],
        "lookup p50_us": s["lookup"]["p50_ms"] * 1000,
        "lookup p99_us": s["lookup"]["p99_ms"] * 1000,
        "cold p50_us": s["cold"]["p50_ms"] * 1000,
        "cold p99_us": s["cold"]["p99_ms"] * 1000,
    }


def markdown(title: str, tables: list[list[dict]], notes: list[str], stamp: str) -> str:
    from benchmarks._common import _fmt

    lines = [f"## {title}", "", f"{stamp} · {machine()} · `python benchmarks/candidates.py`", ""]
    for rows in tables:
        columns = list(rows[0])
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines + [f"- {n}" for n in notes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic", type=int, action="append", help="synthetic events (repeatable)")
    args = parser.parse_args()
    synthetic = args.synthetic if args.synthetic is not None else [1_000_000, 5_000_000]
    settings = get_settings()
    real = window_events(settings.raw_events)
    recall_rows, speeds = [], []
    rows, speed = real_rows("Taobao slice (real)", real, real)
    recall_rows += rows
    speeds.append(speed)
    notes = [
        f"Real slice: {settings.raw_events.name}, {len(real):,} events inside the dataset's 9 days; built on "
        f"the {speed['events']:,} before {settings.test_start.date()} (shop time), scored on the "
        f"{speed['test_users']} users active on the two test days.",
    ]
    if STREAM.exists():
        stream = window_events(STREAM)
        both = pd.concat([real, stream]).drop_duplicates(list(EVENT_COLUMNS), ignore_index=True)
        rows, speed = real_rows("slice + 1 h stream (real)", both, real)
        recall_rows += rows
        speeds.append(speed)
        notes.append(
            f"Slice + stream: adds {STREAM.name} ({len(stream):,} events, "
            f"{stream[USER_ID].nunique():,} users, 2017-11-26 09:00-10:00 shop time) to the build; "
            "same test users and targets."
        )
    for n in synthetic:
        speeds.append(synthetic_speed(real, n))
    shares = speeds[0]["shares"]
    notes += [
        "Sources of the k=100 lists on the real slice: "
        + ", ".join(f"{s} {v:.0%}" for s, v in shares.items())
        + ".",
        "Lookup: recommend_with_sources(k=100) with the user's last 20 items and categories at a random "
        "hour, one thread; cold: cold_start(k=100). SYNTHETIC rows: build time and latency only.",
        f"Peak resident memory of the run: {peak_gib():.1f} GiB.",
    ]
    speed_rows = [speed_row(s) for s in speeds]
    print_table("Candidate recall on the test days (mean per user)", recall_rows)
    print_table("Candidate index build and lookup", speed_rows)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = HERE / "candidates.json"
    out.write_text(
        json.dumps(
            {
                "benchmark": "candidates",
                "when": stamp,
                "machine": machine(),
                "rows": recall_rows,
                "speed_rows": speed_rows,
                "notes": notes,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}\n\nSection for RESULTS.md:\n")
    print(
        markdown(
            "Candidate generation: recall, build time, lookup latency",
            [recall_rows, speed_rows],
            notes,
            stamp,
        )
    )


if __name__ == "__main__":
    main()
