"""Raw ingest + GX validation (`ctr run --stage ingest`, `--stage validate`) on SYNTHETIC day
partitions: wall time, events/s and peak RSS of each stage, for one day and for the whole window,
of this checkout and, with --old REV, of that git revision's code side by side (up to --old-max);
then one corrupt day among nine (a copy of a set with one day's partition damaged): only that day
is held back and the counts reconcile. Each row records the load average (as `uptime` gives it)
when it finished: the machine may be shared.

Each stage runs in a fresh child process, so its peak RSS (ru_maxrss from wait4) is its own.
Usage:
  python benchmarks/ingest_validate.py [--sizes 1M 10M 100M] [--root DIR] [--old REV] [--old-max 10M]
      [--scopes "one day" window] [--corrupt 10M|none] [--tag NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import print_table, write_results  # noqa: E402
from models.data import synth  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DAY = ("2017-12-01T00:00:00+08:00", "2017-12-02T00:00:00+08:00")  # the one day measured alone
CORRUPT_DAY = "2017-11-29"

STAGE = """
import json, sys
from datetime import datetime
from models import pipeline
from models.data.validation import DataValidationError
from models.settings import get_settings
stage, start, end = sys.argv[1], sys.argv[2] or None, sys.argv[3] or None
start = start and datetime.fromisoformat(start)
end = end and datetime.fromisoformat(end)
settings = get_settings()
try:
    result = getattr(pipeline, stage)(settings, start, end)
    print(json.dumps({"ok": True, "rows": getattr(result, "rows", None) or getattr(result, "input_rows", 0)}))
except DataValidationError as error:
    print(json.dumps({"ok": False, "error": str(error).splitlines()[0][:300]}))
"""


def run_stage(stage: str, data_dir: Path, raw: Path, span: tuple[str, str], code: Path | None) -> dict:
    """One stage in a child process: wall seconds, peak RSS and what it printed."""
    env = dict(os.environ, CTR_DATA_DIR=str(data_dir), CTR_RAW_EVENTS=str(raw), PYTHONUNBUFFERED="1")
    if code is not None:  # an older revision's library ahead of this checkout's
        env["PYTHONPATH"] = str(code)
    began = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", STAGE, stage, *span], env=env, cwd=code or ROOT, stdout=subprocess.PIPE
    )
    out = child.stdout.read().decode() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - began
    if status != 0:
        raise SystemExit(f"{stage} failed (status {status}) on {raw}")
    printed = json.loads(out.strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": usage.ru_maxrss / 1024, **printed}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def measure(size: str, raw: Path, version: str, code: Path | None, scope: str) -> dict:
    span = DAY if scope == "one day" else ("", "")
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
        ingest = run_stage("ingest", Path(scratch), raw, span, code)
        validate = run_stage("validate", Path(scratch), raw, span, code)
    rows = ingest["rows"]
    total = ingest["seconds"] + validate["seconds"]
    return {
        "data": f"SYNTHETIC {size}",
        "scope": scope,
        "code": version,
        "rows": rows,
        "ingest_s": round(ingest["seconds"], 1),
        "ingest_rss_mb": round(ingest["peak_rss_mb"]),
        "validate_s": round(validate["seconds"], 1),
        "validate_rss_mb": round(validate["peak_rss_mb"]),
        "ingest_cpu_s": round(ingest["cpu_seconds"], 1),
        "validate_cpu_s": round(validate["cpu_seconds"], 1),
        "ingest_events_per_s": round(rows / ingest["seconds"]),
        "validate_events_per_s": round(rows / validate["seconds"]),
        "events_per_s": round(rows / total),
        "events_per_cpu_s": round(rows / (ingest["cpu_seconds"] + validate["cpu_seconds"])),
        "peak_rss_mb": round(max(ingest["peak_rss_mb"], validate["peak_rss_mb"])),
        "load_avg": load_average(),
    }


def corrupt_copy(source: Path, out: Path) -> int:
    """A copy of `source` whose CORRUPT_DAY has every third line damaged (an unknown behaviour,
    a line cut short, bytes that are not UTF-8); the lines of that day."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(source, out)
    day = out / f"date={CORRUPT_DAY}" / synth.DAY_FILE
    lines = day.read_bytes().splitlines()
    for i in range(0, len(lines), 3):
        kind = (i // 3) % 3
        if kind == 0:
            lines[i] = lines[i].replace(b",pv,", b",click,")
        elif kind == 1:
            lines[i] = lines[i].rsplit(b",", 2)[0]
        else:
            lines[i] = b"\xff\xfe" + lines[i][2:]
    day.write_bytes(b"\n".join(lines) + b"\n")
    return len(lines)


def corrupt_run(size: str, source: Path, root: Path) -> dict:
    raw = root / f"synth-{size}-corrupt-day"
    damaged = corrupt_copy(source, raw)
    try:
        with tempfile.TemporaryDirectory(prefix="ingest-bench-") as scratch:
            ingest = run_stage("ingest", Path(scratch), raw, ("", ""), None)
            validate = run_stage("validate", Path(scratch), raw, ("", ""), None)
            reports = sorted(Path(scratch, "quarantine").glob("date=*/report.json"))
            summaries = {p.parent.name.removeprefix("date="): json.loads(p.read_text()) for p in reports}
            accepted = sorted(
                p.parent.name.removeprefix("date=")
                for p in Path(scratch, "lake", "accepted").glob("date=*/events.parquet")
            )
    finally:
        shutil.rmtree(raw, ignore_errors=True)
    held = [d for d, s in summaries.items() if not s["success"]]
    inputs = sum(s["input_rows"] for s in summaries.values())
    kept = sum(s["accepted_rows"] + s["quarantined_rows"] for s in summaries.values())
    return {
        "data": f"SYNTHETIC {size}, {CORRUPT_DAY} damaged",
        "rows": ingest["rows"],
        "damaged_day_lines": damaged,
        "days_held_back": ", ".join(held),
        "days_accepted": len(accepted),
        "quarantined": sum(s["quarantined_rows"] for s in summaries.values()),
        "input = accepted + quarantined": "yes" if inputs == kept == ingest["rows"] else "NO",
        "ingest_s": round(ingest["seconds"], 1),
        "validate_s": round(validate["seconds"], 1),
        "peak_rss_mb": round(max(ingest["peak_rss_mb"], validate["peak_rss_mb"])),
        "validate_says": validate.get("error", "passed"),
        "load_avg": load_average(),
    }


def old_code(revision: str, into: Path) -> Path:
    """The library of `revision` (models/, feature_repo/) extracted under `into`."""
    archive = subprocess.run(
        ["git", "archive", revision, "models", "feature_repo"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["1M", "10M"], help="SYNTHETIC sets ROOT/synth-<size>")
    parser.add_argument("--root", type=Path, default=Path("/tmp"))
    parser.add_argument("--old", default="", help="git revision of the code to compare with")
    parser.add_argument("--scopes", nargs="+", default=["one day", "window"], choices=["one day", "window"])
    parser.add_argument("--old-max", default="10M", help="largest size the old code is run on")
    parser.add_argument(
        "--corrupt", default="", help="size of the corrupt-day run (default: the largest; none: no such run)"
    )
    parser.add_argument("--tag", default="", help="written as ingest_validate_<tag>.json (one run per tag)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="ingest-old-code-") as extracted:
        code = old_code(args.old, Path(extracted)) if args.old else None
        for size in args.sizes:
            raw = args.root / f"synth-{size}"
            for scope in args.scopes:
                rows.append(measure(size, raw, "new", None, scope))
                print(rows[-1], flush=True)
                if code is not None and synth.parse_size(size) <= synth.parse_size(args.old_max):
                    rows.append(measure(size, raw, f"old ({args.old})", code, scope))
                    print(rows[-1], flush=True)
    batch = os.environ.get("CTR_INGEST_BATCH_ROWS", "1000000")
    print_table("Raw ingest + GX validation: Arrow parse vs line-by-line", rows)
    suffix = f"_{args.tag}" if args.tag else ""
    write_results(
        f"ingest_validate{suffix}",
        "Raw ingest + GX validation at size: Arrow CSV parse vs line-by-line",
        rows,
        [
            "SYNTHETIC data (ctr synth, seed 0): Taobao-format day partitions, 9 days; "
            "no quality is claimed.",
            f"new: this checkout; old: git revision {args.old or '-'} (lines split by pandas, batch counted "
            f"by a read); both streamed with CTR_INGEST_BATCH_ROWS={batch}. one day: {DAY[0][:10]} alone; "
            "window: all 9 days.",
            "Each stage in its own child process: seconds wall clock, peak RSS from wait4; events/s = rows / "
            "(ingest + validate), per stage rows / its seconds. cpu_s: the stage's user + system CPU seconds "
            "(wait4); events_per_cpu_s = rows / both stages' CPU seconds, which a busy machine inflates far "
            "less than wall time. Validation keeps every chunk's result in a file-backed GX project and "
            "rebuilds the Data Docs once per day. load_avg: the machine's 1/5/15 minute load average when "
            "the row finished (the machine is shared).",
        ],
    )
    if args.corrupt == "none":
        return 0
    size = args.corrupt or max(args.sizes, key=synth.parse_size)
    corrupt = [corrupt_run(size, args.root / f"synth-{size}", args.root)]
    print_table("One corrupt day among nine", corrupt)
    write_results(
        f"ingest_validate_corrupt_day{suffix}",
        "Bad input at scale: one corrupt day among nine",
        corrupt,
        [
            f"SYNTHETIC {size} copied, {CORRUPT_DAY}'s partition damaged on every third line (unknown "
            "behaviour, a line cut short, bytes that are not UTF-8); this checkout, "
            f"CTR_INGEST_BATCH_ROWS={batch}.",
            "Validation fails naming the broken day; the other days get their accepted partitions; every "
            "line of every day is accepted or quarantined.",
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
