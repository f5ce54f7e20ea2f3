"""Evaluation and the promotion gate on a full-size test window: `ctr run --stage evaluate` and
`--stage register`, each in a process of its own, on a data dir whose training set `benchmarks/
scale.py --keep` built (SYNTHETIC), with their wall time and peak RSS (os.wait4's ru_maxrss).

Both stages score every test row and hold only labels, users and scores whole; the baselines fit
on at most CTR_BASELINE_ROWS training rows and the plots, importances and the registered
artifact's check use at most CTR_DIAGNOSTIC_ROWS test rows. What the figures measure is the cost
of the stages, not model quality: so that the run takes minutes, not the hour a full training
takes at 10 M events, both kinds are first trained (in a child process) on a seeded sample of the
training days (--train-rows) and saved where the training stages would put them.

Usage: python benchmarks/evaluation_scale.py --data WORK/data [--train-rows 200000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import print_table, write_results  # noqa: E402
from benchmarks.scale import CTR, run_step  # noqa: E402

TITLE = "Evaluation and the promotion gate on a full-size test window (SYNTHETIC)"
STAGES = ("evaluate", "register")


def train_on_a_sample(train_rows: int) -> None:
    """Both kinds on `train_rows` sampled training rows (and as many validation rows at most),
    saved under the models dir as the training stages save them. Runs in a child process."""
    from models.evaluation.streamed import sample_rows
    from models.features.training_set import Split, streamed_split
    from models.kinds.rows import FrameRows
    from models.pipeline import KINDS, _service_binding
    from models.settings import get_settings
    from models.training.fit import train_kind

    settings = get_settings()
    features, _ = _service_binding(settings)
    split = streamed_split(settings.paths.training_set)
    train, _ = sample_rows(split.train, train_rows, settings.seed)
    valid, _ = sample_rows(split.valid, train_rows, settings.seed)
    sample = Split(train=FrameRows(train), valid=FrameRows(valid), test=split.test)
    for kind in KINDS:
        model, summary = train_kind(kind, sample, features, "cpu", settings.seed)
        folder = settings.paths.trained_model_dir(kind)
        shutil.rmtree(folder, ignore_errors=True)
        model.save(folder)
        print(kind, summary, flush=True)


def test_rows(data: Path) -> int:
    from models.features.training_set import streamed_split

    return len(streamed_split(data / "datasets" / "training_set.parquet").test)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="a data dir with a built training set")
    parser.add_argument("--train-rows", type=int, default=200_000, help="training rows of the quick fits")
    parser.add_argument("--prepare-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    data = args.data.resolve()
    env = {**os.environ, "CTR_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    if args.prepare_only:
        os.environ.update(env)
        train_on_a_sample(args.train_rows)
        return

    logs = data.parent / "logs"
    prepare = [sys.executable, __file__, "--data", str(data), "--train-rows", str(args.train_rows)]
    seconds, peak, code = run_step([*prepare, "--prepare-only"], env, logs / "evaluation_scale_prepare.log")
    if code != 0:
        raise SystemExit(f"training the quick models failed; see {logs / 'evaluation_scale_prepare.log'}")
    print(f"trained both kinds on {args.train_rows:,} sampled rows in {seconds:.0f} s (peak {peak:.2f} GiB)")
    shutil.rmtree(data / "mlflow", ignore_errors=True)  # a fresh registry: the first version is promoted
    rows, n_test = [], test_rows(data)
    for stage in STAGES:
        log = logs / f"{stage}.log"
        seconds, peak, code = run_step([CTR, "run", "--stage", stage], env, log)
        rows.append(
            {
                "stage": stage,
                "test_rows": n_test,
                "seconds": round(seconds, 1),
                "test_rows_per_s": round(n_test / seconds),
                "peak_rss_gib": round(peak, 2),
                "result": "ok" if code == 0 else f"failed ({code}): {log}",
            }
        )
        print_table("SYNTHETIC", rows[-1:])
        if code != 0:
            print(log.read_text()[-3000:], file=sys.stderr)
            break
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    notes = [
        f"SYNTHETIC data ({data}); {n_test:,} test rows. Both kinds trained on {args.train_rows:,} sampled "
        "training rows first, so that the run takes minutes: the figures are the stages' cost, not a "
        "model's quality.",
        "Each stage in its own process (`ctr run --stage NAME`); peak RSS is the process's own. "
        f"Load averages (1/5/15 min) at the end: {load}.",
        "Every test row is scored block by block (one Parquet row group at a time); labels, users and "
        "scores are held whole. Baselines: at most CTR_BASELINE_ROWS training rows; plots, importances, "
        "the artifact check and the latency probe: at most CTR_DIAGNOSTIC_ROWS test rows.",
    ]
    print_table(TITLE, rows)
    write_results("evaluation_scale", TITLE, rows, notes)


if __name__ == "__main__":
    main()
