"""The ranker on a Redis online store that nothing was materialized into, as a user meets it who
switches to Redis with the documented variables only: the service is live but not ready, says how
to fill the store (in /readyz and in its log), and once the store is filled serves the items as
known within seconds, without a restart, even with a long item cache TTL."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from tests.integration.conftest import ROOT, bentoml_serve, redis_copy_of

pytestmark = pytest.mark.integration

AT = 1512273600  # 2017-12-03 12:00 in Beijing, inside the data
ITEMS = [283, 2268318, 2333346, 4365585]  # items of the slice: the materialized store knows them
FIX = "ctr run --stage materialize"
CACHE_TTL_S = 300  # far longer than the test waits: a cached "unknown" must not last that long


@pytest.fixture(scope="module")
def empty(dag_run, tmp_path_factory):
    """The DAG's registry and candidates, the feature repo applied to a fresh Redis, nothing
    materialized; the ranker on it, waited for by /livez (it is not expected to be ready)."""
    with redis_copy_of(
        dag_run, tmp_path_factory, "empty-store", materialize=False, CTR_ITEM_CACHE_TTL_S=str(CACHE_TTL_S)
    ) as (data_dir, env, redis):
        log = data_dir / "serve.log"
        with bentoml_serve(["ctr", "serve"], env, log, ready_path="/livez") as url:
            yield {"url": url, "env": env, "log": log}


def _rank(url: str) -> dict:
    response = httpx.post(
        f"{url}/rank", json={"user_id": 1, "item_ids": ITEMS, "context": {"request_ts": AT}}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_an_empty_store_leaves_the_ranker_live_but_not_ready_saying_how_to_fill_it(empty):
    url = empty["url"]
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
    ready = httpx.get(f"{url}/readyz", timeout=10)
    assert ready.status_code == 503, ready.text
    assert FIX in ready.text and "online store" in ready.text
    # What the user saw: every item unknown; requests are still answered.
    assert all(item["unknown"] for item in _rank(url)["items"])
    lines = empty["log"].read_text().splitlines()
    loud = [line for line in lines if FIX in line and ("[ERROR]" in line or "[WARNING]" in line)]
    assert loud, "no warning in the service log about the empty online store"


def test_once_the_store_is_filled_items_are_known_within_seconds_without_a_restart(empty):
    url, env = empty["url"], empty["env"]
    assert all(item["unknown"] for item in _rank(url)["items"])  # cached as unknown now
    done = subprocess.run(
        ["ctr", "run", "--stage", "materialize"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    filled = time.monotonic()
    ready = known = None
    while time.monotonic() < filled + 20:
        if ready is None and httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
            ready = time.monotonic() - filled
        if known is None and not any(item["unknown"] for item in _rank(url)["items"]):
            known = time.monotonic() - filled
        if ready is not None and known is not None:
            break
        time.sleep(0.5)
    print(f"after the materialization: ready in {ready} s, items known in {known} s")
    assert ready is not None, "/readyz still not ready 20 s after the store was filled"
    assert known is not None, (
        f"items still unknown 20 s after the store was filled (cache TTL {CACHE_TTL_S} s)"
    )
