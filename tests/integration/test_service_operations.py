"""The ranker in operation, on a Redis online store: champion/challenger split, hot reload when
an MLflow alias moves, and fallback while Redis is stopped or hung, with recovery after."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import httpx
import pytest

from tests.integration.conftest import bentoml_serve, redis_copy_of

pytestmark = pytest.mark.integration

AT = 1512273600
ITEMS = [283, 2268318, 2333346, 4365585]


@pytest.fixture(scope="module")
def deployment(dag_run, tmp_path_factory):
    """The DAG's registry and features, served from a Redis this module can stop and restart."""
    extra = {"CTR_MODEL_RELOAD_S": "1", "CTR_CHALLENGER_SHARE": "0.3", "CTR_FEATURE_TIMEOUT_MS": "300"}
    with (
        redis_copy_of(dag_run, tmp_path_factory, "operations", **extra) as (data_dir, env, redis),
        bentoml_serve(["ctr", "serve"], env, data_dir / "serve.log") as url,
    ):
        yield {"url": url, "env": env, "redis": redis, "data_dir": data_dir}


def _rank(url: str, user: int, timeout: float = 30) -> httpx.Response:
    payload = {"user_id": user, "item_ids": ITEMS, "context": {"request_ts": AT}}
    return httpx.post(f"{url}/rank", json=payload, timeout=timeout)


def _tracking(env: dict, use_environment):
    """The project's MLflow client on the deployment's registry (it also sets MLflow's global
    tracking URI, which resolving a `models:/` source needs)."""
    use_environment(env)
    from models.registry import client
    from models.settings import get_settings

    return client(get_settings())


def _admit(version: str, alias: str, like) -> None:
    """The promotion gate's record for a copy of version `like` (same run, artifact and metrics), as
    the gate writes it: the service serves no version without one."""
    from models.evaluation.promotion import record_promotion
    from models.settings import get_settings

    metrics = json.loads(like.tags["promotion_record"])["metrics"]
    record_promotion(get_settings(), "ctr-xgboost", version, alias, metrics)


def test_a_challenger_scores_a_stable_share_of_users(deployment, use_environment):
    url, env = deployment["url"], deployment["env"]
    tracking = _tracking(env, use_environment)
    first = tracking.get_model_version("ctr-xgboost", "1")
    second = tracking.create_model_version("ctr-xgboost", first.source, first.run_id, tags=first.tags)
    version = str(second.version)
    _admit(version, "challenger", first)
    tracking.set_registered_model_alias("ctr-xgboost", "challenger", version)
    reloaded = httpx.post(f"{url}/reload", json={}, timeout=60).json()
    assert reloaded["challenger"] == version, reloaded

    variants = {}
    for user in range(300):
        model = _rank(url, user).json()["model"]
        variants[user] = (model["variant"], model["version"])
    challenged = [u for u, (variant, _) in variants.items() if variant == "challenger"]
    assert 0.2 < len(challenged) / len(variants) < 0.4
    assert all(variants[u][1] == version for u in challenged)
    for user in list(variants)[:30]:  # the same user, the same variant
        assert _rank(url, user).json()["model"]["variant"] == variants[user][0]


def test_moving_the_champion_alias_switches_the_service_without_dropping_requests(
    deployment, use_environment
):
    url, env = deployment["url"], deployment["env"]
    tracking = _tracking(env, use_environment)
    newest = max(int(v.version) for v in tracking.search_model_versions("name='ctr-xgboost'"))
    statuses, versions, stop = [], [], threading.Event()

    def traffic() -> None:
        user = 0
        while not stop.is_set():
            response = _rank(url, 10_000 + user % 50)
            statuses.append(response.status_code)
            if response.status_code == 200:
                versions.append(response.json()["model"]["version"])
            user += 1

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        # The alias moves once the traffic has had answers (20 of them, not a fixed time that a busy
        # machine can spend before the first), so the old champion is seen serving before the switch.
        deadline = time.monotonic() + 30
        while len(versions) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(versions) >= 20, f"{len(versions)} answers to /rank in 30 s: statuses {set(statuses)}"
        _admit(str(newest), "champion", tracking.get_model_version("ctr-xgboost", "1"))
        tracking.set_registered_model_alias("ctr-xgboost", "champion", str(newest))
        tracking.delete_registered_model_alias("ctr-xgboost", "challenger")
        moved = time.monotonic()
        while time.monotonic() - moved < 20 and (not versions or versions[-1] != str(newest)):
            time.sleep(0.2)
        switch_s = time.monotonic() - moved
        time.sleep(1)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert set(statuses) == {200}, statuses
    assert versions[-1] == str(newest) and switch_s < 5, switch_s  # CTR_MODEL_RELOAD_S=1
    assert "1" in versions  # the old champion served until the switch


def test_a_stopped_or_hung_store_gives_flagged_popularity_and_service_comes_back(deployment):
    url, redis = deployment["url"], deployment["redis"]
    # From a healthy service: a read that timed out in an earlier test leaves the store alone for
    # its retry interval (1 s), as designed, so wait for model ranking first.
    before = _model_ranked(url, 10, "the ranker with its store up still falls back")

    redis.stop()
    try:
        down = _rank(url, 1)
        assert down.status_code == 200, down.text
        body = down.json()
        assert body["fallback"] is True and "online store" in body["fallback_reason"]
        assert sorted(i["item_id"] for i in body["items"]) == sorted(ITEMS)
        recommended = httpx.post(f"{url}/recommend", json={"user_id": 1, "k": 5}, timeout=30).json()
        assert recommended["fallback"] is True and len(recommended["items"]) == 5
    finally:
        redis.start()
    _wait_for_model_ranking(url, before)

    os.kill(redis.process.pid, signal.SIGSTOP)  # hung, not refused: reads must time out
    try:
        started = time.perf_counter()
        hung = _rank(url, 1).json()
        assert hung["fallback"] is True and "longer than 300 ms" in hung["fallback_reason"]
        assert time.perf_counter() - started < 2
    finally:
        os.kill(redis.process.pid, signal.SIGCONT)
    _wait_for_model_ranking(url, before)

    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'ctr_fallback_responses_total{endpoint="rank",reason="store"}' in metrics
    # The same candidates again and again: read from the store once per cache lifetime, then cached.
    line = r'^ctr_item_feature_reads_total{{source="{}"}} (\S+)$'
    reads = {s: float(re.search(line.format(s), metrics, re.M)[1]) for s in ("cache", "store")}
    assert reads["store"] >= len(ITEMS) and reads["cache"] > reads["store"], reads


def _model_ranked(url: str, within_s: float, failure: str) -> dict:
    """The first /rank answer that is model-ranked (not a fallback), asked every 0.5 s."""
    deadline = time.monotonic() + within_s
    while True:
        body = _rank(url, 1).json()
        if not body["fallback"]:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"{failure}: {body['fallback_reason']}")
        time.sleep(0.5)


def _wait_for_model_ranking(url: str, expected: dict) -> None:
    body = _model_ranked(url, 20, "the ranker did not return to model ranking after the store came back")
    assert body["items"] == expected["items"]  # the same features, the same scores
