"""Batch feature job throughput (events/s): the real Taobao slice, and a SYNTHETIC event log fitted
to it (events per user, inter-event times, item popularity, item -> category, behaviour mix).

Each part of the job is timed separately and the Parquet writes are included, as `build_features`
does them. Usage: python benchmarks/batch_features.py [--synthetic 10000000]
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import print_table, write_results  # noqa: E402
from feature_repo.contract import BEHAVIOR, CATEGORY_ID, EVENT_TIMESTAMP, ITEM_ID, USER_ID  # noqa: E402
from models.features.batch import (  # noqa: E402
    DayGrid,
    category_snapshots,
    item_snapshots,
    recent_activity_batches,
    recent_activity_schema,
    user_snapshots,
)

START = pd.Timestamp("2017-11-25T00:00:00+08:00")
END = pd.Timestamp("2017-12-04T00:00:00+08:00")


def real_events() -> pd.DataFrame:
    from models.data.events import load_events
    from models.settings import default_raw_events

    events = load_events(default_raw_events()).dropna()
    events = events[(events[EVENT_TIMESTAMP] >= START) & (events[EVENT_TIMESTAMP] < END)]
    return events.astype({USER_ID: "int64", ITEM_ID: "int64", CATEGORY_ID: "int64"}).reset_index(drop=True)


def synthetic_events(real: pd.DataFrame, n: int, seed: int = 7) -> pd.DataFrame:
    """n events fitted to `real`: per-user event counts and inter-event gaps resampled from it, items
    from a Zipf law whose exponent matches the real rank-frequency curve, each item in a category drawn
    from the real item -> category mix, behaviours in the real proportions."""
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
    offset -= np.repeat(offset[first], counts)  # seconds since the user's first event
    span = (END - START).total_seconds()
    start = rng.uniform(0, span, size=len(counts))
    seconds = (np.repeat(start, counts) + offset) % span  # wrap the rare overlong histories
    # item popularity: fit the Zipf exponent on the real rank-frequency curve (top 1,000 ranks)
    freq = np.sort(real[ITEM_ID].value_counts().to_numpy())[::-1][:1000]
    exponent = -np.polyfit(np.log(np.arange(1, len(freq) + 1)), np.log(freq), 1)[0]
    n_items = int(real[ITEM_ID].nunique() * n / len(real) * 0.35) + 1
    weights = np.arange(1, n_items + 1, dtype=np.float64) ** -exponent
    items = rng.choice(n_items, size=n, p=weights / weights.sum()).astype(np.int64) + 1
    item_category = rng.choice(real[CATEGORY_ID].to_numpy(), size=n_items + 1)
    share = real[BEHAVIOR].value_counts(normalize=True)
    behavior = rng.choice(share.index.to_numpy(), size=n, p=share.to_numpy())
    frame = pd.DataFrame(
        {
            USER_ID: users,
            ITEM_ID: items,
            CATEGORY_ID: item_category[items],
            BEHAVIOR: behavior,
            EVENT_TIMESTAMP: START.tz_convert("UTC") + pd.to_timedelta(np.floor(seconds), unit="s"),
        }
    )
    frame.attrs["zipf_exponent"] = float(exponent)
    frame.attrs["items"] = n_items
    return frame


def run(label: str, events: pd.DataFrame, out: Path) -> list[dict]:
    from models.features.store import write_offline, write_offline_batches

    grid = DayGrid.covering(START, END, "Asia/Shanghai")
    rows = []
    total = 0.0
    for name, build in (
        ("user snapshots", user_snapshots),
        ("item snapshots", item_snapshots),
        ("category snapshots", category_snapshots),
    ):
        t = time.perf_counter()
        frame = build(events, grid)
        write_offline(frame, out / f"{name.split()[0]}.parquet")
        seconds = time.perf_counter() - t
        total += seconds
        rows.append(
            {
                "data": label,
                "part": name,
                "events": len(events),
                "rows_out": len(frame),
                "seconds": seconds,
                "events_per_s": len(events) / seconds,
            }
        )
        del frame
        gc.collect()
    t = time.perf_counter()
    path = write_offline_batches(
        recent_activity_batches(events), recent_activity_schema(), out / "recent.parquet"
    )
    seconds = time.perf_counter() - t
    total += seconds
    import pyarrow.parquet as pq

    rows.append(
        {
            "data": label,
            "part": "recent activity (20 last events per event second)",
            "events": len(events),
            "rows_out": pq.ParquetFile(path).metadata.num_rows,
            "seconds": seconds,
            "events_per_s": len(events) / seconds,
        }
    )
    rows.append(
        {
            "data": label,
            "part": "whole job",
            "events": len(events),
            "rows_out": "",
            "seconds": total,
            "events_per_s": len(events) / total,
        }
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--synthetic", type=int, default=10_000_000, help="synthetic events (0: skip)")
    args = parser.parse_args()
    real = real_events()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += run("Taobao slice (real)", real, Path(tmp) / "real")
        notes = [f"Real: the 814-user Taobao slice inside the dataset's 9 days ({len(real):,} events)."]
        if args.synthetic:
            t = time.perf_counter()
            synthetic = synthetic_events(real, args.synthetic)
            made = time.perf_counter() - t
            label = f"SYNTHETIC {len(synthetic) / 1e6:.0f} M"
            zipf = synthetic.attrs["zipf_exponent"]
            notes.append(
                f"SYNTHETIC: {len(synthetic):,} events, {synthetic[USER_ID].nunique():,} users, "
                f"{synthetic[ITEM_ID].nunique():,} items seen of {synthetic.attrs['items']:,} "
                f"(Zipf exponent {zipf:.2f} fitted on the slice), generated in {made:.0f} s (not counted)."
            )
            rows += run(label, synthetic, Path(tmp) / "synthetic")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    notes.append(
        f"Peak resident memory of the run: {peak:.1f} GiB. One process, NumPy; Parquet writes included."
    )
    print_table("Batch feature job", rows)
    write_results("batch_features", "Batch feature job throughput", rows, notes)


if __name__ == "__main__":
    main()
