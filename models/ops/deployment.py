"""Deploying a new champion: build the ranker Bento, smoke-test it, reload the running service,
record what was deployed.

The deployment DAG calls these in order once a model version gets the `champion` alias; each
returns a small JSON-able summary or raises `DeploymentError` saying what failed.

A Bento holds the service's code, not a model: the ranker loads whichever version has the
`champion` alias. So the smoke test serves the new Bento on the same Feast stores and MLflow
registry as these settings and checks that it answers with the current champion. Bentos are
stored under the data dir (BENTOML_HOME), never in ~/bentoml.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from feature_repo.contract import FEAST_YAML_VARIABLE
from models.kinds import KINDS
from models.ops.processes import (
    ProcessNotReady,
    free_port,
    start_process_group,
    stop_process_group,
    wait_ready,
)
from models.registry import CHAMPION, client
from models.registry import model_name as registered_name
from models.settings import PROJECT_ROOT, Settings, get_settings

BENTOFILE = "services/bentofile.yaml"
SERVICE_URL_VARIABLE = "CTR_SERVICE_URL"
TAG_DEPLOYED_BENTO = "deployed_bento"
TAG_DEPLOYED_AT = "deployed_at"
SMOKE_CHECKS = (
    "HTTP 200 from /rank",
    "ranked by the model, not the popularity fallback",
    "every candidate returned, scores in [0, 1], highest first",
    "some candidates known to the online store",
    "scored by the served model's current MLflow champion",
)


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says which check and why."""


def service_url(settings: Settings) -> str | None:
    """CTR_SERVICE_URL: the running ranking service to send /reload to; None when unset."""
    return settings.service_url.strip().rstrip("/") or None


def bentoml_home(settings: Settings) -> Path:
    """The Bento store: BENTOML_HOME of every bentoml command run here."""
    return settings.paths.bentoml


def deployments_log(settings: Settings) -> Path:
    """One JSON line per deployment."""
    return settings.paths.deployments_log


# --- helpers ---------------------------------------------------------------------------------


def _bentoml() -> str:
    """The bentoml executable of this environment (beside the interpreter), else one on PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    path = shutil.which("bentoml", path=search)
    if path is None:
        raise DeploymentError("bentoml not found beside the interpreter or on PATH; install the environment")
    return path


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value or ""


def _tail(*outputs: str | bytes | None, chars: int = 3000) -> str:
    return "\n".join(_text(out)[-chars:] for out in outputs if out)


def _bentoml_environment(settings: Settings) -> dict[str, str]:
    return {**os.environ, "BENTOML_HOME": str(bentoml_home(settings))}


def _serving_environment(settings: Settings, model_name: str, serving_log: Path) -> dict[str, str]:
    """The Bento's environment: the data dir and the feature_store.yaml these settings resolved, set
    explicitly, since a Bento's defaults are relative to its own copy of the project (the store
    variables that are set pass on with the rest of the environment, so its Feast configuration is
    this one; CTR_FEAST_YAML carries the choice FEAST_FS_YAML_FILE_PATH may have made). Every user
    is scored by the champion, and the smoke requests go to their own serving log, not the A/B
    readout's."""
    environment = _bentoml_environment(settings)
    environment.pop(FEAST_YAML_VARIABLE, None)
    return {
        **environment,
        "CTR_FEAST_YAML": str(settings.feast_yaml),
        "CTR_DATA_DIR": str(settings.data_dir),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "CTR_CANDIDATES_DIR": str(settings.paths.candidates),
        "CTR_SERVED_MODEL": model_name,
        "CTR_CHALLENGER_SHARE": "0",
        "CTR_SERVING_LOG": str(serving_log),
        "PYTHONUNBUFFERED": "1",
    }


def champion_version(settings: Settings, name: str) -> str:
    """The version that has the `champion` alias of registered model `name`."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client(settings).get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException as exc:
        raise DeploymentError(
            f"'{name}' has no '{CHAMPION}' version in {settings.mlflow_tracking_uri}: nothing to deploy"
        ) from exc


# --- build -----------------------------------------------------------------------------------


def build_bento(settings: Settings | None = None, timeout_s: float = 600) -> dict[str, Any]:
    """`bentoml build -f services/bentofile.yaml .` in the project root, into the data dir's Bento
    store. Returns the Bento's tag, path, size and build time."""
    settings = settings or get_settings()
    home = bentoml_home(settings)
    home.mkdir(parents=True, exist_ok=True)
    env = _bentoml_environment(settings)
    command = [_bentoml(), "build", "-f", BENTOFILE, "--output", "tag", "."]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(
            f"bentoml build -f {BENTOFILE} took more than {timeout_s:.0f} s:\n{_tail(exc.stdout, exc.stderr)}"
        ) from exc
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise DeploymentError(
            f"bentoml build -f {BENTOFILE} failed with exit code {done.returncode}:\n"
            + _tail(done.stdout, done.stderr)
        )
    tags = re.findall(r"^__tag__:(\S+)$", done.stdout, flags=re.MULTILINE)
    if not tags:
        raise DeploymentError(
            "bentoml build succeeded but printed no Bento tag:\n" + _tail(done.stdout, done.stderr)
        )
    tag = tags[-1]
    name, _, version = tag.partition(":")
    path = home / "bentos" / name / version  # the local Bento store's layout
    if not path.is_dir():
        raise DeploymentError(f"built {tag}, but it is not at {path}:\n" + _tail(done.stdout, done.stderr))
    files = [p for p in path.rglob("*") if p.is_file()]
    return {
        "tag": tag,
        "path": str(path),
        "size_bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
        "build_s": round(seconds, 2),
        "bentoml_home": str(home),
    }


# --- smoke test ------------------------------------------------------------------------------


def sample_request(settings: Settings, n_items: int = 20) -> dict[str, Any]:
    """A /rank request the data can answer: the most active user of the last day of accepted
    events, their latest items and the day's most viewed ones, at the time of the last event."""
    import pandas as pd

    from feature_repo.contract import EVENT_TIMESTAMP, ITEM_ID, USER_ID
    from models.data.lake import ACCEPTED, read_events

    events = read_events(settings, ACCEPTED)[[USER_ID, ITEM_ID, EVENT_TIMESTAMP]].dropna()
    if events.empty:
        raise DeploymentError(
            f"no accepted events under {settings.paths.lake} to pick a smoke-test request from; "
            "pass user_id and item_ids"
        )
    last = events[EVENT_TIMESTAMP].max()
    day = events[events[EVENT_TIMESTAMP] > last - pd.Timedelta(days=1)]
    user = int(day[USER_ID].value_counts(sort=True).index[0])
    own = day[day[USER_ID] == user].sort_values(EVENT_TIMESTAMP, ascending=False)[ITEM_ID]
    popular = day[ITEM_ID].value_counts(sort=True).index
    items = list(dict.fromkeys([*(int(i) for i in own[: n_items // 4]), *(int(i) for i in popular)]))
    return {
        "user_id": user,
        "item_ids": items[:n_items],
        "request_ts": int(last.timestamp()),
    }


def response_failures(body: dict[str, Any], item_ids: list[int], model_name: str, champion: str) -> list[str]:
    """What is wrong with a /rank answer for `item_ids`, checked against the champion version
    MLflow has for `model_name`; empty when nothing is."""
    failures = []
    if body.get("fallback"):
        failures.append(
            f"answered with the popularity fallback ({body.get('fallback_reason')}), not the model"
        )
    items = body.get("items") or []
    returned = [item.get("item_id") for item in items]
    if sorted(returned) != sorted(item_ids):
        failures.append(f"returned items {returned} instead of the {len(item_ids)} candidates {item_ids}")
    scores = [item.get("score") for item in items]
    if not all(isinstance(s, int | float) and 0.0 <= s <= 1.0 for s in scores):
        failures.append(f"scores are not probabilities: {scores}")
    elif scores != sorted(scores, reverse=True):
        failures.append(f"scores are not sorted highest first: {scores}")
    if items and all(item.get("unknown") for item in items):
        failures.append("the online store knows none of the candidates: is the Bento reading the same store?")
    model = body.get("model") or {}
    served = f"{model.get('name')} v{model.get('version')} ({model.get('variant')})"
    if (model.get("name"), model.get("version"), model.get("variant")) != (model_name, champion, CHAMPION):
        failures.append(f"scored by {served}, but the MLflow champion of {model_name} is v{champion}")
    return failures


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout_s: float) -> float:
    try:
        return wait_ready(process, f"{url}/readyz", timeout_s, log=log, name="bentoml serve")
    except ProcessNotReady as exc:
        raise DeploymentError(str(exc)) from exc


def smoke_test(
    settings: Settings | None,
    bento_tag: str,
    user_id: int | None = None,
    item_ids: list[int] | None = None,
    request_ts: int | None = None,
    model_name: str | None = None,
    ready_timeout_s: float = 300,
    request_timeout_s: float = 60,
) -> dict[str, Any]:
    """Serve `bento_tag` on a free loopback port over these settings' stores and registry, rank
    one request and check the answer (SMOKE_CHECKS); always stop the server afterwards.

    Without `user_id`/`item_ids` the request comes from the accepted events (`sample_request`).
    `model_name` is the registered model to serve (default CTR_SERVED_MODEL). Returns timings,
    the request, the model that answered and the checks passed; raises DeploymentError on any
    failure, with the server log's tail.
    """
    import httpx

    settings = settings or get_settings()
    name = model_name or settings.served_model_name
    given = {"user_id": user_id, "item_ids": item_ids, "request_ts": request_ts}
    request = sample_request(settings) if user_id is None or item_ids is None else {}
    request.update({key: value for key, value in given.items() if value is not None})

    workdir = settings.paths.smoke_test_dir(bento_tag)
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = _serving_environment(settings, name, workdir / "serving_log")
    command = [_bentoml(), "serve", bento_tag, "--host", "127.0.0.1", "--port", str(port)]
    started = time.perf_counter()
    # Its own session, so that stopping it reaches the workers too. The working directory is
    # not the project: the Bento's own code is what gets imported.
    process = start_process_group(command, cwd=workdir, env=env, log=log)
    try:
        ready_s = _wait_ready(process, url, log, ready_timeout_s)
        champion = champion_version(settings, name)
        payload = {"user_id": request["user_id"], "item_ids": request["item_ids"]}
        if request.get("request_ts") is not None:
            payload["context"] = {"request_ts": request["request_ts"]}
        sent = time.perf_counter()
        try:
            response = httpx.post(f"{url}/rank", json=payload, timeout=request_timeout_s)
        except httpx.HTTPError as exc:
            raise DeploymentError(f"POST {url}/rank of {bento_tag} failed: {exc!r}") from exc
        rank_ms = (time.perf_counter() - sent) * 1000
        if response.status_code != 200:
            raise DeploymentError(
                f"POST {url}/rank of {bento_tag} answered {response.status_code}: {response.text[:2000]}"
            )
        body = response.json()
        failures = response_failures(body, payload["item_ids"], name, champion)
        if failures:
            reasons = "; ".join(failures)
            raise DeploymentError(
                f"smoke test of {bento_tag} failed: {reasons}\nits log ({log}):\n{_tail(log.read_text())}"
            )
    finally:
        stop_process_group(process)
    return {
        "bento_tag": bento_tag,
        "passed": True,
        "checks": list(SMOKE_CHECKS),
        "model": body["model"],
        "champion_version": champion,
        "request": request,
        "unknown_items": sum(bool(item.get("unknown")) for item in body["items"]),
        "ready_s": round(ready_s, 2),
        "rank_ms": round(rank_ms, 1),
        "total_s": round(time.perf_counter() - started, 2),
        "log": str(log),
    }


# --- reload ----------------------------------------------------------------------------------


def reload_service(settings: Settings | None = None, timeout_s: float = 120) -> dict[str, Any]:
    """POST /reload to the running ranking service (CTR_SERVICE_URL) so it serves the new champion
    now, not at its next alias check. Returns its answer: the champion and challenger versions it
    serves, whether they changed, its reload failures.

    Raises DeploymentError when the service cannot be reached, or when it still serves another
    champion than MLflow's (its `last_error` says why it refused the new one)."""
    import httpx

    settings = settings or get_settings()
    url = service_url(settings)
    if url is None:
        return {"reloaded": False, "reason": f"no running service configured ({SERVICE_URL_VARIABLE})"}
    try:
        headers = {"Authorization": f"Bearer {settings.api_token}"} if settings.api_token else {}
        response = httpx.post(f"{url}/reload", json={}, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeploymentError(f"the ranking service at {url} did not answer POST /reload: {exc!r}") from exc
    if response.status_code != 200:
        raise DeploymentError(f"POST {url}/reload answered {response.status_code}: {response.text[:2000]}")
    answer = response.json()
    name = settings.served_model_name
    expected = champion_version(settings, name)
    if str(answer.get("champion")) != expected:
        raise DeploymentError(
            f"after POST {url}/reload the service serves champion v{answer.get('champion')}, but MLflow's "
            f"champion of {name} is v{expected}; its last reload error: {answer.get('last_error') or 'none'}"
        )
    return {"reloaded": True, "url": url, "model": name, **answer}


# --- record ----------------------------------------------------------------------------------


def record_deployment(settings: Settings | None, summary: dict[str, Any]) -> dict[str, Any]:
    """Append one line to <data dir>/deployments/deployments.jsonl and tag the deployed champion
    version in MLflow (`deployed_bento`, `deployed_at`).

    `summary` holds what the steps returned: "build" (build_bento), "smoke_test" (smoke_test) and
    "reload" (reload_service); a missing one is recorded as null. The tagged version is the one
    the smoke test saw serving, else the served model's current champion. The line also lists
    the champion of every registered model, flagging the served one.
    """
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    build = summary.get("build") or {}
    smoke = summary.get("smoke_test") or {}
    tag = build.get("tag") or smoke.get("bento_tag")
    if not tag:
        raise DeploymentError("the summary names no Bento: expected build['tag'] or smoke_test['bento_tag']")
    tracking = client(settings)
    served = settings.served_model_name
    champions = []
    for name in dict.fromkeys([served, *(registered_name(settings, kind) for kind in KINDS)]):
        try:
            version = str(tracking.get_model_version_by_alias(name, CHAMPION).version)
        except MlflowException:
            continue
        champions.append({"model": name, "version": version, "served": name == served})
    deployed = (smoke.get("model") or {}).get("version") or champion_version(settings, served)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    record = {
        "deployed_at": now,
        "bento_tag": tag,
        "model": served,
        "version": deployed,
        "champions": champions,
        "build": summary.get("build"),
        "smoke_test": summary.get("smoke_test"),
        "reload": summary.get("reload"),
    }
    path = deployments_log(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(record, default=str) + "\n")
    tracking.set_model_version_tag(served, deployed, TAG_DEPLOYED_BENTO, tag)
    tracking.set_model_version_tag(served, deployed, TAG_DEPLOYED_AT, now)
    return {
        "deployed_at": now,
        "bento_tag": tag,
        "model": served,
        "version": deployed,
        "champions": champions,
        "log": str(path),
    }
