"""What one Wide&Deep training step costs by batch size, at a small and at a Taobao-size catalogue.

Keras' Adam and the embeddings' L2 penalty update every row of the embedding tables at each step,
so much of a step's cost does not depend on its rows and grows with the tables. This measures it:
the project's model (models/kinds/wide_deep.py, 42 numeric features, user, item and category ids
and their crosses) with the id tables sized for --small-ids and for --large-ids distinct ids (the
latter at the hashing cap, as at 1 M shoppers and 4 M items), fitted on random rows for --steps
timed steps at each batch size, after a few untimed ones (compilation). It also shows the batch the
pipeline picks for a training set of --rows rows when none is set (`batch_size_for`).

Runs without Airflow, Feast or MLflow. Usage:
    python benchmarks/wide_deep_steps.py [--batches 1024 2048 4096 8192] [--steps 30] [--rows 6744770]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_results  # noqa: E402
from models.kinds.wide_deep import (  # noqa: E402
    DEFAULT_CROSSES,
    DEFAULT_PARAMS,
    InputStats,
    WideDeepSpec,
    _buckets_for,
    batch_size_for,
    build_wide_deep,
)

TITLE = "Wide&Deep: the cost of a training step by batch size and catalogue size (CPU)"
NUMERIC = [f"count_{i}" for i in range(42)]
IDS = ("user_id", "item_id", "category_id")


def step_cost(spec: WideDeepSpec, ids: int, batch: int, steps: int, seed: int = 0) -> dict:
    """ms per step and rows per second of `steps` steps of `batch` rows, tables sized for `ids`."""
    buckets = {"user_id": _buckets_for(ids), "item_id": _buckets_for(ids), "category_id": _buckets_for(9_439)}
    stats = InputStats(buckets, np.zeros(len(NUMERIC)), np.ones(len(NUMERIC)))
    model = build_wide_deep(spec, stats, {**DEFAULT_PARAMS, "batch_size": batch}, seed)
    rng = np.random.default_rng(seed)
    rows = batch * steps
    x = {name: rng.integers(0, 10**7, (rows, 1)).astype(np.int32) for name in IDS}
    x |= {name: rng.poisson(3, (rows, 1)).astype(np.float32) for name in NUMERIC}
    y = (rng.random(rows) < 0.05).astype(np.float32)
    model.fit(x, y, batch_size=batch, epochs=1, steps_per_epoch=3, verbose=0)  # compile, warm up
    started = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    seconds = time.perf_counter() - started
    return {
        "ms_per_step": round(1000 * seconds / steps, 1),
        "rows_per_s": round(rows / seconds),
        "parameters": model.count_params(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per batch size")
    parser.add_argument("--small-ids", type=int, default=1_000, help="distinct ids, small catalogue")
    parser.add_argument("--large-ids", type=int, default=4_000_000, help="distinct ids, large catalogue")
    parser.add_argument("--rows", type=int, default=6_744_770, help="training rows, for the epoch column")
    args = parser.parse_args()
    spec = WideDeepSpec.for_columns(NUMERIC, IDS, DEFAULT_CROSSES)
    rows = []
    for ids in (args.small_ids, args.large_ids):
        for batch in args.batches:
            cost = step_cost(spec, ids, batch, args.steps)
            rows.append(
                {
                    "distinct_ids": ids,
                    "batch": batch,
                    **cost,
                    "epoch_s": round(args.rows / cost["rows_per_s"]),
                }
            )
            print(rows[-1], flush=True)
    print_table(TITLE, rows)
    base = {r["distinct_ids"]: r["rows_per_s"] for r in rows if r["batch"] == args.batches[0]}
    ratios = ", ".join(
        f"{r['batch']} rows {r['rows_per_s'] / base[r['distinct_ids']]:.1f}x"
        for r in rows
        if r["distinct_ids"] == args.large_ids
    )
    write_results(
        "wide_deep_steps",
        TITLE,
        rows,
        [
            f"Random rows (SYNTHETIC), the project's Wide&Deep model, {args.steps} timed steps per row of "
            "the table after 3 untimed ones; the id tables are sized as the pipeline sizes them for "
            f"{args.small_ids:,} and for {args.large_ids:,} distinct user and item ids (hashing cap "
            "included), 9,439 categories. epoch_s: an epoch of "
            f"{args.rows:,} training rows at that speed (the 100 M-event training set's size).",
            f"Rows per second against {args.batches[0]}-row steps, large catalogue, side by side in this "
            f"run: {ratios}.",
            f"With no batch size set, the pipeline picks {batch_size_for(args.rows):,} rows for "
            f"{args.rows:,} training rows (`batch_size_for`: an epoch within 1,000 steps, 1,024 to 8,192 "
            "rows per step).",
        ],
    )


if __name__ == "__main__":
    main()
