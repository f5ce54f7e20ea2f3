"""`ctr`: the project's command line. Each stage is also an Airflow task of dags/ctr_pipeline.py."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys

from models.settings import airflow_environment, get_settings


def _run(args: argparse.Namespace) -> int:
    from models import pipeline

    settings = get_settings()
    stages = {stage.__name__: stage for stage in [*pipeline.STAGES, *pipeline.EXTRA_STAGES]}
    unknown = sorted(set(args.stage or []) - set(stages))
    if unknown:
        print(f"unknown stage(s) {unknown}; choose from {list(stages)}", file=sys.stderr)
        return 2
    chosen = [stages[name] for name in args.stage] if args.stage else pipeline.STAGES
    for stage in chosen:
        print(f"== {stage.__name__}", flush=True)
        print(json.dumps(stage(settings), indent=2, default=str), flush=True)
    return 0


def _exec(program: str, argv: list[str], env: dict[str, str]) -> int:
    path = shutil.which(program, path=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""))
    if path is None:
        print(f"{program} not found; install the environment with `make venv`", file=sys.stderr)
        return 127
    os.execve(path, [program, *argv], env)
    return 0  # not reached


def _airflow(args: argparse.Namespace) -> int:
    settings = get_settings()
    env = airflow_environment(settings)
    settings.airflow_home.mkdir(parents=True, exist_ok=True)
    return _exec("airflow", args.args, env)


def _feast(args: argparse.Namespace) -> int:
    """The Feast CLI on feature_repo/, with the stores the settings choose."""
    settings = get_settings()
    env = {**os.environ, **settings.feast_variables()}
    return _exec("feast", ["-c", str(settings.feast_repo), "-f", str(settings.feast_yaml), *args.args], env)


def _serve(args: argparse.Namespace) -> int:
    return _exec(
        "bentoml",
        ["serve", "services.ranker:Ranker", "--host", args.host, "--port", str(args.port), *args.args],
        dict(os.environ),
    )


def _ingest(args: argparse.Namespace) -> int:
    return _exec(
        "bentoml",
        ["serve", "services.ingest:Ingest", "--host", args.host, "--port", str(args.port), *args.args],
        dict(os.environ),
    )


def _replay(args: argparse.Namespace) -> int:
    from models.replay import replay

    url = args.url or get_settings().ingest_url
    totals = replay(args.file, url, args.speedup, max_batch=args.batch, limit=args.limit)
    print(
        json.dumps(
            {
                "sent": totals.sent,
                "accepted": totals.accepted,
                "duplicates": totals.duplicates,
                "late": totals.late,
                "requests": totals.requests,
                "seconds": round(totals.seconds, 2),
                "events_per_s": round(totals.sent / totals.seconds, 1) if totals.seconds else None,
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run pipeline stages in this process, without Airflow")
    run.add_argument(
        "--stage",
        action="append",
        metavar="NAME",
        help="run only this stage (repeatable): ingest, validate, apply_features, build_features, "
        "materialize, build_candidates, build_training_set, train_xgboost, train_wide_deep, evaluate, "
        "register; or "
        "warm_start (continue each champion on the newest day, then gate it like a full retrain)",
    )
    run.set_defaults(func=_run)

    airflow = sub.add_parser(
        "airflow",
        help="run the airflow CLI with this project's environment, e.g. `ctr airflow dags test ctr_pipeline`",
    )
    airflow.add_argument("args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=_airflow)

    feast = sub.add_parser(
        "feast",
        help="the feast CLI on feature_repo/ with the configured stores, e.g. `ctr feast feature-views list`",
    )
    feast.add_argument("args", nargs=argparse.REMAINDER)
    feast.set_defaults(func=_feast)

    serve = sub.add_parser("serve", help="start the ranking service (bentoml serve) on loopback")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=3000)
    serve.add_argument("args", nargs=argparse.REMAINDER, help="passed on to bentoml serve")
    serve.set_defaults(func=_serve)

    ingest = sub.add_parser("ingest", help="start the ingest service (POST /events) on loopback")
    ingest.add_argument("--host", default="127.0.0.1")
    ingest.add_argument("--port", type=int, default=3001)
    ingest.add_argument("args", nargs=argparse.REMAINDER, help="passed on to bentoml serve")
    ingest.set_defaults(func=_ingest)

    replay = sub.add_parser("replay", help="stream a behaviour CSV into the ingest service, in time order")
    replay.add_argument("file", help="a headerless Taobao UserBehavior CSV, e.g. userbehavior_stream_*.csv")
    replay.add_argument(
        "--speedup", type=float, default=60.0, help="replay clock / recorded clock; 0 = no waiting"
    )
    replay.add_argument("--url", help="the ingest service (default CTR_INGEST_URL, http://127.0.0.1:3001)")
    replay.add_argument("--batch", type=int, default=500, help="most events per request")
    replay.add_argument("--limit", type=int, help="stop after this many events")
    replay.set_defaults(func=_replay)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
