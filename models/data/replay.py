"""Replay a behaviour log into the ingest service at a chosen speed: `ctr replay FILE --speedup N`.

Events are sent in time order, each batch when the replay clock reaches its events' time: the
clock runs `speedup` times faster than the recorded one (0: as fast as the service takes them).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd

from feature_repo.contract import BEHAVIOR, CATEGORY_ID, EVENT_TIMESTAMP, ITEM_ID, USER_ID


@dataclass
class ReplayTotals:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    late: int = 0
    requests: int = 0
    seconds: float = 0.0


def load_stream(path: Path | str) -> pd.DataFrame:
    """A raw Taobao CSV as canonical events in time order, with the shop's own user ids (the ingest
    service pseudonymises them); rows that do not parse are skipped."""
    from models.data.events import load_events

    events = load_events(path, user_id_key="")
    events = events.dropna(subset=[USER_ID, ITEM_ID, CATEGORY_ID, BEHAVIOR, EVENT_TIMESTAMP])
    return events.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)


def batches(
    events: pd.DataFrame, speedup: float, max_batch: int, tick_s: float = 0.05
) -> Iterator[tuple[float, pd.DataFrame]]:
    """(send at, in seconds from the start; events) in order: the events whose replayed time falls in
    each tick, at most `max_batch` at a time."""
    seconds = events[EVENT_TIMESTAMP].to_numpy(dtype="datetime64[ms]").astype(np.int64) / 1000.0
    due = (seconds - seconds[0]) / speedup if speedup > 0 else np.zeros(len(events))
    tick = np.floor(due / tick_s).astype(np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(tick)) + 1, len(events)]
    for lo, hi in zip(starts[:-1], starts[1:], strict=True):
        for a in range(lo, hi, max_batch):
            yield float(due[a]), events.iloc[a : min(a + max_batch, hi)]


def payload(events: pd.DataFrame) -> dict:
    from models.data.events import unix_seconds

    frame = pd.DataFrame(
        {
            USER_ID: events[USER_ID].astype("int64"),
            ITEM_ID: events[ITEM_ID].astype("int64"),
            CATEGORY_ID: events[CATEGORY_ID].astype("int64"),
            BEHAVIOR: events[BEHAVIOR].astype(str),
            EVENT_TIMESTAMP: unix_seconds(events[EVENT_TIMESTAMP]),
        }
    )
    return {"events": frame.to_dict(orient="records")}


def replay(
    path: Path | str,
    url: str,
    speedup: float,
    max_batch: int = 500,
    limit: int | None = None,
    out: TextIO = sys.stderr,
    token: str = "",
) -> ReplayTotals:
    """Send the events of `path` to the ingest service at `url`; `token`: its CTR_API_TOKEN, if any."""
    import httpx

    events = load_stream(path)
    if limit is not None:
        events = events.iloc[:limit]
    totals = ReplayTotals()
    if events.empty:
        return totals
    first = events[EVENT_TIMESTAMP].iloc[0]
    started = time.perf_counter()
    last_shown = 0.0
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url.rstrip("/"), timeout=60, headers=headers) as client:
        for send_at, batch in batches(events, speedup, max_batch):
            wait = send_at - (time.perf_counter() - started)
            if wait > 0:
                time.sleep(wait)
            response = client.post("/events", json=payload(batch))
            if response.status_code != 200:
                raise RuntimeError(f"{url}/events answered {response.status_code}: {response.text[:500]}")
            body = response.json()
            totals.sent += len(batch)
            totals.accepted += body["accepted"]
            totals.duplicates += body["duplicates"]
            totals.late += body["late"]
            totals.requests += 1
            elapsed = time.perf_counter() - started
            if elapsed - last_shown >= 0.5 or totals.sent == len(events):
                last_shown = elapsed
                clock = batch[EVENT_TIMESTAMP].iloc[-1]
                lag = max(0.0, elapsed - send_at)
                out.write(
                    f"\r{totals.sent:>9,}/{len(events):,} events ({totals.sent / len(events):6.1%}) "
                    f"| {totals.sent / elapsed:8,.0f} ev/s | replay clock {clock:%Y-%m-%d %H:%M:%S}Z "
                    f"(+{(clock - first).total_seconds():,.0f} s) | behind {lag:5.2f} s "
                    f"| new {totals.accepted:,} dup {totals.duplicates:,} late {totals.late:,}"
                )
                out.flush()
    totals.seconds = time.perf_counter() - started
    out.write("\n")
    return totals
