"""Training speed of the project's XGBoost and Wide&Deep code, CPU against GPU, on a synthetic CTR
set fitted to the real Taobao training set, large enough for a GPU to matter.

The synthetic rows resample the real feature vectors (so the joint distribution of the counts is
the real one), draw user and item ids with a long tail, and draw labels from a logistic model
fitted on the real rows plus per-user and per-item effects, which the id embeddings can learn.

Runs without Airflow, Feast or MLflow, so it also runs on a bare GPU machine:

    python benchmarks/train_models.py --rows 10000000 --devices cpu,cuda
    KERAS_BACKEND=jax python benchmarks/train_models.py --models wide_deep

Prints a table and writes JSON (--out). Times include building the model inputs from a
DataFrame ("data loading") as well as training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from feature_repo.contract import (  # noqa: E402
    CATEGORY_ID,
    EVENT_TIMESTAMP,
    ID_COLUMNS,
    ITEM_ID,
    LABEL,
    REQUEST_TS,
    USER_ID,
)

NON_FEATURES = {USER_ID, ITEM_ID, CATEGORY_ID, EVENT_TIMESTAMP, REQUEST_TS, LABEL}


def fit_generator(real: pd.DataFrame, seed: int):
    """Return make(rows, seed) -> DataFrame of synthetic rows shaped like `real`."""
    from models.evaluation.metrics import LogisticBaseline

    # Scalar numeric features; list-valued ones (top categories) feed on-demand features only.
    features = [c for c in real.select_dtypes("number").columns if c not in NON_FEATURES]
    categories = real[CATEGORY_ID].to_numpy() if CATEGORY_ID in real else np.zeros(len(real), np.int64)
    teacher = LogisticBaseline(features, seed=seed).fit(real, real[LABEL].to_numpy())
    matrix = real[features].to_numpy(dtype=np.float32, na_value=np.nan)
    base_logit = np.log(teacher.predict(real) / (1 - teacher.predict(real))).astype(np.float32)

    def make(rows: int, users: int, items: int, sample_seed: int) -> pd.DataFrame:
        rng = np.random.default_rng(sample_seed)
        effects = np.random.default_rng(seed)  # the same user/item effects in every split
        user_effect = effects.normal(0, 0.6, users).astype(np.float32)
        item_effect = effects.normal(0, 0.4, items).astype(np.float32)
        pick = rng.integers(0, len(matrix), rows)
        # Long tails: a few heavy users and best-selling items.
        user = (users * rng.random(rows) ** 2).astype(np.int64)
        item = (items * rng.random(rows) ** 3).astype(np.int64)
        logit = base_logit[pick] + user_effect[user] + item_effect[item]
        label = (rng.random(rows, dtype=np.float32) < 1 / (1 + np.exp(-logit))).astype(np.int8)
        frame = pd.DataFrame(matrix[pick], columns=features)
        frame[USER_ID] = user * 7 + 1  # sparse, Taobao-like id values
        frame[ITEM_ID] = item * 5 + 3
        frame[CATEGORY_ID] = categories[pick]
        frame[LABEL] = label
        return frame

    return features, make


def bench_xgboost(train, valid, test, features, device: str, seed: int) -> dict:
    from sklearn.metrics import roc_auc_score

    from models.features.training_set import feature_matrix
    from models.kinds.xgb import predict_ctr, train_xgb

    started = time.perf_counter()
    x, xv = feature_matrix(train, features), feature_matrix(valid, features)
    loaded = time.perf_counter()
    # The reference set-up: hist, depth 8, 200 rounds, no early stopping.
    trained = train_xgb(
        x,
        train[LABEL].to_numpy(),
        xv,
        valid[LABEL].to_numpy(),
        features,
        device=device,
        seed=seed,
        n_estimators=200,
        max_depth=8,
        learning_rate=0.1,
        min_child_weight=1,
        early_stopping_rounds=None,
        eval_metric="logloss",
    )
    done = time.perf_counter()
    auc = roc_auc_score(test[LABEL], predict_ctr(trained.model, feature_matrix(test, features)))
    return {
        "model": "xgboost",
        "device": device,
        "rows": len(train),
        "load_seconds": loaded - started,
        "train_seconds": done - loaded,
        "total_seconds": done - started,
        "test_auc": float(auc),
    }


def bench_wide_deep(train, valid, test, features, device: str, seed: int, epochs: int) -> dict:
    import keras
    from sklearn.metrics import roc_auc_score

    from models.kinds.wide_deep import DEFAULT_CROSSES, WideDeepSpec, predict_wide_deep, train_wide_deep

    spec = WideDeepSpec.for_columns(features, ID_COLUMNS, DEFAULT_CROSSES)  # as in the pipeline
    gpu = device == "cuda"
    started = time.perf_counter()
    trained = train_wide_deep(
        train,
        train[LABEL].to_numpy(),
        valid,
        valid[LABEL].to_numpy(),
        spec,
        seed=seed,
        epochs=epochs,
        patience=epochs,
        batch_size=8192 if gpu else 2048,
        mixed_precision=gpu,
        verbose=2,
    )
    done = time.perf_counter()
    auc = roc_auc_score(test[LABEL], predict_wide_deep(trained.model, test, spec))
    return {
        "model": "wide_deep",
        "device": device,
        "backend": keras.backend.backend(),
        "rows": len(train),
        "epochs": len(trained.history["loss"]),
        "epoch_seconds": trained.history["epoch_seconds"],
        "train_seconds": trained.train_seconds,
        "total_seconds": done - started,
        "examples_per_second": trained.examples_per_second,
        "steady_examples_per_second": trained.steady_examples_per_second,
        "test_auc": float(auc),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source",
        default=str(ROOT / "var/datasets/training_set.parquet"),
        help="real training set to fit the generator on (written by the pipeline)",
    )
    parser.add_argument("--rows", type=int, default=10_000_000, help="training rows (default 10 M)")
    parser.add_argument(
        "--devices", default="auto", help="comma list of cpu,cuda; auto = cuda if present, and cpu"
    )
    parser.add_argument("--models", default="xgboost,wide_deep")
    parser.add_argument("--epochs", type=int, default=2, help="Wide&Deep epochs (the first compiles)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/train_models.json"))
    args = parser.parse_args(argv)

    from models.training.device import cuda_available

    devices = ["cuda", "cpu"] if args.devices == "auto" and cuda_available() else args.devices.split(",")
    if devices == ["auto"]:
        devices = ["cpu"]
    real = pd.read_parquet(args.source)
    features, make = fit_generator(real, args.seed)
    users, items = max(args.rows // 50, 1000), max(args.rows // 10, 1000)
    print(f"generating {args.rows:,} training rows fitted to {len(real):,} real rows ...", flush=True)
    started = time.perf_counter()
    train = make(args.rows, users, items, args.seed + 1)
    valid = make(max(args.rows // 10, 10_000), users, items, args.seed + 2)
    test = make(max(args.rows // 10, 10_000), users, items, args.seed + 3)
    print(f"  {time.perf_counter() - started:.1f} s; positive rate {train[LABEL].mean():.4f}", flush=True)

    results = []
    for model in args.models.split(","):
        for device in devices:
            print(f"== {model} on {device}", flush=True)
            if model == "xgboost":
                results.append(bench_xgboost(train, valid, test, features, device, args.seed))
            elif model == "wide_deep":
                results.append(bench_wide_deep(train, valid, test, features, device, args.seed, args.epochs))
            else:
                parser.error(f"unknown model {model}")
            print(json.dumps(results[-1], default=float), flush=True)

    print()
    print(
        f"{'model':<10} {'device':<6} {'rows':>11} {'train s':>9} {'total s':>9} "
        f"{'examples/s':>12} {'test AUC':>9}"
    )
    for r in results:
        rate = r.get("steady_examples_per_second", r["rows"] / r["train_seconds"])
        print(
            f"{r['model']:<10} {r['device']:<6} {r['rows']:>11,} {r['train_seconds']:>9.2f} "
            f"{r['total_seconds']:>9.2f} {rate:>12,.0f} {r['test_auc']:>9.4f}"
        )
    machine = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "gpu": _gpu_name(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2, default=float)
    )
    print(f"\nwrote {out}")
    return 0


def _gpu_name() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


if __name__ == "__main__":
    sys.exit(main())
