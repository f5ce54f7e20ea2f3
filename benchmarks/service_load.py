"""Load on the real ranking service: `bentoml serve services.ranker:Ranker` on a Redis online store.

For XGBoost and for Wide&Deep, /rank with 100 candidates:
* a fixed arrival rate (open loop: latency is measured from each request's scheduled time, so a
  slow server cannot hide its queueing), default 50 requests/s;
* closed-loop concurrency levels with `wrk` (Debian package `wrk`), where installed;
* the in-process floor for the same requests: features through the ranker's own reader, then the
  model, without HTTP.

Data: a finished pipeline run under --data-dir (`make demo` makes var/); its offline features are
materialized into a redis-server started here.
Usage: python benchmarks/service_load.py [--data-dir var] [--rate 50] [--seconds 20]
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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import environment, percentiles, print_table, redis_server, write_results  # noqa: E402
from benchmarks.load import open_loop, summary  # noqa: E402
from models.ops.processes import free_port, process_group  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CTR = str(Path(sys.executable).parent / "ctr")  # the project's CLI in the same environment
MODELS = ("ctr-xgboost", "ctr-wide-deep")


def requests_for(data_dir: Path, n_users: int = 200, n_items: int = 100) -> list[dict]:
    """Each of the most active users with the 100 items viewed most in the last day of the data."""
    events = pd.read_parquet(data_dir / "lake/accepted")  # every day partition
    users = events["user_id"].value_counts().index[:n_users].astype(int).tolist()
    last_day = events[events["event_timestamp"] >= events["event_timestamp"].max() - pd.Timedelta(days=1)]
    items = last_day.loc[last_day["behavior"] == "pv", "item_id"].value_counts().index[:n_items]
    at = int(events["event_timestamp"].max().timestamp())
    return [
        {"user_id": u, "item_ids": items.astype(int).tolist(), "context": {"request_ts": at}} for u in users
    ]


@contextlib.contextmanager
def serve(env: dict, log: Path) -> Iterator[str]:
    """`ctr serve` on a free port until /readyz answers; yields its URL, then stops it and its workers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process_group(
        [CTR, "serve", "--port", str(port)],
        env=env,
        cwd=ROOT,
        log=log,
        ready=f"{url}/readyz",
        timeout_s=300,
        name="ctr serve",
    ):
        yield url


def open_loop_row(url: str, bodies: list[dict], rate: float, seconds: float) -> dict:
    """A fixed arrival rate (benchmarks/load.py): latency from each request's scheduled time."""
    result = summary(open_loop(url, bodies, rate, seconds))
    keys = ("p50_ms", "p99_ms", "req_per_s", "non_200", "fallbacks")
    return {"n": result["requests"], **{k: result[k] for k in keys}}


WRK_SCRIPT = """
local bodies = {}
local i = 0
for line in io.lines("%s") do bodies[#bodies + 1] = line end
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/rank", {["Content-Type"] = "application/json"}, bodies[i])
end
"""


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def closed_loop(url: str, bodies: list[dict], connections: int, seconds: int, folder: Path) -> dict | None:
    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    lines = folder / "bodies.jsonl"
    lines.write_text("\n".join(json.dumps(b) for b in bodies))
    script = folder / "rank.lua"
    script.write_text(WRK_SCRIPT % lines)
    out = subprocess.run(
        [wrk, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "n": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50_ms": _ms(p50.group(1)),
        "p99_ms": _ms(p99.group(1)),
        "req_per_s": float(rate.group(1)),
        "non_200": int(errors.group(1)) if errors else 0,
        "fallbacks": None,
    }


def floor(model_name: str, bodies: list[dict], n: int) -> dict:
    """Features + model in this process for the same requests: what the HTTP path adds to."""
    from models.features.store import open_store
    from models.registry import load_by_alias
    from models.settings import get_settings
    from services.features import RankerFeatures

    settings = get_settings()
    served = load_by_alias(settings, name=model_name)
    features = RankerFeatures(open_store(settings), settings)
    samples = []
    for i in range(n + 20):
        body = bodies[i % len(bodies)]
        started = time.perf_counter()
        frame, _ = features.read(
            served.feature_service, body["user_id"], body["item_ids"], body["context"]["request_ts"]
        )
        served.predict(frame)
        if i >= 20:
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


FLOOR = "in-process floor (features + model)"


def _with_ratio(row: dict, rows: list[dict]) -> dict:
    """The row in a fixed column order, with its p50 over the same model's in-process floor p50
    (what HTTP, the framework and sharing one interpreter between requests add)."""
    floor_p50 = next(r["p50_ms"] for r in rows if r["model"] == row["model"] and r["load"] == FLOOR)
    keys = ("model", "load", "n", "req_per_s", "p50_ms", "p99_ms")
    return {
        **{k: row.get(k) for k in keys},
        "p50_x_floor": round(row["p50_ms"] / floor_p50, 2),
        **{k: v for k, v in row.items() if k not in keys},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT / "var", help="a finished pipeline run (make demo)"
    )
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop arrival rate, requests/s")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each load step")
    parser.add_argument("--connections", default="1,4,16", help="wrk concurrency levels")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    if not (data_dir / "mlflow/mlflow.db").exists():
        raise SystemExit(f"no pipeline run under {data_dir}: run `make demo` first")
    bodies = requests_for(data_dir)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url:
        folder = Path(tmp)
        # A registry of its own: applying to Redis must not change what the run's SQLite store uses.
        shutil.copy(data_dir / "feast/registry.db", folder / "registry.db")
        store_env = {
            "CTR_FEAST_REGISTRY": str(folder / "registry.db"),
            "CTR_DATA_DIR": str(data_dir),
            "CTR_ONLINE_STORE": "redis",
            "CTR_REDIS_CONNECTION": redis_url,
            "PYTHONPATH": str(ROOT),
        }
        env = {**os.environ, **store_env}
        stages = [CTR, "run", "--stage", "apply_features", "--stage", "materialize"]
        done = subprocess.run(stages, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"materializing into Redis failed:\n{done.stderr[-3000:]}")
        for model in MODELS:
            model_env = {
                **env,
                "CTR_SERVED_MODEL": model,
                "CTR_CHALLENGER_SHARE": "0",
                "CTR_SERVING_LOG": str(folder / f"log-{model}"),
            }
            with environment(**store_env, CTR_SERVED_MODEL=model):
                rows.append(
                    {
                        "model": model,
                        "load": FLOOR,
                        **floor(model, bodies, 300),
                    }
                )
            with serve(model_env, folder / f"serve-{model}.log") as url:
                for body in bodies[:20]:
                    httpx.post(f"{url}/rank", json=body, timeout=30)
                result = open_loop_row(url, bodies, args.rate, args.seconds)
                rows.append({"model": model, "load": f"open loop {args.rate:g} req/s", **result})
                for c in (int(x) for x in args.connections.split(",")):
                    result = closed_loop(url, bodies, c, int(args.seconds), folder)
                    if result:
                        rows.append({"model": model, "load": f"wrk {c} connections", **result})
    rows = [_with_ratio(row, rows) for row in rows]
    print_table("/rank, 1 user + 100 candidates, Redis online store", rows)
    notes = [
        f"Requests: the {len(bodies)} most active users of the Taobao slice, each with the 100 items viewed "
        "most on the data's last day, at the data's last second (request-time features live).",
        "Open loop: asyncio + httpx in the benchmark process, latency from the scheduled send time. wrk: "
        "1 thread, keep-alive, cycling the same bodies. Load generator and server share the 2 cores.",
        "Floor: the ranker's feature read (Feast online store, Redis) and the model's predict for the same "
        "request in one process, no HTTP; 20 warm-up requests.",
        "Server: `ctr serve` (bentoml serve, 1 worker), CTR_CHALLENGER_SHARE=0, serving log on.",
    ]
    write_results("service_load", "Ranking service under load: /rank with 100 candidates", rows, notes)


if __name__ == "__main__":
    main()
