"""An open-loop load generator for the services: requests leave at fixed times whatever the server
does, and each latency is counted from the request's scheduled time, so a stalled server cannot hide
its queue (the "coordinated omission" a closed loop of clients suffers from).

Used by benchmarks/service_load.py and by the reliability tests, which inject faults while it runs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Outcome:
    """One request: when it was due (s after the start), what came back, and how long it took."""

    due_s: float
    latency_s: float
    status: int | None  # None: no response at all (refused, reset, timed out): a lost request
    fallback: bool = False  # the answer came from the degraded path (the ranker's "fallback" flag)
    reason: str = ""  # why: the ranker's fallback_reason, or the client error of a lost request


def open_loop(
    url: str,
    bodies: Sequence,
    rate: float,
    seconds: float,
    path: str = "/rank",
    headers: dict[str, str] | None = None,
    timeout_s: float = 30,
    on_answer: Callable[[float, dict], None] | None = None,
) -> list[Outcome]:
    """POST bodies[i % len(bodies)] to url+path at `rate` per second for `seconds`; one Outcome each.
    `bodies` may be any sequence (e.g. one that draws each body when asked); `on_answer` is called
    with each 200 answer's due time (s after the start) and body."""
    return asyncio.run(_open_loop(url + path, bodies, rate, seconds, headers or {}, timeout_s, on_answer))


async def _open_loop(
    target: str,
    bodies: Sequence,
    rate: float,
    seconds: float,
    headers: dict[str, str],
    timeout_s: float,
    on_answer: Callable[[float, dict], None] | None = None,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits, headers=headers) as client:
        start = time.perf_counter() + 0.1

        async def one(i: int) -> None:
            due = start + i / rate
            try:
                response = await client.post(target, json=bodies[i % len(bodies)])
            except httpx.HTTPError as exc:
                outcomes.append(Outcome(due - start, time.perf_counter() - due, None, reason=repr(exc)))
                return
            body = response.json() if response.status_code == 200 else None
            if on_answer is not None and body is not None:
                on_answer(due - start, body)
            fallback, reason = False, ""
            if isinstance(body, dict) and body.get("fallback"):
                fallback, reason = True, str(body.get("fallback_reason") or "")
            latency = time.perf_counter() - due
            outcomes.append(Outcome(due - start, latency, response.status_code, fallback, reason))

        tasks = []
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)
    return sorted(outcomes, key=lambda o: o.due_s)


def summary(outcomes: list[Outcome]) -> dict:
    """Latency percentiles (ms, over answered requests), throughput and what came back."""
    import numpy as np

    answered = [o for o in outcomes if o.status is not None]
    latencies = np.array([o.latency_s for o in answered]) * 1000
    span = max((o.due_s + o.latency_s for o in outcomes), default=0.0)
    statuses: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for o in outcomes:
        key = str(o.status) if o.status is not None else "no response"
        statuses[key] = statuses.get(key, 0) + 1
        if o.fallback:
            reasons[o.reason] = reasons.get(o.reason, 0) + 1
    return {
        "requests": len(outcomes),
        "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else float("nan"),
        "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else float("nan"),
        "max_ms": float(latencies.max()) if len(latencies) else float("nan"),
        "req_per_s": len(answered) / span if span else 0.0,
        "statuses": statuses,
        "server_errors": sum(1 for o in answered if o.status >= 500),
        "lost": len(outcomes) - len(answered),
        "non_200": sum(1 for o in outcomes if o.status != 200),
        "fallbacks": sum(1 for o in outcomes if o.fallback),
        "fallback_reasons": reasons,
    }
