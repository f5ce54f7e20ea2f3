"""The daily monitoring readout over a day of SYNTHETIC serving log: wall time, served rows/s and peak
resident memory of `file_readout` (DuckDB over the log's Parquet files, the stage the
ctr_monitoring DAG runs) at growing sizes, beside the same readout on frames read whole into memory
(`read_serving_log` + `window_readout`) where those fit.

A shop serving /rank at 50 requests/s with 100 candidates logs 432 M rows a day. The log here is
written by DuckDB in the serving log's own layout (date=YYYY-MM-DD/part-*.parquet, the columns
`rows_of` writes, 10 logged features), for one UTC day, with ~1 M shoppers over a 4 M-item
catalogue (Taobao's proportions), 10 % of shoppers on the challenger, 1 % fallback responses, and
outcomes planted in the accepted events: 5 % of served rows viewed within the hour, a fifth of
those carted. Each size runs in a process of its own, so its peak RSS is its own.

Usage: python benchmarks/readout.py [--rows 1e6 1e7 1e8] [--in-memory-max 1e7] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_results  # noqa: E402

DAY = "2017-12-02"
ITEMS_PER_REQUEST = 100
SHOPPERS = 1_000_000
CATALOGUE = 4_000_000
ROWS_PER_FILE = 2_000_000
FEATURES = [f"feature_{k}" for k in range(9)]
TITLE = "Monitoring readout over a day of serving log"


def _load() -> str:
    return os.getloadavg().__repr__()


def write_day(work: Path, rows: int) -> dict:
    """A day of SYNTHETIC serving log, the accepted events after it and a training set under
    `work` (a CTR_DATA_DIR), written by DuckDB in the project's layouts."""
    import duckdb
    import pandas as pd

    from models.data import lake
    from models.settings import get_settings

    os.environ["CTR_DATA_DIR"] = str(work)
    settings = get_settings()
    requests = rows // ITEMS_PER_REQUEST
    log_dir = settings.paths.serving_log / f"date={DAY}"
    log_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(config={"memory_limit": "4GB", "preserve_insertion_order": "false"})
    con.execute("SET TimeZone = 'UTC'")
    features = ", ".join(
        f"CASE WHEN fallback THEN 'NaN'::FLOAT ELSE (hash(r, {k}) % 1000)::FLOAT / 100 END AS f_{name}"
        for k, name in enumerate(FEATURES)
    )
    per_file = ROWS_PER_FILE // ITEMS_PER_REQUEST
    for part, first in enumerate(range(0, requests, per_file)):
        last = min(first + per_file, requests)
        con.execute(
            f"""
            COPY (
              WITH req AS (
                SELECT r, md5(r::VARCHAR) AS request_id,
                       TIMESTAMPTZ '{DAY} 00:00:00+00'
                         + to_microseconds((r * 86400000000 // {requests})::BIGINT) AS served_at,
                       (hash(r, 'user') % {SHOPPERS})::BIGINT AS user_id,
                       hash(r, 'fallback') % 100 = 0 AS fallback
                FROM range({first}, {last}) t(r)
              )
              SELECT request_id, served_at, 'rank' AS endpoint, user_id,
                     (floor({CATALOGUE} * pow((hash(r, k) % 1000003) / 1000003.0, 3)))::BIGINT AS item_id,
                     (k + 1)::INTEGER AS position, ((hash(r, k, 's') % 10000) / 10000.0)::FLOAT AS score,
                     CASE WHEN user_id % 10 = 0 THEN 'challenger' ELSE 'champion' END AS variant,
                     'ctr-xgboost' AS model_name,
                     CASE WHEN user_id % 10 = 0 THEN '4' ELSE '3' END AS model_version,
                     'ctr_ranker_realtime_v1' AS feature_service, fallback, false AS unknown_item,
                     'covisitation' AS candidate_source,
                     CASE WHEN fallback THEN 'NaN'::FLOAT ELSE (hash(r, k, 'c') % 500)::FLOAT END
                       AS f_category_id,
                     {features}
              FROM req, range({ITEMS_PER_REQUEST}) i(k)
            ) TO '{log_dir}/part-{part:06d}.parquet' (FORMAT parquet)
            """
        )
    # Outcomes: 5 % of served rows viewed a minute later, a fifth of those carted; written as the
    # accepted lake partition of the day, beside background events of other items.
    events_path = lake.partition_path(settings, lake.ACCEPTED, pd.Timestamp(DAY, tz=settings.timezone))
    events_path.parent.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"""
        COPY (
          WITH served AS (SELECT * FROM read_parquet('{log_dir}/*.parquet')),
          viewed AS (
            SELECT user_id, item_id, 0::BIGINT AS category_id, 'pv' AS behavior,
                   served_at + INTERVAL 60 SECOND AS event_timestamp, request_id, position
            FROM served WHERE hash(request_id, position) % 20 = 0
          )
          SELECT user_id, item_id, category_id, behavior, event_timestamp FROM viewed
          UNION ALL
          SELECT user_id, item_id, category_id, 'cart', event_timestamp + INTERVAL 120 SECOND
          FROM viewed WHERE hash(request_id, position, 'cart') % 5 = 0
        ) TO '{events_path}' (FORMAT parquet)
        """
    )
    training_rows = min(rows // 10, 10_000_000)
    columns = ", ".join(f"((hash(r, {k}) % 1000)::DOUBLE / 100 + 0.1) AS {n}" for k, n in enumerate(FEATURES))
    settings.paths.training_set.parent.mkdir(parents=True, exist_ok=True)
    con.execute(
        f"COPY (SELECT (hash(r, 'c') % 500)::BIGINT AS category_id, {columns} "
        f"FROM range({training_rows}) t(r)) TO '{settings.paths.training_set}' (FORMAT parquet)"
    )
    events = con.execute(f"SELECT count(*) FROM read_parquet('{events_path}')").fetchall()[0][0]
    con.close()
    return {"requests": requests, "events": events, "training_rows": training_rows}


def child(work: Path, way: str) -> dict:
    """One readout of the day under `work`, in this process."""
    import pandas as pd

    os.environ["CTR_DATA_DIR"] = str(work)
    from models.monitoring.readout import Thresholds, file_readout, window_readout
    from models.settings import get_settings

    settings = get_settings()
    start = pd.Timestamp(f"{DAY}T00:00:00+00:00").to_pydatetime()
    end = start + pd.Timedelta(days=1)
    thresholds = Thresholds.from_settings(settings)
    began = time.perf_counter()
    if way == "files":
        summary = file_readout(settings, start, end, CATALOGUE, thresholds)
    else:
        from models.data import lake
        from models.monitoring.serving_log import read_serving_log

        served = read_serving_log(settings.paths.serving_log, start, end)
        events = lake.read_events(settings, lake.ACCEPTED, start, end + pd.Timedelta(days=1))
        training = pd.read_parquet(settings.paths.training_set)
        summary = window_readout(settings, served, events, training, CATALOGUE, thresholds)
    seconds = time.perf_counter() - began
    champion = summary["ab"]["variants"]["champion"]
    return {
        "seconds": round(seconds, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "requests": summary["ab"]["requests"],
        "champion_row_ctr": round(champion["row_ctr"], 4),
        "champion_online_auc": None if champion["online_auc"] is None else round(champion["online_auc"], 4),
        "coverage": round(summary["coverage"]["coverage"], 4),
        "drift_features": len(summary["drift"]),
        "breaches": len(summary["breaches"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=float, nargs="+", default=[1e6, 1e7, 1e8], help="served rows per run")
    parser.add_argument(
        "--in-memory-max", type=float, default=1e7, help="also read the frames whole up to this many rows"
    )
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", nargs=2, metavar=("WORK", "WAY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), args.child[1])))
        return
    base = args.work or Path(tempfile.mkdtemp(prefix="readout-bench-"))
    results = []
    try:
        for n in [int(r) for r in args.rows]:
            work = base / f"rows-{n}"
            shutil.rmtree(work, ignore_errors=True)
            began = time.perf_counter()
            made = write_day(work, n)
            written_s = time.perf_counter() - began
            log_gib = sum(f.stat().st_size for f in (work / "serving_log").rglob("*.parquet")) / 2**30
            print(f"SYNTHETIC {n:,} served rows written in {written_s:.0f} s ({log_gib:.2f} GiB)", flush=True)
            ways = ["files"] + (["frames in memory"] if n <= args.in_memory_max else [])
            for way in ways:
                load = _load()
                done = subprocess.run(
                    [sys.executable, __file__, "--child", str(work), way],
                    capture_output=True, text=True, env={**os.environ, "CTR_DATA_DIR": str(work)},
                )  # fmt: skip
                if done.returncode != 0:
                    print(done.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"the readout on {n:,} rows ({way}) failed")
                got = json.loads(done.stdout.strip().splitlines()[-1])
                results.append(
                    {
                        "data": f"SYNTHETIC {n:,} served rows",
                        "readout": "DuckDB over the files" if way == "files" else "frames read whole",
                        "requests": made["requests"],
                        "log_gib": round(log_gib, 2),
                        "events": made["events"],
                        "rows_per_s": round(n / got["seconds"]),
                        **got,
                        "load_avg": load,
                    }
                )
                print_table(TITLE, results[-1:])
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if args.work is None:
            shutil.rmtree(base, ignore_errors=True)
    print_table(TITLE, results)
    write_results(
        "readout",
        TITLE + " (SYNTHETIC)",
        results,
        [
            "SYNTHETIC serving log, events and training set generated by DuckDB (the script's docstring).",
            "DuckDB over the files: `models.monitoring.readout.file_readout`, under CTR_DUCKDB_MEMORY_LIMIT "
            "(4GB default), as the ctr_monitoring DAG runs it. Frames read whole: `read_serving_log` + "
            "`window_readout`, the same metrics on in-memory frames.",
            "Each readout logs its run, plots and drift table to MLflow (SQLite), included in the seconds.",
            "The box was shared with other jobs while this ran: see load_avg (1, 5, 15 min).",
        ],
    )


if __name__ == "__main__":
    main()
