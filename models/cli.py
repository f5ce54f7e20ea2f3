"""`ctr`: the project's command line. Each stage is also an Airflow task of the DAGs in dags/."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

from models.ops.backfill import REPROCESS
from models.ops.processes import environment_program, start_process_group, stop_process_groups
from models.settings import airflow_environment, get_settings

# Libraries that log every HTTP request at INFO: one line per request would bury the commands' own
# output (replay's progress line among them). Their warnings and errors still show.
QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "requests")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


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
        print(json.dumps(pipeline.as_json(stage(settings)), indent=2, default=str), flush=True)
    return 0


def _exec(program: str, argv: list[str], env: dict[str, str]) -> int:
    path = environment_program(program, env)
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


# `ctr airflow-ui`: each Airflow component in its own process, all on loopback. The scheduler's and
# triggerer's log servers (which bind every interface) are skipped: the API server reads the task
# logs from the local log folder, as every component runs on this machine.
UI_COMPONENTS = {
    "api-server": ["api-server", "--host", "127.0.0.1", "--port", "{port}"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}
UI_HEALTH = ("metadatabase", "scheduler", "dag_processor", "triggerer")
# Seconds before a component that may be restarted (a Celery worker) is started again.
RESTART_DELAY_S = 5


class _Stop(Exception):
    """SIGTERM: stop the components as on Ctrl-C."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _airflow_ui_environment(port: int) -> dict[str, str]:
    env = airflow_environment(get_settings())
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__API__PORT"] = str(port)
    # Task processes report to the API server's execution API; its default assumes port 8080.
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    return env


def _log_tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _healthy_since(url: str, started: datetime) -> bool:
    """Every component reports healthy, with a heartbeat from this start (not a previous one's)."""
    try:
        with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
            health = json.load(response)
    except (OSError, ValueError):
        return False
    for name in UI_HEALTH:
        status = health.get(name) or {}
        if status.get("status") != "healthy":
            return False
        beat = status.get(f"latest_{name}_heartbeat")
        if beat and datetime.fromisoformat(beat) < started:
            return False
    return True


def _login_lines(env: dict[str, str]) -> list[str]:
    if env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS", "").lower() == "true":
        return ["no login: AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS makes everyone an admin"]
    passwords_file = Path(
        env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE")
        or Path(env["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    )
    try:
        passwords = json.loads(passwords_file.read_text())
    except (OSError, ValueError):
        return ["log in as the auth manager configured for Airflow (no SimpleAuthManager passwords file)"]
    return [f"log in as {user!r} with password {password!r}" for user, password in passwords.items()] + [
        f"  (passwords kept in {passwords_file}; edit it to set your own)"
    ]


def _supervise(
    airflow: str,
    env: dict[str, str],
    commands: dict[str, tuple[list[str], dict[str, str]]],
    *,
    url: str,
    start_timeout: float,
    banner: Callable[[], list[str]],
    restart: frozenset[str] = frozenset(),
    also_ready: Callable[[], bool] = lambda: True,
) -> int:
    """`airflow db migrate`, then each component in a session (process group) of its own, watched
    until Ctrl-C: the banner once the API server is healthy (and `also_ready`), a component in
    `restart` started again when it dies (as compose's `restart: unless-stopped`), any other's death
    the end of all. Ctrl-C, SIGTERM or a closed terminal reach only this process, which stops them
    all, once each."""
    logs = Path(env["AIRFLOW_HOME"]) / "logs/components"
    logs.mkdir(parents=True, exist_ok=True)
    database = env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "").split("@")[-1] or env["AIRFLOW_HOME"]
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _raise_stop)
    processes: dict[str, subprocess.Popen] = {}
    try:
        print(f"airflow db migrate ({database})", flush=True)
        with (logs / "db-migrate.log").open("w") as out:
            migrate = subprocess.run([airflow, "db", "migrate"], env=env, stdout=out, stderr=out)
        if migrate.returncode != 0:
            print(_log_tail(logs / "db-migrate.log"), file=sys.stderr)
            return migrate.returncode
        started = datetime.now(UTC)
        for name, (argv, process_env) in commands.items():
            processes[name] = start_process_group(argv, env=process_env, log=logs / f"{name}.log")
        print(f"starting {', '.join(processes)}; their logs: {logs}/", flush=True)
        deadline = time.monotonic() + start_timeout
        ready = False
        while True:
            for name, process in list(processes.items()):
                if process.poll() is None:
                    continue
                if name not in restart:
                    print(f"{name} exited with {process.returncode}:", file=sys.stderr)
                    print(_log_tail(logs / f"{name}.log"), file=sys.stderr)
                    return 1
                print(f"{name} exited with {process.returncode}; starting it again", flush=True)
                time.sleep(RESTART_DELAY_S)
                argv, process_env = commands[name]
                with (logs / f"{name}.log").open("a") as out:
                    processes[name] = start_process_group(
                        argv, env=process_env, stdout=out, stderr=subprocess.STDOUT
                    )
            if not ready and _healthy_since(url, started) and also_ready():
                ready = True
                print("\n".join(["", *banner(), "Ctrl-C stops every component", ""]), flush=True)
            if not ready and time.monotonic() > deadline:
                print(f"not healthy within {start_timeout:.0f} s; see {logs}/", file=sys.stderr)
                return 1
            time.sleep(1)
    except (KeyboardInterrupt, _Stop):
        print("stopping Airflow", flush=True)
        return 0
    finally:
        for stop_signal in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(stop_signal, signal.SIG_IGN)  # a second Ctrl-C must not cut the shutdown short
        # Each component as Ctrl-C stops it in a terminal (SIGINT to its process group; Celery workers
        # then finish warm); after 30 s, SIGKILL to whatever is left of their process trees, task
        # processes (in groups of their own) too.
        stop_process_groups(processes.values(), grace_s=30, stop_signal=signal.SIGINT)


def _components(airflow: str, env: dict[str, str], port: int) -> dict[str, tuple[list[str], dict[str, str]]]:
    return {
        name: ([airflow, *(part.format(port=port) for part in command)], env)
        for name, command in UI_COMPONENTS.items()
    }


def _airflow_ui(args: argparse.Namespace) -> int:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the API server binds
        try:
            probe.bind(("127.0.0.1", args.port))
        except OSError:
            print(f"127.0.0.1:{args.port} is in use: pick another port with --port", file=sys.stderr)
            return 1
    env = _airflow_ui_environment(args.port)
    airflow = environment_program("airflow", env)
    if airflow is None:
        print("airflow not found; install the environment with `make venv`", file=sys.stderr)
        return 127
    url = f"http://127.0.0.1:{args.port}"
    return _supervise(
        airflow,
        env,
        _components(airflow, env, args.port),
        url=url,
        start_timeout=args.start_timeout,
        banner=lambda: [
            f"Airflow UI: {url}",
            *_login_lines(env),
            f"DAGs from {env['AIRFLOW__CORE__DAGS_FOLDER']} (new DAGs start paused: switch one on, or "
            "trigger it, in the UI; `ctr backfill FROM TO` runs past local days of ctr_features)",
        ],
    )


# `ctr airflow-celery`: the CeleryExecutor profile on this machine (models/ops/celery_workers.py).
# The same components as `ctr airflow-ui`, plus a Celery worker per queue; a worker that dies is
# started again, as the compose file's `restart: unless-stopped` does (RESTART_DELAY_S).


def _airflow_celery_environment(port: int) -> dict[str, str]:
    environ = {**os.environ, "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    env = airflow_environment(get_settings(), environ)
    env["AIRFLOW__API__HOST"] = "127.0.0.1"
    env["AIRFLOW__API__PORT"] = str(port)
    env.setdefault("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", f"http://127.0.0.1:{port}/execution/")
    return env


def _airflow_celery(args: argparse.Namespace) -> int:
    from models.ops.celery_workers import WORKERS, answering_workers, metadata_db_problem

    env = _airflow_celery_environment(args.port)
    problem = metadata_db_problem(env)
    if problem:
        print(f"ctr airflow-celery: {problem}", file=sys.stderr)
        return 2
    broker = env["AIRFLOW__CELERY__BROKER_URL"]
    try:
        answering_workers(broker, timeout_s=1)
    except Exception as exc:  # the broker's client raises its own connection errors
        print(
            f"ctr airflow-celery: no broker at {broker} ({exc}); set AIRFLOW__CELERY__BROKER_URL",
            file=sys.stderr,
        )
        return 2
    airflow = environment_program("airflow", env)
    if airflow is None:
        print("airflow not found; install the environment with `make venv`", file=sys.stderr)
        return 127
    url = f"http://127.0.0.1:{args.port}"
    commands = _components(airflow, env, args.port)
    for worker in WORKERS:
        commands[f"worker-{worker.queue}"] = ([airflow, *worker.local_args()], worker.environment(env))
    names = {worker.name() for worker in WORKERS}
    return _supervise(
        airflow,
        env,
        commands,
        url=url,
        start_timeout=args.start_timeout,
        restart=frozenset(f"worker-{worker.queue}" for worker in WORKERS),
        also_ready=lambda: names <= answering_workers(broker),
        banner=lambda: [
            f"Airflow UI: {url} (CeleryExecutor, broker {broker})",
            *_login_lines(env),
            *(f"worker {worker.name()}: queue {worker.queue}" for worker in WORKERS),
        ],
    )


def _feast(args: argparse.Namespace) -> int:
    """The Feast CLI on feature_repo/, with the stores the settings choose: it writes the effective
    feature_store.yaml (as `ctr feast-yaml`) and runs `feast -c feature_repo -f that-file ...`."""
    from models.features.store import write_effective_yaml

    settings = get_settings()
    argv = ["-c", str(settings.feast_repo), "-f", str(write_effective_yaml(settings)), *args.args]
    return _exec("feast", argv, dict(os.environ))


def _feast_yaml(args: argparse.Namespace) -> int:
    """Write the effective feature_store.yaml and print its path, for FEAST_FS_YAML_FILE_PATH."""
    from models.features.store import write_effective_yaml

    print(write_effective_yaml(get_settings()))
    return 0


def _serve(args: argparse.Namespace) -> int:
    from models.registry import (
        CHAMPION,
        NoChampionError,
        PromotionKeyError,
        UnpromotedVersionError,
        aliased_version,
        check_record,
        promotion_key,
    )

    try:  # refuse to start, rather than a server whose worker fails and restarts forever
        settings = get_settings()
        check_record(aliased_version(settings), CHAMPION, promotion_key(settings))
    except (NoChampionError, UnpromotedVersionError, PromotionKeyError) as exc:
        print(f"ctr serve: cannot start: {exc}", file=sys.stderr)
        return 2
    return _bentoml_serve("services.ranker:Ranker", args)


def _ingest(args: argparse.Namespace) -> int:
    return _bentoml_serve("services.ingest:Ingest", args)


def _bentoml_serve(service: str, args: argparse.Namespace) -> int:
    """`bentoml serve` with a BentoML home of the service's own (unless BENTOML_HOME is set): BentoML
    keeps its Prometheus multiprocess files there and empties them at start, so two services sharing
    a home would wipe each other's metrics. Idle connections stay open CTR_HTTP_KEEP_ALIVE_S unless
    --timeout-keep-alive is passed on."""
    settings = get_settings()
    env = dict(os.environ)
    name = service.rpartition(":")[2].lower()
    env.setdefault("BENTOML_HOME", str(settings.paths.service_home(name)))
    argv = ["serve", service, "--host", args.host, "--port", str(args.port), *args.args]
    if not any(arg.startswith("--timeout-keep-alive") for arg in args.args):
        argv += ["--timeout-keep-alive", str(settings.http_keep_alive_s)]
    return _exec("bentoml", argv, env)


def _replay(args: argparse.Namespace) -> int:
    from models.data.replay import replay

    settings = get_settings()
    url = args.url or settings.ingest_url
    totals = replay(
        args.file, url, args.speedup, max_batch=args.batch, limit=args.limit, token=settings.api_token
    )
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
                "interrupted": totals.interrupted,
            }
        ),
        flush=True,
    )
    return EXIT_INTERRUPTED if totals.interrupted else 0


def _backfill(args: argparse.Namespace) -> int:
    from models.ops.backfill import AirflowCommand, BackfillError, plan_backfill, wait_for_runs

    settings = get_settings()
    try:
        plan = plan_backfill(args.first, args.last, settings)
        airflow = AirflowCommand(settings)
        details = airflow.dag_details(plan.dag_id)
        if not airflow.scheduler_alive():
            raise BackfillError(
                "No Airflow scheduler is running: the backfill's runs would wait, queued, until one "
                "starts. Start Airflow with `ctr airflow-ui` (or run `airflow scheduler`), then try again."
            )
        # The backfill's runs exist before the scheduler may look at the DAG: a day the schedule
        # would also run is the backfill's.
        airflow.create_backfill(plan, args.reprocess, args.max_active_runs)
        days = ", ".join(str(day) for day in plan.days)
        print(
            f"backfill of {plan.dag_id} created: {len(plan.days)} run(s), one per local day "
            f"({settings.timezone}) {days}; logical dates {plan.from_date} .. {plan.to_date}",
            flush=True,
        )
        if str(details.get("is_paused")).lower() == "true":
            airflow.unpause(plan.dag_id)
            print(
                f"{plan.dag_id} was paused, as every new DAG is: unpaused it, as the scheduler runs no "
                "task of a paused DAG. It does not catch up, so no other past day starts beside the "
                f"backfill (`ctr airflow dags pause {plan.dag_id}` pauses it again).",
                flush=True,
            )
    except BackfillError as error:
        print(f"ctr backfill: {error}", file=sys.stderr)
        return 1
    if not args.wait:
        print("follow it in the Airflow UI, or with `ctr airflow dags list-runs ctr_features`", flush=True)
        return 0

    def report(states: dict) -> None:
        line = ", ".join(f"{day} {states.get(day, 'not created')}" for day in plan.days)
        print(f"{datetime.now(UTC):%H:%M:%S}Z {line}", flush=True)

    try:
        states = wait_for_runs(airflow, plan, args.poll, report)
    except BackfillError as error:
        print(f"ctr backfill: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped following the runs; the backfill goes on in Airflow", file=sys.stderr)
        return EXIT_INTERRUPTED
    failed = [str(day) for day, state in states.items() if state != "success"]
    if failed:
        print(
            f"ctr backfill: the runs of {', '.join(failed)} failed; see their logs in the UI", file=sys.stderr
        )
        return 1
    print(f"all {len(plan.days)} day(s) succeeded", flush=True)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from models.data import synth

    if args.fit:
        try:
            synth.write_parameters(args.real)
        except FileNotFoundError as exc:
            print(f"ctr synth: {exc}", file=sys.stderr)
            return 2
        print(synth.PARAMS_PATH)
        return 0
    if (args.out is None) == (args.compare is None):
        print("ctr synth: give --out DIR to generate, or --compare DIR to compare a dataset", file=sys.stderr)
        return 2
    try:
        if args.out is not None:
            events = synth.parse_size(args.events)
            synth.write_synthetic(args.out, events, seed=args.seed, shoppers=args.users, items=args.items)
        folder = args.out or args.compare
        if not synth.is_synthetic(folder):
            print(f"ctr synth: {folder} holds no {synth.MARKER}", file=sys.stderr)
            return 2
        rows = synth.compare(folder, args.real)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ctr synth: {exc}", file=sys.stderr)
        return 2
    print(f"SYNTHETIC {folder} against the real Taobao slices in {args.real or synth.REAL_DIR}:")
    print(synth.format_table(rows))
    print(f"(also in {Path(folder) / synth.STATISTICS_FILE})")
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
        help="run the airflow CLI with this project's environment, e.g. `ctr airflow dags test ctr_training`",
    )
    airflow.add_argument("args", nargs=argparse.REMAINDER)
    airflow.set_defaults(func=_airflow)

    airflow_ui = sub.add_parser(
        "airflow-ui",
        help="start Airflow locally (API server and UI, scheduler, DAG processor, triggerer) on 127.0.0.1",
        description="Start Airflow on this machine with the project's DAGs and environment: "
        "`airflow db migrate`, then the API server (which serves the UI), scheduler, DAG processor and "
        "triggerer, each on loopback only. Prints the URL and the login once every component is "
        "healthy; Ctrl-C stops them all. The metadata DB and logs live in AIRFLOW_HOME (default "
        "CTR_DATA_DIR/airflow), component logs in AIRFLOW_HOME/logs/components/. Login: user 'admin' "
        "(Airflow's SimpleAuthManager), password generated on first start into "
        "AIRFLOW_HOME/simple_auth_manager_passwords.json.generated.",
    )
    airflow_ui.add_argument("--port", type=int, default=8080, help="port of the UI and API (default 8080)")
    airflow_ui.add_argument(
        "--start-timeout",
        type=float,
        default=300,
        metavar="S",
        help="give up if the components are not all healthy after this many seconds (default 300)",
    )
    airflow_ui.set_defaults(func=_airflow_ui)

    backfill = sub.add_parser(
        "backfill",
        help="run the feature DAG for local days FROM .. TO through the Airflow scheduler",
        description="Backfill the feature DAG (ctr_features) for the shop's local days FROM .. TO "
        "(inclusive, CTR_TIMEZONE): one run per day, whose logical date is that day's local midnight. "
        "Needs a running scheduler (`ctr airflow-ui`); unpauses the DAG when it is paused, which "
        "starts no other run (the DAG does not catch up). Days that ran before run again unless "
        "--reprocess says otherwise.",
    )
    backfill.add_argument(
        "first", metavar="FROM", type=date.fromisoformat, help="first local day, YYYY-MM-DD"
    )
    backfill.add_argument(
        "last", metavar="TO", type=date.fromisoformat, nargs="?", help="last local day (default: FROM)"
    )
    backfill.add_argument(
        "--reprocess",
        choices=REPROCESS,
        default="completed",
        help="days that already have a finished run: run them again (completed, the default), only "
        "when they failed (failed), or leave them (none)",
    )
    backfill.add_argument(
        "--max-active-runs",
        type=int,
        default=1,
        help="days running at once (default 1: in order, one by one)",
    )
    backfill.add_argument(
        "--wait", action="store_true", help="follow the runs; exit 0 only if every day succeeds"
    )
    backfill.add_argument(
        "--poll", type=float, default=15.0, metavar="S", help="with --wait: seconds between checks"
    )
    backfill.set_defaults(func=_backfill)

    airflow_celery = sub.add_parser(
        "airflow-celery",
        help="start Airflow with the CeleryExecutor on 127.0.0.1: the components of airflow-ui plus "
        "a Celery worker for queue `default` and one for queue `gpu`",
        description="Start the CeleryExecutor profile on this machine: `airflow db migrate`, the API "
        "server (UI), scheduler, DAG processor and triggerer, and two Celery workers, `airflow celery "
        "worker --queues default` and `--queues gpu --concurrency 1` (CTR_DEVICE=cuda: the GPU when one "
        "is visible, else the CPU, said in the task log and the MLflow run). Needs a PostgreSQL metadata "
        "DB (AIRFLOW__DATABASE__SQL_ALCHEMY_CONN, also the Celery result backend) and a Redis broker "
        "(AIRFLOW__CELERY__BROKER_URL, default redis://127.0.0.1:6379/0). Prints the URL and the login "
        "once every component is healthy and both workers answer; a worker that dies is started again; "
        "Ctrl-C stops them all.",
    )
    airflow_celery.add_argument(
        "--port", type=int, default=8080, help="port of the UI and API (default 8080)"
    )
    airflow_celery.add_argument(
        "--start-timeout",
        type=float,
        default=300,
        metavar="S",
        help="give up if the components are not all healthy after this many seconds (default 300)",
    )
    airflow_celery.set_defaults(func=_airflow_celery)

    feast = sub.add_parser(
        "feast",
        help="the feast CLI on feature_repo/ with the configured stores, e.g. `ctr feast feature-views list`",
    )
    feast.add_argument("args", nargs=argparse.REMAINDER)
    feast.set_defaults(func=_feast)

    feast_yaml = sub.add_parser(
        "feast-yaml",
        help="write the feature_store.yaml of the configured stores and print its path: "
        "export FEAST_FS_YAML_FILE_PATH=$(ctr feast-yaml)",
        description="Write <data dir>/feast/feature_store.yaml: the repo's feature_store.yaml (or "
        "CTR_FEAST_YAML's) with the stores the settings choose (CTR_DATA_DIR, CTR_ONLINE_STORE, "
        "CTR_REDIS_CONNECTION, CTR_FEAST_REGISTRY, CTR_FEAST_REGISTRY_TTL_S, CTR_FEAST_ONLINE_STORE), and "
        "print its path. With FEAST_FS_YAML_FILE_PATH naming it, `feast` in feature_repo/, "
        "FeatureStore(repo_path='feature_repo') and `feast serve` use the project's stores. Variables "
        "the environment sets stay references that Feast fills in from the environment.",
    )
    feast_yaml.set_defaults(func=_feast_yaml)

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

    synth = sub.add_parser(
        "synth",
        help="write SYNTHETIC Taobao-format events of any size, fitted to the real slices",
        description="Write N SYNTHETIC events in the raw Taobao UserBehavior format, one headerless CSV per "
        "local day of the shop (DIR/date=YYYY-MM-DD/events.csv) plus DIR/SYNTHETIC.json; point "
        "CTR_RAW_EVENTS at DIR to run the pipeline on them. Shoppers, items and categories scale with N in "
        "Taobao's proportions (N/101 shoppers, N/24 items, up to 9,439 categories). The distributions are "
        "fitted to the real user slice and stream hour (models/data/synth_params.json). The same seed "
        "writes the same bytes. Progress goes to stderr; at the end, a table of each statistic, real beside "
        "SYNTHETIC, is printed and written to DIR/statistics.json (--compare DIR prints it for a dataset "
        "written before).",
    )
    synth.add_argument("--events", default="1M", help="how many events: 84287, 1e6, 10M, 100M (default 1M)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--out", type=Path, metavar="DIR", help="the folder to write (created if missing)")
    synth.add_argument("--users", type=int, help="shoppers (default: events / 101, as in Taobao)")
    synth.add_argument("--items", type=int, help="items (default: events / 24, as in Taobao)")
    synth.add_argument(
        "--compare", type=Path, metavar="DIR", help="compare a synthetic dataset with the real data"
    )
    synth.add_argument(
        "--fit", action="store_true", help="refit the parameters on the real slices (--real) and write them"
    )
    synth.add_argument(
        "--real",
        type=Path,
        default=None,
        metavar="DIR",
        help="the real Taobao slices to compare with (default ../shared/data/taobao_userbehavior)",
    )
    synth.set_defaults(func=_synth)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
