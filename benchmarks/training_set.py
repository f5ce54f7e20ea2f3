"""The point-in-time training set and both trainings at size, old in-memory way against the
streamed one, on SYNTHETIC events (`ctr synth` output): wall time, examples/s and peak RSS.

- training set, old: every page view of the window labelled in one frame and joined through one
  Feast get_historical_features call, written as one file;
- training set, chunked Feast joins: `pipeline.build_training_set` with CTR_TRAINING_JOIN=feast (a
  day at a time, CTR_TRAINING_CHUNK_ROWS views per get_historical_features call, a Parquet dataset);
- training set, ASOF joins: the same build with CTR_TRAINING_JOIN=duckdb, the default
  (models/features/point_in_time.py), optionally with negative downsampling;
- XGBoost / Wide&Deep, old: the training set read whole into pandas, model inputs built from the
  frames, fitted in memory (`train_xgb`, `train_wide_deep`);
- XGBoost / Wide&Deep, new: streamed from the dataset's files (`train_xgb_rows` through
  xgboost.DataIter into QuantileDMatrix, `train_wide_deep_rows` through a keras.utils.PyDataset).

Each part runs in a process of its own (its peak RSS is its own, measured before scoring the test
day); a part whose resident memory passes --rss-cap-gib is stopped and reported so. The load
average is recorded beside each part: on a shared machine wall times vary with it.

    python benchmarks/training_set.py --prepare /work/synth/1m --data /scratch/1m
    python benchmarks/training_set.py --data /scratch/1m --label "1 M" [--data /scratch/10m --label "10 M"]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import RESULTS_MD, machine, print_table, write_results  # noqa: E402

TITLE = "Training set and training at size (SYNTHETIC)"
PARTS = ("ts_old", "ts_feast", "ts_new", "ts_chunk", "xgb_old", "xgb_new", "wd_old", "wd_new")
NAMES = {
    "ts_old": ("training set", "old: one Feast join, one frame"),
    "ts_feast": ("training set", "chunked Feast joins, Parquet dataset (CTR_TRAINING_JOIN=feast)"),
    "ts_new": ("training set", "new: chunked ASOF joins from the FeatureService, Parquet dataset"),
    "ts_chunk": ("training set", "new: one chunk (CTR_TRAINING_CHUNK_ROWS views of day 3)"),
    "xgb_old": ("XGBoost", "old: frame in memory"),
    "xgb_new": ("XGBoost", "new: DataIter -> QuantileDMatrix"),
    "wd_old": ("Wide&Deep", "old: frame in memory"),
    "wd_new": ("Wide&Deep", "new: PyDataset from Parquet"),
}


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def prepare(synth: Path) -> dict:
    """The lake and the offline feature sources of a `ctr synth` folder, into CTR_DATA_DIR."""
    from benchmarks.batch_features import synth_lake
    from models import pipeline
    from models.settings import get_settings

    settings = get_settings()
    started = time.perf_counter()
    events = synth_lake(synth, settings.lake_dir)
    pipeline.apply_features(settings)
    built = pipeline.build_features(settings)
    return {"events": events, "feature_rows": built.rows, "seconds": time.perf_counter() - started}


def replicate(source: Path, copies: int) -> dict:
    """A training set `copies` times the size of `source`'s (a prepared data dir), into
    CTR_DATA_DIR: each copy with disjoint user and item ids, categories shared (a shop `copies`
    times larger in the same proportions). For timing the trainings at a size whose Feast build
    would take hours here; the Feast repo is applied so the FeatureService binding is the same."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from feature_repo.contract import ITEM_ID, USER_ID
    from models import pipeline
    from models.features.training_set import SAMPLING_FILE
    from models.settings import get_settings

    settings = get_settings()
    pipeline.apply_features(settings)
    src = source / "datasets/training_set.parquet"
    files = sorted(src.glob("*.parquet"))
    top = {
        c: max(pc.max(pq.read_table(f, columns=[c])[c]).as_py() for f in files) + 1
        for c in (USER_ID, ITEM_ID)
    }
    out = settings.paths.training_set
    out.mkdir(parents=True, exist_ok=True)
    rows = 0
    for path in files:
        table = pq.read_table(path)
        stamp, _, split = path.stem.split("-")
        for k in range(copies):
            copy = table
            for column in (USER_ID, ITEM_ID):
                at = copy.schema.get_field_index(column)
                copy = copy.set_column(at, column, pc.add(copy[column], k * top[column]))
            pq.write_table(copy, out / f"{stamp}-{k:04d}-{split}.parquet", row_group_size=131_072)
            rows += copy.num_rows
    (out / SAMPLING_FILE).write_text((src / SAMPLING_FILE).read_text())
    return {"rows": rows, "copies": copies}


# --- Parts, each in a child process ----------------------------------------------------------------


def _old_training_set(settings) -> dict:
    from feature_repo.contract import LABEL, LABEL_WINDOW, MODEL_FEATURE_SERVICE
    from models.data import lake
    from models.data.labels import label_page_views
    from models.features import store as feast_store
    from models.features.training_set import join_features

    events = lake.read_events(settings, lake.ACCEPTED, settings.window_start, settings.window_end)
    labelled = label_page_views(events, LABEL_WINDOW, settings.window_end)
    del events
    store = feast_store.open_store(settings)
    frame = join_features(store, labelled, store.get_feature_service(MODEL_FEATURE_SERVICE))
    feast_store.write_offline(frame, settings.datasets_dir / "training_set_one_join.parquet")
    return {"rows": len(frame), "positives": int(frame[LABEL].sum())}


def _one_chunk(settings) -> dict:
    """What one chunk of the new build costs: its labelling and its Feast join (the build is a
    sequence of these, so its peak is one chunk's)."""
    import pandas as pd

    from feature_repo.contract import LABEL, MODEL_FEATURE_SERVICE
    from models import pipeline
    from models.features import store as feast_store
    from models.features.training_set import bounded_duckdb, join_features

    day = pd.Timestamp(settings.window_start).tz_convert(settings.timezone).normalize() + pd.Timedelta(days=2)
    views = pipeline._labelled_views(settings, day, day + pd.Timedelta(days=1))
    rows = views.iloc[: settings.training_chunk_rows]
    store = feast_store.open_store(settings)
    with bounded_duckdb(settings.duckdb_memory_limit, settings.duckdb_threads, settings.duckdb_temp_dir):
        frame = join_features(store, rows, store.get_feature_service(MODEL_FEATURE_SERVICE))
    return {"rows": len(frame), "positives": int(frame[LABEL].sum()), "views_of_day": len(views)}


def _frames(settings):
    import pandas as pd

    from models.features.training_set import split_by_time

    return split_by_time(
        pd.read_parquet(settings.paths.training_set), settings.valid_start, settings.test_start
    )


def _streamed(settings):
    from models.features.training_set import streamed_split

    return streamed_split(settings.paths.training_set)


def _features(settings) -> list[str]:
    from models.pipeline import _service_binding

    return _service_binding(settings)[0]


def child(part: str, rounds: int, epochs: int) -> dict:
    from feature_repo.contract import ID_COLUMNS, LABEL
    from models.settings import get_settings

    settings = get_settings()
    started = time.perf_counter()
    if part == "ts_old":
        return {
            **_old_training_set(settings),
            "seconds": time.perf_counter() - started,
            "peak_rss_gib": _peak_gib(),
        }
    if part in ("ts_new", "ts_feast"):
        from models import pipeline

        built = pipeline.build_training_set(settings)
        return {
            "rows": built.rows,
            "positives": built.positives,
            "seconds": time.perf_counter() - started,
            "peak_rss_gib": _peak_gib(),
        }
    if part == "ts_chunk":
        return {**_one_chunk(settings), "seconds": time.perf_counter() - started, "peak_rss_gib": _peak_gib()}
    features = _features(settings)
    xgb_params = {"n_estimators": rounds, "early_stopping_rounds": None}
    if part in ("xgb_old", "wd_old"):
        split = _frames(settings)
        train, valid = split.train, split.valid
        test_of = lambda: split.test  # noqa: E731
    else:
        split = _streamed(settings)
        train, valid = split.train, split.valid
        test_of = lambda: split.test.to_frame()  # noqa: E731
    n = len(train)
    if part == "xgb_old":
        from models.kinds.base import feature_matrix
        from models.kinds.xgb import predict_ctr, train_xgb

        x, y = feature_matrix(train, features), train[LABEL].to_numpy()
        trained = train_xgb(
            x, y, feature_matrix(valid, features), valid[LABEL].to_numpy(), features, **xgb_params
        )
        score, passes = (lambda t: predict_ctr(trained.model, feature_matrix(t, features))), rounds
    elif part == "xgb_new":
        from models.kinds.base import feature_matrix
        from models.kinds.xgb import predict_ctr, train_xgb_rows

        trained = train_xgb_rows(train, valid, features, **xgb_params)
        score, passes = (lambda t: predict_ctr(trained.model, feature_matrix(t, features))), rounds
    else:
        from models.kinds.wide_deep import (
            DEFAULT_CROSSES,
            WideDeepSpec,
            predict_wide_deep,
            train_wide_deep,
            train_wide_deep_rows,
        )

        spec = WideDeepSpec.for_columns(features, ID_COLUMNS, DEFAULT_CROSSES)
        keras_params = {"epochs": epochs, "patience": epochs, "batch_size": 2048}
        if part == "wd_old":
            fitted = train_wide_deep(
                train, train[LABEL].to_numpy(), valid, valid[LABEL].to_numpy(), spec, **keras_params
            )
        else:
            fitted = train_wide_deep_rows(train, valid, spec, **keras_params)
        score, passes = (lambda t: predict_wide_deep(fitted.model, t, spec)), epochs
    seconds, peak = time.perf_counter() - started, _peak_gib()
    from sklearn.metrics import roc_auc_score

    test = test_of()
    return {
        "rows": n,
        "passes": passes,
        "seconds": seconds,
        "examples_per_s": n * passes / seconds,
        "peak_rss_gib": peak,
        "test_auc": float(roc_auc_score(test[LABEL], score(test))),
    }


def _rss_gib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_part(part: str, data: Path, env: dict[str, str], cap_gib: float, rounds: int, epochs: int) -> dict:
    """One part in a child process, stopped if its resident memory passes `cap_gib`."""
    command = [sys.executable, __file__, "--child", part, "--rounds", str(rounds), "--epochs", str(epochs)]
    load_before = os.getloadavg()[0]
    log = data / f"bench-{part}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=out, text=True, cwd=ROOT, env={**os.environ, **env}
        )
        started, stopped = time.perf_counter(), None
        while proc.poll() is None:
            if _rss_gib(proc.pid) > cap_gib:
                proc.kill()
                stopped = time.perf_counter() - started
                break
            time.sleep(0.2)
        stdout = proc.communicate()[0]
    load = {"load_1m_before": load_before, "load_1m_after": os.getloadavg()[0]}
    if stopped is not None:
        return {"note": f"stopped: RSS above {cap_gib:g} GiB after {stopped:.0f} s", **load}
    if proc.returncode != 0:
        return {"note": f"failed (exit {proc.returncode}, see {log.name})", **load}
    return {**json.loads(stdout.strip().splitlines()[-1]), **load}


def _replace_section(before: str) -> None:
    """Put the section write_results appended where this benchmark's older one was."""
    text = RESULTS_MD.read_text()
    added, heading = text[len(before) :], f"\n## {TITLE}\n"
    start = before.find(heading)
    if start < 0:
        return
    nxt = before.find("\n## ", start + len(heading))
    RESULTS_MD.write_text(
        before[:start] + added.rstrip("\n") + "\n" + before[nxt if nxt >= 0 else len(before) :]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prepare", type=Path, help="build lake + features of this `ctr synth` folder")
    parser.add_argument("--replicate", type=Path, help="a prepared data dir whose training set to replicate")
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--data", type=Path, action="append", default=[], help="a prepared CTR_DATA_DIR")
    parser.add_argument("--label", action="append", default=[], help="events of each --data, e.g. '1 M'")
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--sample-rate", type=float, default=1.0, help="CTR_NEGATIVE_SAMPLE_RATE of ts_new")
    parser.add_argument("--rounds", type=int, default=100, help="XGBoost rounds (no early stopping)")
    parser.add_argument("--epochs", type=int, default=1, help="Wide&Deep epochs")
    parser.add_argument("--rss-cap-gib", type=float, default=6.0)
    parser.add_argument("--child")
    parser.add_argument("--note", action="append", default=[], help="a further note for RESULTS.md")
    parser.add_argument("--results", action="store_true", help="write JSON and the RESULTS.md section")
    parser.add_argument(
        "--previous",
        type=Path,
        action="append",
        default=[],
        help="rows of earlier runs (their JSON) to include",
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.epochs)))
        return
    if args.prepare:
        print(json.dumps(prepare(args.prepare)))
        return
    if args.replicate:
        print(json.dumps(replicate(args.replicate, args.copies)))
        return
    rows = [row for path in args.previous for row in json.loads(path.read_text())["rows"]]
    for data, label in zip(args.data, args.label, strict=True):
        synthetic = (
            json.loads((data / "SYNTHETIC.json").read_text()) if (data / "SYNTHETIC.json").exists() else {}
        )
        env = {"CTR_DATA_DIR": str(data), "CTR_NEGATIVE_SAMPLE_RATE": str(args.sample_rate)}
        for part in [p for p in args.parts.split(",") if p]:
            join = {"CTR_TRAINING_JOIN": "feast" if part == "ts_feast" else "duckdb"}
            result = run_part(part, data, {**env, **join}, args.rss_cap_gib, args.rounds, args.epochs)
            stage, way = NAMES[part]
            row = {"events": label, "stage": stage, "way": way, **result}
            if part == "ts_new" and args.sample_rate < 1:
                row["way"] += f", negatives kept at {args.sample_rate:g}"
            row.setdefault("synthetic", synthetic.get("SYNTHETIC", True))
            print(row, flush=True)
            rows.append(row)
    out = ROOT / "benchmarks/training_set_runs.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    columns = [
        "events",
        "stage",
        "way",
        "rows",
        "passes",
        "seconds",
        "examples_per_s",
        "peak_rss_gib",
        "test_auc",
    ]
    columns += ["load_1m_before", "load_1m_after", "note"]
    table = [{c: r.get(c) for c in columns} for r in rows]
    print_table(TITLE, table)
    if args.results:
        before = RESULTS_MD.read_text()
        write_results("training_set", TITLE, table, [*NOTES, *args.note])
        _replace_section(before)


NOTES = [
    "SYNTHETIC events (`ctr synth --seed 0`), lake and offline features built by the pipeline's own stages.",
    "The machine was shared with other engineers' heavy jobs: the 1-minute load average (2 cores) "
    "is recorded before and after each part; wall times and examples/s vary with it.",
    "Peak RSS of each part's own process, taken before scoring the test day; 'stopped' means the process "
    "passed the RSS cap and was killed.",
    "XGBoost: the pipeline's params with a fixed number of rounds and no early stopping; examples/s = "
    "training rows x rounds / seconds, the DMatrix build (and, old, the read of the whole frame) included.",
    "Wide&Deep: the pipeline's model, batch 2048, a fixed number of epochs; examples/s = rows x epochs / "
    "seconds, adapting the preprocessing (and, old, the read of the whole frame) included.",
]


if __name__ == "__main__":
    main()
