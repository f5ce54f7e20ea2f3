"""Batch feature job: wall time, events/s and peak resident memory, part by part, on the real Taobao
slice and on SYNTHETIC event logs, for the job the pipeline runs (the definitions on DuckDB, out of
core, reading the lake's day partitions) beside the in-memory NumPy job it replaced
(tests/reference_batch.py) where that one fits in memory.

Each part runs in a process of its own, so its peak RSS is its own: the snapshots per entity and
the short-term state (each written to its offline source), the whole features stage (all four
sources, as `build_features` runs it over the window), and the rerun of its last day into those
full sources (the upsert: old rows streamed back, the day's rows replaced).

SYNTHETIC data comes from `ctr synth` output (--synth DIR, a folder of day partitions of raw
Taobao CSV), or from the simpler generator here (--generate N, fitted to the real slice).

Usage: python benchmarks/batch_features.py [--synth DIR ...] [--generate 1000000] [--old-max 10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS_MD, print_table, write_results  # noqa: E402
from feature_repo.contract import (  # noqa: E402
    BEHAVIOR,
    CATEGORY_ID,
    CATEGORY_VIEW,
    EVENT_COLUMNS,
    EVENT_TIMESTAMP,
    ITEM_ID,
    ITEM_VIEW,
    RECENT_VIEW,
    SHOP_TIMEZONE,
    USER_ID,
    USER_VIEW,
)

START = pd.Timestamp("2017-11-25T00:00:00+08:00")
END = pd.Timestamp("2017-12-04T00:00:00+08:00")
VIEWS = {"user snapshots": USER_VIEW, "item snapshots": ITEM_VIEW, "category snapshots": CATEGORY_VIEW}
RECENT = "recent activity (20 last events per event second)"
WHOLE = "whole features stage (4 sources)"
RERUN = "rerun of the last day into the full sources"
TITLE = "Batch feature job throughput"


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# --- Lakes to run on ------------------------------------------------------------------------


def _day_path(lake: Path, day: pd.Timestamp) -> Path:
    return lake / "accepted" / f"date={day:%Y-%m-%d}" / "events.parquet"


def _days() -> list[pd.Timestamp]:
    return list(pd.date_range(START.tz_convert(SHOP_TIMEZONE), periods=9, freq="D"))


def _write_lake(events: pd.DataFrame, lake: Path) -> None:
    from models.features.store import write_offline

    local = events[EVENT_TIMESTAMP].dt.tz_convert(SHOP_TIMEZONE).dt.normalize()
    for day in _days():
        write_offline(events.loc[local == day, list(EVENT_COLUMNS)], _day_path(lake, day))


def real_lake(lake: Path) -> int:
    """The real slice's accepted events (the pipeline's validation), one partition per day."""
    from models.data.events import load_events
    from models.data.validation import validate_events
    from models.settings import default_raw_events

    accepted = validate_events(load_events(default_raw_events()), START, END, 0.01).accepted
    _write_lake(accepted, lake)
    return len(accepted)


def synth_lake(folder: Path, lake: Path) -> int:
    """`ctr synth` day partitions (raw Taobao CSV) as lake partitions, converted by DuckDB."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": "4GB", "threads": 2})
    total = 0
    for day in _days():
        source = folder / f"date={day:%Y-%m-%d}" / "events.csv"
        target = _day_path(lake, day)
        target.parent.mkdir(parents=True, exist_ok=True)
        total += con.execute(
            f"""COPY (SELECT user_id, item_id, category_id, behavior_type AS {BEHAVIOR},
                       make_timestamptz(ts * 1000000) AS {EVENT_TIMESTAMP}
                FROM read_csv('{source}', header = false, columns = {{'user_id': 'BIGINT',
                     'item_id': 'BIGINT', 'category_id': 'BIGINT', 'behavior_type': 'VARCHAR',
                     'ts': 'BIGINT'}}))
                TO '{target}' (FORMAT parquet)"""
        ).fetchone()[0]
    return total


def replicated_lake(source: Path, copies: int, lake: Path) -> int:
    """`copies` copies of a lake's events with disjoint shopper and item ids (categories shared): a
    shop `copies` times the size, in the same proportions."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": "4GB", "threads": 2})
    files = [str(p) for p in _files(source)]
    users, items = con.execute(
        f"SELECT max({USER_ID}) + 1, max({ITEM_ID}) + 1 FROM read_parquet({files})"
    ).fetchall()[0]
    total = 0
    for day in _days():
        target = _day_path(lake, day)
        target.parent.mkdir(parents=True, exist_ok=True)
        total += con.execute(
            f"""COPY (SELECT {USER_ID} + r.range * {users} AS {USER_ID},
                       {ITEM_ID} + r.range * {items} AS {ITEM_ID},
                       {CATEGORY_ID}, {BEHAVIOR}, {EVENT_TIMESTAMP}
                FROM range({copies}) AS r, read_parquet('{_day_path(source, day)}') ORDER BY r.range)
                TO '{target}' (FORMAT parquet)"""
        ).fetchall()[0][0]
    return total


def generated_lake(n: int, lake: Path, seed: int = 7) -> int:
    """n events fitted to the real slice: per-user event counts and inter-event gaps resampled from
    it, items from a Zipf law whose exponent matches the real rank-frequency curve, each item in a
    category drawn from the real item -> category mix, behaviours in the real proportions."""
    from models.data.events import load_events
    from models.settings import default_raw_events

    real = load_events(default_raw_events()).dropna()
    real = real[(real[EVENT_TIMESTAMP] >= START) & (real[EVENT_TIMESTAMP] < END)]
    real = real.astype({USER_ID: "int64", ITEM_ID: "int64", CATEGORY_ID: "int64"})
    rng = np.random.default_rng(seed)
    per_user = real.groupby(USER_ID).size().to_numpy()
    counts = rng.choice(per_user, size=int(n / per_user.mean() * 1.05) + 1)
    counts = counts[: np.searchsorted(np.cumsum(counts), n) + 1]
    counts[-1] -= counts.sum() - n
    users = np.repeat(np.arange(1, len(counts) + 1, dtype=np.int64), counts)
    ordered = real.sort_values([USER_ID, EVENT_TIMESTAMP])
    gaps = ordered.groupby(USER_ID)[EVENT_TIMESTAMP].diff().dropna().dt.total_seconds().to_numpy()
    gap = rng.choice(gaps, size=n)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    gap[first] = 0.0
    offset = np.cumsum(gap)
    offset -= np.repeat(offset[first], counts)
    span = (END - START).total_seconds()
    seconds = (np.repeat(rng.uniform(0, span, size=len(counts)), counts) + offset) % span
    freq = np.sort(real[ITEM_ID].value_counts().to_numpy())[::-1][:1000]
    exponent = -np.polyfit(np.log(np.arange(1, len(freq) + 1)), np.log(freq), 1)[0]
    n_items = int(real[ITEM_ID].nunique() * n / len(real) * 0.35) + 1
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -exponent
    items = rng.choice(n_items, size=n, p=weights / weights.sum()).astype(np.int64) + 1
    item_category = rng.choice(real[CATEGORY_ID].to_numpy(), size=n_items + 1)
    share = real[BEHAVIOR].value_counts(normalize=True)
    frame = pd.DataFrame(
        {
            USER_ID: users,
            ITEM_ID: items,
            CATEGORY_ID: item_category[items],
            BEHAVIOR: rng.choice(share.index.to_numpy(), size=n, p=share.to_numpy()),
            EVENT_TIMESTAMP: START.tz_convert("UTC") + pd.to_timedelta(np.floor(seconds), unit="s"),
        }
    )
    _write_lake(frame, lake)
    return n


# --- One part, in its own process -------------------------------------------------------------


def _files(lake: Path) -> list[Path]:
    return [_day_path(lake, day) for day in _days()]


def child_new(part: str, lake: Path, out: Path) -> dict:
    from models.features.batch import build_interval
    from models.features.engine import EngineConfig
    from models.settings import get_settings

    config = EngineConfig.from_settings(get_settings())
    views = {**VIEWS, RECENT: RECENT_VIEW}
    chosen = list(views.values()) if part in (WHOLE, RERUN) else [views[part]]
    sources = {view: out / f"{view}.parquet" for view in chosen}
    first, last = (_days()[-1], END) if part == RERUN else (START, END)
    t = time.perf_counter()
    rows, _ = build_interval(_files(lake), first, last, SHOP_TIMEZONE, sources, config)
    seconds = time.perf_counter() - t
    bytes_out = sum(p.stat().st_size for p in sources.values())
    return {
        "rows_out": sum(rows.values()),
        "seconds": seconds,
        "peak_rss_gib": _peak_gib(),
        "mb_out": bytes_out / 1e6,
    }


def child_old(part: str, lake: Path, out: Path) -> dict:
    from models.features.store import write_offline, write_offline_batches
    from tests import reference_batch as old

    events = pd.concat([pd.read_parquet(p) for p in _files(lake)], ignore_index=True)
    grid = old.DayGrid.covering(START, END, SHOP_TIMEZONE)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if part == RECENT:
        path = write_offline_batches(
            old.recent_activity_batches(events), old.recent_activity_schema(), out / "recent.parquet"
        )
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    else:
        build = {
            USER_VIEW: old.user_snapshots,
            ITEM_VIEW: old.item_snapshots,
            CATEGORY_VIEW: old.category_snapshots,
        }
        frame = build[VIEWS[part]](events, grid)
        path = write_offline(frame, out / f"{VIEWS[part]}.parquet")
        rows = len(frame)
    seconds = time.perf_counter() - t
    return {
        "rows_out": rows,
        "seconds": seconds,
        "peak_rss_gib": _peak_gib(),
        "mb_out": path.stat().st_size / 1e6,
    }


def _run_child(job: str, part: str, lake: Path, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        job,
        "--part",
        part,
        "--lake",
        str(lake),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        return {
            "error": done.stderr.strip().splitlines()[-1]
            if done.stderr.strip()
            else f"exit {done.returncode}"
        }
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(label: str, events: int, lake: Path, work: Path, old: bool, each_part: bool = True) -> list[dict]:
    rows = []
    parts = [*VIEWS, RECENT] if each_part else []
    jobs = [("new", "DuckDB (definitions, out of core)")] + (
        [("old", "NumPy in memory (reference)")] if old else []
    )
    for job, name in jobs:
        for part in [*parts, WHOLE, RERUN] if job == "new" else parts:
            out = work / job / ("whole" if part in (WHOLE, RERUN) else re.sub(r"\W+", "_", part))
            load_before = os.getloadavg()[0]
            result = _run_child(job, part, lake, out)
            # the machine may be shared: its 1-minute load average before and after the part
            load = f"{load_before:.1f}-{os.getloadavg()[0]:.1f}"
            row = {"data": label, "job": name, "part": part, "events": events}
            if "error" in result:
                row.update(
                    rows_out="", seconds=None, events_per_s=None, peak_rss_gib=None, note=result["error"]
                )
            else:
                row.update(
                    rows_out=result["rows_out"],
                    seconds=result["seconds"],
                    events_per_s=events / result["seconds"],
                    peak_rss_gib=result["peak_rss_gib"],
                    mb_out=result["mb_out"],
                )
            row["load_avg"] = load
            print({k: v for k, v in row.items() if k != "data"}, flush=True)
            rows.append(row)
    return rows


def folder_of(name: str, folders: list[Path]) -> Path | None:
    return next((f for f in folders if f.name == name), None)


def _replace_section(before: str) -> None:
    """Put the section write_results appended where the old one of this benchmark was."""
    text = RESULTS_MD.read_text()
    added = text[len(before) :]
    heading = f"\n## {TITLE}\n"
    start = before.find(heading)
    if start < 0:
        return
    nxt = before.find("\n## ", start + len(heading))
    end = nxt if nxt >= 0 else len(before)
    RESULTS_MD.write_text(before[:start] + added.rstrip("\n") + "\n" + before[end:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synth", type=Path, action="append", default=[], help="a `ctr synth` output folder")
    parser.add_argument("--generate", type=int, default=0, help="SYNTHETIC events from the generator here")
    parser.add_argument("--old-max", type=float, default=10e6, help="run the old job up to this many events")
    parser.add_argument(
        "--copies",
        type=int,
        default=0,
        help="also run on the last --synth set copied this many times (ids disjoint)",
    )
    parser.add_argument("--child", choices=["new", "old"], help=argparse.SUPPRESS)
    parser.add_argument("--part", help=argparse.SUPPRESS)
    parser.add_argument("--lake", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (child_new if args.child == "new" else child_old)(args.part, args.lake, args.out)
        print(json.dumps(result))
        return

    from models.settings import get_settings

    settings = get_settings()
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="batch-features-") as tmp:
        work = Path(tmp)
        real = real_lake(work / "real" / "lake")
        rows += run("Taobao slice (real)", real, work / "real" / "lake", work / "real", old=True)
        notes.append(
            f"Real: the 814-user Taobao slice's accepted events inside the dataset's 9 days ({real:,})."
        )
        datasets = []
        for folder in args.synth:
            meta = json.loads((folder / "SYNTHETIC.json").read_text())
            datasets.append((folder.name, lambda lake, folder=folder: synth_lake(folder, lake), meta))
        if args.generate:
            datasets.append(
                (f"generated-{args.generate}", lambda lake: generated_lake(args.generate, lake), None)
            )
        for name, make, meta in datasets:
            lake = work / name / "lake"
            t = time.perf_counter()
            n = make(lake)
            made = time.perf_counter() - t
            label = f"SYNTHETIC {n / 1e6:g} M"
            if meta:
                notes.append(
                    f"{label}: `ctr synth --events {meta['events']} --seed {meta['seed']}` "
                    f"(models.data.synth v{meta['generator_version']}, {meta['shoppers']:,} shoppers, "
                    f"{meta['items']:,} items, {meta['categories']:,} categories), converted to lake "
                    f"partitions in {made:.0f} s (not counted)."
                )
            else:
                notes.append(
                    f"{label}: this script's generator fitted to the real slice, {made:.0f} s (not counted)."
                )
            rows += run(label, n, lake, work / name, old=n <= args.old_max)
            for outputs in ("new", "old"):  # the lake stays for --copies
                shutil.rmtree(work / name / outputs, ignore_errors=True)
            if args.copies and meta and folder_of(name, args.synth) == args.synth[-1]:
                big = work / f"{name}-x{args.copies}" / "lake"
                t = time.perf_counter()
                n = replicated_lake(lake, args.copies, big)
                made = time.perf_counter() - t
                big_label = f"SYNTHETIC {n / 1e6:g} M"
                notes.append(
                    f"{big_label}: {args.copies} copies of the {label} set with disjoint shopper and "
                    f"item ids (categories shared), made in {made:.0f} s (not counted); the whole stage "
                    "and the rerun only."
                )
                rows += run(big_label, n, big, big.parent, old=n <= args.old_max, each_part=False)
                shutil.rmtree(big.parent)
            shutil.rmtree(work / name)
    notes += [
        f"DuckDB: memory_limit {settings.duckdb_memory_limit}, {settings.duckdb_threads} threads, "
        "spilling to CTR_DUCKDB_TEMP_DIR; the whole features stage reads the 9 day partitions and "
        "writes the four offline sources as `build_features` does.",
        "Each row ran in a process of its own; peak_rss_gib is that process's peak resident memory "
        "(DuckDB's buffers included). The old job's rows exclude reading the events into pandas.",
    ]
    print_table(TITLE, rows)
    before = RESULTS_MD.read_text()
    write_results("batch_features", TITLE, rows, notes)
    _replace_section(before)


if __name__ == "__main__":
    main()
