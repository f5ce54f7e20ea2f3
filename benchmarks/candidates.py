"""Candidate generation (models/retrieval/): recall on the real test days, build cost at size
(old in-memory NumPy build against the out-of-core DuckDB build), lookup latency.

Quality: the index is built on the events before CTR_TEST_START and every user with events on the
test days asks once, at the shop hour of their first test-day event, with their last 20 events;
recall@k is the share of the distinct items they touch on the test days that the list holds, averaged
over users. "new items" leaves out the items the user had touched before (and excludes them from the
list). Compared: co-visitation + category + popular fill, popularity of the hour (the cold-start list),
overall popularity. On the real data the DuckDB build is also checked equal to the NumPy one.

Build at size: SYNTHETIC raw day partitions (`ctr synth --events N --seed 0 --out DIR`) are turned
into lake-format Parquet day files with DuckDB (not timed), then each build runs in its own process
over all of them (until = one second after the last event), so its wall time and peak RSS are its
own: "old" reads the files with pandas and runs the NumPy build kept in tests/reference_candidates.py
(under an address-space limit, --old-limit-gib), "new" is the stage's build (models.retrieval.build.
build_index_to_folder) under CTR_DUCKDB_* limits. Where both run, their indexes are compared.

Usage: python benchmarks/candidates.py [--synthetic-dir /tmp/synth-1M --synthetic-dir /tmp/synth-10M]
       [--old-max-events 10000000]
Writes benchmarks/candidates.json and prints the section for RESULTS.md (it does not append to it).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HERE, machine, percentiles, print_table  # noqa: E402
from feature_repo.contract import (  # noqa: E402
    BEHAVIOR,
    CATEGORY_ID,
    EVENT_COLUMNS,
    EVENT_TIMESTAMP,
    ITEM_ID,
    USER_ID,
)
from models.features.engine import EngineConfig  # noqa: E402
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


def synthetic_lake(raw_dir: Path, lake: Path) -> list[Path]:
    """The raw day partitions of `raw_dir` as lake-format Parquet day files (canonical columns)."""
    import duckdb

    files = []
    con = duckdb.connect()
    for day in sorted(raw_dir.glob("date=*/events.csv")):
        out = lake / day.parent.name / "events.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        con.execute(
            f"""COPY (SELECT user_id::BIGINT AS {USER_ID}, item_id::BIGINT AS {ITEM_ID},
                category_id::BIGINT AS {CATEGORY_ID}, behavior AS {BEHAVIOR},
                to_timestamp(ts) AS {EVENT_TIMESTAMP}
            FROM read_csv(?, header = false, columns = {{'user_id': 'BIGINT', 'item_id': 'BIGINT',
                'category_id': 'BIGINT', 'behavior': 'VARCHAR', 'ts': 'BIGINT'}}))
            TO '{out}' (FORMAT parquet)""",
            [str(day)],
        )
        files.append(out)
    con.close()
    return files


def _child(kind: str, files: list[Path], out: Path, old_limit_gib: float) -> None:
    """One build in this process; prints its wall time, peak RSS and summary as JSON."""
    import duckdb

    paths = [str(f) for f in files]
    con = duckdb.connect()
    (micros,) = con.execute(
        f"SELECT epoch_us(max({EVENT_TIMESTAMP})) FROM read_parquet(?)", [paths]
    ).fetchone()
    con.close()
    until = pd.Timestamp(micros, unit="us", tz="UTC") + pd.Timedelta(seconds=1)
    started = time.perf_counter()
    if kind == "old":
        from tests.reference_candidates import build_index as reference_build

        limit = int(old_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        try:
            events = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
            index = reference_build(events, until)
            del events
            index.save(out)
        except MemoryError:
            print(json.dumps({"failed": f"MemoryError under a {old_limit_gib:g} GiB address-space limit"}))
            return
        summary = index.summary()
    else:
        from models.retrieval.build import build_index_to_folder

        summary = build_index_to_folder(files, until, out, limits=EngineConfig.from_settings(get_settings()))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_gib": peak_gib(), "summary": summary}))


def _run_child(kind: str, files: list[Path], out: Path, old_limit_gib: float) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--out",
        str(out),
        "--old-limit-gib",
        str(old_limit_gib),
    ]
    done = subprocess.run(command + [str(f) for f in files], capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"failed": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def same_index(a: Path, b: Path) -> bool:
    """Same lists in the same order, scores equal to 1e-12 (relative)."""
    left, right = CandidateIndex.load(a), CandidateIndex.load(b)
    for name, x in left.tables.items():
        y = right.tables[name]
        if x.shape != y.shape:
            return False
        ids = [c for c in x.columns if c != "score"]
        if not all((x[c].to_numpy() == y[c].to_numpy()).all() for c in ids):
            return False
        if not np.allclose(x["score"].to_numpy(), y["score"].to_numpy(), rtol=1e-12, atol=0):
            return False
    return left.meta == right.meta


def synthetic_builds(raw_dir: Path, old_max_events: int, old_limit_gib: float) -> list[dict]:
    """Old and new build of one SYNTHETIC set (old only up to `old_max_events`)."""
    meta = json.loads((raw_dir / "SYNTHETIC.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory(dir=raw_dir.parent, prefix="cands-bench-") as tmp:
        files = synthetic_lake(raw_dir, Path(tmp) / "lake")
        kinds = ["old", "new"] if meta["events"] <= old_max_events else ["new"]
        results = {k: _run_child(k, files, Path(tmp) / k / "candidates", old_limit_gib) for k in kinds}
        identical = (
            same_index(Path(tmp) / "old/candidates", Path(tmp) / "new/candidates")
            if all("failed" not in r for r in results.values()) and len(results) == 2
            else None
        )
        for kind, result in results.items():
            summary = result.get("summary", {})
            rows.append(
                {
                    "data": f"SYNTHETIC {meta['events'] / 1e6:g} M",
                    "build": "old (NumPy, in memory)" if kind == "old" else "new (DuckDB, out of core)",
                    "events": summary.get("events", meta["events"]),
                    "items": summary.get("items"),
                    "pairs kept": summary.get("pairs"),
                    "build_s": result.get("seconds"),
                    "events_per_s": round(summary["events"] / result["seconds"]) if summary else None,
                    "peak RSS GiB": result.get("peak_gib"),
                    "equal to old": {True: "yes", False: "NO", None: ""}[identical] if kind == "new" else "",
                    "note": result.get("failed", ""),
                }
            )
    return rows


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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--synthetic-dir", type=Path, action="append", help="raw SYNTHETIC day partitions")
    parser.add_argument(
        "--old-max-events", type=int, default=10_000_000, help="largest set the old build runs on"
    )
    parser.add_argument(
        "--old-limit-gib", type=float, default=14.0, help="address-space limit of the old build"
    )
    parser.add_argument("--json", type=Path, default=HERE / "candidates.json", help="where the results go")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.files, args.out, args.old_limit_gib)
        return
    synthetic = (
        args.synthetic_dir
        if args.synthetic_dir is not None
        else [Path("/tmp/synth-1M"), Path("/tmp/synth-10M")]
    )
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
    equal = real_equality(real)
    notes.append(
        "DuckDB build against the NumPy build on the real slice (until the test days and after the last "
        f"event): {'identical lists and order, scores within 1e-12' if equal else 'DIFFERENT'}."
    )
    build_rows = []
    for raw_dir in synthetic:
        build_rows += synthetic_builds(raw_dir, args.old_max_events, args.old_limit_gib)
    shares = speeds[0]["shares"]
    limits = EngineConfig.from_settings(settings)
    notes += [
        "Sources of the k=100 lists on the real slice: "
        + ", ".join(f"{s} {v:.0%}" for s, v in shares.items())
        + ".",
        "Lookup: recommend_with_sources(k=100) with the user's last 20 items and categories at a random "
        "hour, one thread; cold: cold_start(k=100).",
        f"Builds at size: each in its own process, peak RSS its own (ru_maxrss); new under DuckDB "
        f"memory_limit={limits.memory_limit}, threads={limits.threads} (CTR_DUCKDB_*), spilling to a temp "
        "folder; old reads every day file into pandas first. SYNTHETIC rows: build cost only.",
    ]
    speed_rows = [speed_row(s) for s in speeds]
    print_table("Candidate recall on the test days (mean per user)", recall_rows)
    print_table("Candidate index build and lookup (real)", speed_rows)
    print_table("Candidate index build at size (SYNTHETIC)", build_rows)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = args.json
    out.write_text(
        json.dumps(
            {
                "benchmark": "candidates",
                "when": stamp,
                "machine": machine(),
                "rows": recall_rows,
                "speed_rows": speed_rows,
                "build_rows": build_rows,
                "notes": notes,
            },
            indent=2,
        )
    )
    print(f"\nwrote {out}\n\nSection for RESULTS.md:\n")
    print(
        markdown(
            "Candidate generation: recall, build time at size, lookup latency",
            [recall_rows, speed_rows, build_rows],
            notes,
            stamp,
        )
    )


def real_equality(real: pd.DataFrame) -> bool:
    """Whether the DuckDB build equals the NumPy build on the real slice, at both cut-offs."""
    from tests.reference_candidates import build_index as reference_build

    settings = get_settings()
    with tempfile.TemporaryDirectory() as tmp:
        for i, until in enumerate(
            (settings.test_start, real[EVENT_TIMESTAMP].max() + pd.Timedelta(seconds=1))
        ):
            build_index(real, until).save(Path(tmp) / f"new{i}")
            reference_build(real, until).save(Path(tmp) / f"old{i}")
            if not same_index(Path(tmp) / f"old{i}", Path(tmp) / f"new{i}"):
                return False
    return True


if __name__ == "__main__":
    main()
