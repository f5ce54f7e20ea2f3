"""Replay a behaviour log into the ingest service at a chosen speed: `ctr replay FILE --speedup N`.

Events are sent in time order, each batch when the replay clock reaches its events' time: the
clock runs `speedup` times faster than the recorded one (0: as fast as the service takes them). A
replay that falls behind sends everything already due in one request, up to the batch size, and so
catches up. Ctrl-C stops it with the totals so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
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
    # Stopped by Ctrl-C: the counts are those of the batches the service had answered by then.
    interrupted: bool = False


def load_stream(path: Path | str) -> pd.DataFrame:
    """A raw Taobao CSV as canonical events in time order, with the shop's own user ids (the ingest
    service pseudonymises them); rows that do not parse are skipped."""
    from models.data.events import load_events

    events = load_events(path, user_id_key="")
    events = events.dropna(subset=[USER_ID, ITEM_ID, CATEGORY_ID, BEHAVIOR, EVENT_TIMESTAMP])
    return events.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)


def batches(
    events: pd.DataFrame,
    speedup: float,
    max_batch: int,
    tick_s: float = 0.05,
    elapsed: Callable[[], float] | None = None,
) -> Iterator[tuple[float, pd.DataFrame]]:
    """(send at, in seconds from the start; events) in order: the events whose replayed time falls in
    each tick, at most `max_batch` at a time.

    With `elapsed` (the seconds since the replay started, read when the next batch is due), a
    replay that is behind takes every event due by now into one batch: it catches up in larger
    requests instead of staying behind by the cost of each small one."""
    seconds = events[EVENT_TIMESTAMP].to_numpy(dtype="datetime64[ms]").astype(np.int64) / 1000.0
    due = (seconds - seconds[0]) / speedup if speedup > 0 else np.zeros(len(events))
    tick = np.floor(due / tick_s).astype(np.int64)
    a = 0
    while a < len(events):
        now_tick = tick[a] if elapsed is None else max(tick[a], int(np.floor(elapsed() / tick_s)))
        b = int(np.searchsorted(tick, now_tick, side="right"))
        b = min(max(b, a + 1), a + max_batch)
        yield float(due[a]), events.iloc[a:b]
        a = b


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
    """Send the events of `path` to the ingest service at `url`; `token`: its CTR_API_TOKEN, if any.

    Ctrl-C (KeyboardInterrupt) ends the replay early: the totals so far come back with
    `interrupted` set. A batch cut off mid-request is not counted; the service may have logged it,
    and sending it again counts it once, as any redelivery."""
    totals = ReplayTotals()
    started = time.perf_counter()
    try:
        events = load_stream(path)
        if limit is not None:
            events = events.iloc[:limit]
        if events.empty:
            return totals
        started = time.perf_counter()
        _send(events, url, speedup, max_batch, out, token, totals, started)
    except KeyboardInterrupt:
        totals.interrupted = True
    totals.seconds = time.perf_counter() - started
    out.write("\n")
    out.flush()
    return totals


def _send(
    events: pd.DataFrame,
    url: str,
    speedup: float,
    max_batch: int,
    out: TextIO,
    token: str,
    totals: ReplayTotals,
    started: float,
) -> None:
    """The replay loop: batches on the replay clock over one kept-alive connection, a progress line
    every half second; `totals` counts what the service answered."""
    import httpx

    first = events[EVENT_TIMESTAMP].iloc[0]
    last_shown = 0.0
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def elapsed() -> float:
        return time.perf_counter() - started

    with httpx.Client(base_url=url.rstrip("/"), timeout=60, headers=headers) as client:
        for send_at, batch in batches(events, speedup, max_batch, elapsed=elapsed):
            wait = send_at - elapsed()
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
            now = elapsed()
            if now - last_shown >= 0.5 or totals.sent == len(events):
                last_shown = now
                clock = batch[EVENT_TIMESTAMP].iloc[-1]
                lag = max(0.0, now - send_at)
                out.write(
                    f"\r{totals.sent:>9,}/{len(events):,} events ({totals.sent / len(events):6.1%}) "
                    f"| {totals.sent / now:8,.0f} ev/s | replay clock {clock:%Y-%m-%d %H:%M:%S}Z "
                    f"(+{(clock - first).total_seconds():,.0f} s) | behind {lag:5.2f} s "
                    f"| new {totals.accepted:,} dup {totals.duplicates:,} late {totals.late:,}"
                )
                out.flush()
