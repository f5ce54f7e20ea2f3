"""What merging concurrent /rank requests into one model call would save (adaptive batching).

Each /rank request already scores its 100 candidates in one call. Adaptive batching would merge
the calls of k concurrent requests into one of k x 100 rows; what it can save per request is the
difference between one 100-row call and 1/k of a k x 100-row call, and it can only do so when k
requests are waiting at once. This script measures that difference for both trained models, on
the rows of the pipeline's training set (the FeatureService's features, as served).

Data: a finished pipeline run under --data-dir (`make demo` or `ctr run` makes var/).
Usage: python benchmarks/request_batching.py [--data-dir var] [--repeats 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import percentiles, print_table, write_results  # noqa: E402
from models.paths import DataPaths  # noqa: E402
from models.scoring import KINDS, ScoringModel, load_saved, scoring_times_s  # noqa: E402

CANDIDATES = 100
MERGED = (1, 2, 4, 8, 16)


def measure(model: ScoringModel, rows: pd.DataFrame, repeats: int) -> list[dict]:
    out: list[dict] = []
    for k in MERGED:
        frame = rows.sample(CANDIDATES * k, random_state=k, replace=len(rows) < CANDIDATES * k)
        stats = percentiles(scoring_times_s(model, frame, repeats))
        per_request = stats["p50_ms"] / k
        single = out[0]["per_request_ms"] if out else per_request
        out.append(
            {
                "model": model.kind,
                "requests_merged": k,
                "rows": len(frame),
                "call_p50_ms": stats["p50_ms"],
                "call_p99_ms": stats["p99_ms"],
                "per_request_ms": per_request,
                "saved_per_request_ms": single - per_request,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=Path("var"), help="a finished pipeline run")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per batch size")
    args = parser.parse_args()

    paths = DataPaths.under(args.data_dir)
    rows = pd.read_parquet(paths.training_set)
    results = []
    for kind in KINDS:
        folder = paths.trained_model_dir(kind)
        if not folder.exists():
            raise SystemExit(f"no trained {kind} model under {folder}: run the pipeline first (ctr run)")
        print(f"timing {kind} ...", flush=True)
        results += measure(load_saved(folder), rows, args.repeats)
    print_table(f"Model scoring of k merged /rank requests ({CANDIDATES} candidates each)", results)
    notes = [
        f"Rows: {CANDIDATES} x k rows drawn from the pipeline's training set (the FeatureService's "
        "features); the trained models of the last pipeline run; one process, no HTTP.",
        f"{args.repeats} timed calls per size after one warm-up call. XGBoost through "
        "`predict_ctr` on the feature matrix, Wide&Deep through its traced request scorer.",
        "saved_per_request_ms: one 100-row call minus 1/k of the merged call, the most that "
        "merging k waiting requests can save each of them before any cost of the merging itself.",
    ]
    write_results("request_batching", "Adaptive batching: what merging /rank requests saves", results, notes)


if __name__ == "__main__":
    main()
