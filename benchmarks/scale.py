"""The cost curve: every stage of the pipeline on SYNTHETIC event logs of growing size, each stage
run as the pipeline runs it (`ctr run --stage NAME`, configuration only: CTR_RAW_EVENTS pointing
at `ctr synth` day partitions, the default window, Redis as the online store), in a process of
its own, so its wall time and peak RSS (os.wait4's ru_maxrss) are its own.

The chain: synth -> ingest -> validate -> apply_features -> build_features -> materialize ->
build_candidates -> build_training_set -> train_xgboost -> train_wide_deep -> evaluate. For each
size the table gives each stage's seconds, events/s and peak RSS, and the whole chain's total;
the notes give how each stage's time grows between sizes (the exponent b of time ~ events^b:
1 is linear). A stage that fails stops that size's chain; its row says so and where its log is.

Usage: python benchmarks/scale.py [--events 1e6 1e7 1e8] [--work DIR] [--stages NAME ...] [--keep]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, redis_server, write_results  # noqa: E402
from benchmarks.materialize import _redis_used  # noqa: E402

CTR = str(Path(sys.executable).parent / "ctr")
STAGES = (
    "ingest",
    "validate",
    "apply_features",
    "build_features",
    "materialize",
    "build_candidates",
    "build_training_set",
    "train_xgboost",
    "train_wide_deep",
    "evaluate",
)
TITLE = "The cost curve: each stage at 1 M, 10 M and 100 M SYNTHETIC events"
CHAIN = "whole chain"


def _label(n: int) -> str:
    return f"{n / 1e6:g} M" if n >= 1e6 else f"{n:,}"


def run_step(command: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int]:
    """Run one step as a child; returns its wall seconds, its own peak RSS (GiB) and exit status."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        began = time.perf_counter()
        child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except KeyboardInterrupt:  # stopped by the user: the step goes with it
            child.terminate()
            child.wait()
            raise
        seconds = time.perf_counter() - began
    child.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 2**20, child.returncode


def chain(n: int, work: Path, stages: list[str], redis: str) -> tuple[list[dict], bool]:
    """The chain on n SYNTHETIC events under `work`; one row per step, and whether the user
    stopped it (Ctrl-C or SIGTERM), so that the steps done so far are still reported."""
    synth, data = work / "synth", work / "data"
    env = {
        **os.environ,
        "CTR_DATA_DIR": str(data),
        "CTR_RAW_EVENTS": str(synth),
        "CTR_ONLINE_STORE": "redis",
        "CTR_REDIS_CONNECTION": redis,
        "CTR_DUCKDB_TEMP_DIR": str(work / "spill"),
        "PYTHONUNBUFFERED": "1",
    }
    steps = [("synth", [CTR, "synth", "--events", str(n), "--seed", "0", "--out", str(synth)])]
    steps += [(stage, [CTR, "run", "--stage", stage]) for stage in stages]
    rows, stopped = [], False
    for name, command in steps:
        if name == "synth" and (synth / "SYNTHETIC.json").exists():
            continue  # kept from an earlier run (--keep)
        log = work / "logs" / f"{name}.log"
        began = time.perf_counter()
        try:
            seconds, peak, code = run_step(command, env, log)
        except KeyboardInterrupt:
            stopped = True
            rows.append(
                {
                    "events": _label(n),
                    "stage": name,
                    "seconds": round(time.perf_counter() - began, 1),
                    "events_per_s": None,
                    "peak_rss_gib": None,
                    "result": f"stopped by the user before it ended: {log}",
                    "redis_mib": None,
                }
            )
            break
        row = {
            "events": _label(n),
            "stage": name,
            "seconds": round(seconds, 1),
            "events_per_s": round(n / seconds),
            "peak_rss_gib": round(peak, 2),
            "result": "ok" if code == 0 else f"failed ({code}): {log}",
            "redis_mib": round(_redis_used(redis) / 2**20) if name == "materialize" and code == 0 else None,
        }
        rows.append(row)
        print_table(f"SYNTHETIC {_label(n)}", rows[-1:])
        if code != 0:
            print(log.read_text()[-3000:], file=sys.stderr)
            break
    total = sum(r["seconds"] for r in rows)
    rows.append(
        {
            "events": _label(n),
            "stage": CHAIN,
            "seconds": round(total, 1),
            "events_per_s": round(n / total) if total else None,
            "peak_rss_gib": max(
                (r["peak_rss_gib"] for r in rows if r["peak_rss_gib"] is not None), default=None
            ),
            "result": "ok" if all(r["result"] == "ok" for r in rows) else "incomplete",
            "redis_mib": None,
        }
    )
    return rows, stopped


def _settings_note() -> list[str]:
    """The project settings the caller set for the run (e.g. a negative sampling rate), so the
    figures can be read against them; the ones the benchmark sets itself are left out."""
    own = {"CTR_DATA_DIR", "CTR_RAW_EVENTS", "CTR_ONLINE_STORE", "CTR_REDIS_CONNECTION"}
    own.add("CTR_DUCKDB_TEMP_DIR")
    given = sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith("CTR_") and k not in own)
    return [f"Settings given for this run: {', '.join(given)}."] if given else []


def growth(rows: list[dict], sizes: list[int]) -> list[str]:
    """Per stage, b in time ~ events^b between consecutive sizes."""
    notes = []
    by = {(r["events"], r["stage"]): r for r in rows}
    for small, big in zip(sizes, sizes[1:], strict=False):
        parts = []
        for stage in ("synth", *STAGES, CHAIN):
            a, b = by.get((_label(small), stage)), by.get((_label(big), stage))
            if a and b and a["result"] == b["result"] == "ok" and a["seconds"] > 0:
                exponent = math.log(b["seconds"] / a["seconds"]) / math.log(big / small)
                parts.append(f"{stage} {exponent:.2f}")
        if parts:
            span = f"{_label(small)} -> {_label(big)} events"
            notes.append(f"Growth of time, {span} (1 = linear): " + ", ".join(parts))
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="sizes to run")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument(
        "--stages", nargs="+", default=list(STAGES), choices=STAGES, metavar="NAME", help="stages to run"
    )
    parser.add_argument("--keep", action="store_true", help="keep each size's data (and reuse its synth)")
    args = parser.parse_args()
    base = args.work or Path(tempfile.mkdtemp(prefix="scale-"))
    sizes = sorted(int(n) for n in args.events)
    rows: list[dict] = []
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as Ctrl-C does
    try:
        for n in sizes:
            work = base / f"events-{n}"
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            with redis_server() as redis:
                done, stopped = chain(n, work, args.stages, redis)
            rows += done
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
            if stopped:
                break
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print_table(TITLE, rows)
    write_results(
        "scale",
        TITLE,
        rows,
        [
            "SYNTHETIC events from `ctr synth --seed 0` (fitted to the real Taobao slice); every figure "
            "here is from synthetic data. Each stage is `ctr run --stage NAME` in a child process; peak "
            "RSS is that process's own (os.wait4). Redis 7 on the same machine is the online store.",
            *growth(rows, sizes),
            *_settings_note(),
            f"Load averages (1/5/15 min) at the end: {' / '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        ],
    )


if __name__ == "__main__":
    main()
