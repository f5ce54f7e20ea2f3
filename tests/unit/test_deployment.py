"""Deployment steps that need no running ranker: reload without a service, the checks of a /rank
answer, the smoke-test request picked from the data, a failing build, and the deployment record
on a real MLflow registry (SQLite in a temporary folder)."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from models.ops import deployment
from models.ops.deployment import DeploymentError, record_deployment, reload_service, response_failures
from models.ops.processes import free_port

MODEL = "ctr-xgboost"


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CTR_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CTR_SERVED_MODEL", raising=False)
    monkeypatch.delenv("CTR_SERVICE_URL", raising=False)
    from models.settings import get_settings

    return get_settings()


@pytest.fixture
def registry(settings):
    """Two versions of the served model, the second one champion."""
    from models.registry import CHAMPION, client

    tracking = client(settings)
    tracking.create_registered_model(MODEL)
    for _ in range(2):
        tracking.create_model_version(MODEL, source=(settings.data_dir / "model").as_uri())
    tracking.set_registered_model_alias(MODEL, CHAMPION, "2")
    return tracking


def test_reload_without_a_configured_service_has_nothing_to_do(settings):
    assert reload_service(settings) == {
        "reloaded": False,
        "reason": "no running service configured (CTR_SERVICE_URL)",
    }


def test_reload_of_an_unreachable_service_names_its_url(settings, monkeypatch):
    url = f"http://127.0.0.1:{free_port()}"
    settings = dataclasses.replace(settings, service_url=url + "/")
    with pytest.raises(DeploymentError, match=f"{url} did not answer POST /reload"):
        reload_service(settings)


@pytest.fixture
def fake_ranker(settings):
    """A stand-in /reload endpoint that answers what the test puts in `answer`, and the settings
    pointing at it."""
    answer: dict = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.dumps(answer).encode() if self.path == "/reload" else b"{}"
            self.send_response(200 if self.path == "/reload" else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield answer, dataclasses.replace(settings, service_url=f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()
    server.server_close()


def test_reload_returns_what_the_service_serves_and_fails_when_it_kept_the_old_champion(
    settings, registry, fake_ranker
):
    fake_ranker, settings = fake_ranker
    fake_ranker.update(changed=True, champion="2", challenger=None, reload_failures=0, last_error="")
    answer = reload_service(settings)
    assert answer["reloaded"] is True and answer["champion"] == "2" and answer["changed"] is True
    assert answer["model"] == MODEL

    fake_ranker.update(changed=False, champion="1", reload_failures=1, last_error="champion: fingerprint")
    with pytest.raises(DeploymentError, match=r"serves champion v1, but .* is v2; .*champion: fingerprint"):
        reload_service(settings)


def _answer(**changes) -> dict:
    body = {
        "items": [
            {"item_id": 7, "score": 0.3, "unknown": False},
            {"item_id": 5, "score": 0.1, "unknown": True},
        ],
        "model": {"name": MODEL, "version": "2", "feature_service": "svc", "variant": "champion"},
        "fallback": False,
        "fallback_reason": None,
    }
    return {**body, **changes}


def test_a_rank_answer_passes_only_from_the_champion_model_with_every_item_sorted():
    assert response_failures(_answer(), [5, 7], MODEL, "2") == []
    (fallback,) = response_failures(_answer(fallback=True, fallback_reason="timed out"), [5, 7], MODEL, "2")
    assert "popularity fallback (timed out)" in fallback
    (stale,) = response_failures(_answer(), [5, 7], MODEL, "3")
    assert stale == f"scored by {MODEL} v2 (champion), but the MLflow champion of {MODEL} is v3"
    unsorted = _answer(items=list(reversed(_answer()["items"])))
    assert response_failures(unsorted, [5, 7], MODEL, "2") == [
        "scores are not sorted highest first: [0.1, 0.3]"
    ]
    (missing,) = response_failures(_answer(), [5, 7, 9], MODEL, "2")
    assert "instead of the 3 candidates" in missing
    unknown = _answer(items=[{"item_id": 7, "score": 0.3, "unknown": True}])
    assert "knows none of the candidates" in response_failures(unknown, [7], MODEL, "2")[0]


def test_the_smoke_request_is_the_last_days_most_active_user_at_the_last_event(settings):
    from feature_repo.contract import EVENT_TIMESTAMP, ITEM_ID, USER_ID
    from models.data.lake import ACCEPTED, day_of_rows, write_partition

    day = pd.Timestamp("2017-12-03 10:00", tz="UTC")
    rows = [
        (1, 100, day - pd.Timedelta(days=3)),  # too old to count
        (1, 100, day - pd.Timedelta(days=2)),
        (1, 100, day - pd.Timedelta(days=2)),
        (2, 200, day - pd.Timedelta(hours=5)),
        (2, 201, day - pd.Timedelta(hours=4)),
        (3, 200, day - pd.Timedelta(hours=3)),
        (2, 202, day),
    ]
    events = pd.DataFrame(rows, columns=[USER_ID, ITEM_ID, EVENT_TIMESTAMP])
    for partition, part in events.groupby(day_of_rows(events, settings)):
        write_partition(part, settings, ACCEPTED, partition)

    request = deployment.sample_request(settings, n_items=8)
    assert request["user_id"] == 2
    assert request["item_ids"][:2] == [202, 201]  # the user's latest items, then the day's most viewed
    assert sorted(request["item_ids"]) == [200, 201, 202]
    assert request["request_ts"] == int(day.timestamp())


def test_a_failed_build_says_so_with_the_output_tail(settings, monkeypatch):
    monkeypatch.setattr(deployment, "BENTOFILE", "services/no-such-bentofile.yaml")
    with pytest.raises(DeploymentError, match="no-such-bentofile.yaml failed with exit code") as failed:
        deployment.build_bento(settings)
    assert "no-such-bentofile" in str(failed.value).split("exit code", 1)[1]
    assert (settings.data_dir / "bentoml").is_dir()


def test_record_appends_a_line_and_tags_the_version_the_smoke_test_saw(settings, registry):
    summary = {
        "build": {"tag": "ranker:abc", "build_s": 4.2},
        "smoke_test": {"bento_tag": "ranker:abc", "passed": True, "model": {"name": MODEL, "version": "2"}},
        "reload": {"reloaded": False, "reason": "no running service configured (CTR_SERVICE_URL)"},
    }
    first = record_deployment(settings, summary)
    assert first["version"] == "2" and first["bento_tag"] == "ranker:abc"
    assert first["champions"] == [{"model": MODEL, "version": "2", "served": True}]
    record_deployment(settings, {**summary, "build": {"tag": "ranker:def"}})

    lines = (settings.data_dir / "deployments/deployments.jsonl").read_text().splitlines()
    assert len(lines) == 2
    line = json.loads(lines[0])
    assert line["bento_tag"] == "ranker:abc" and line["model"] == MODEL and line["version"] == "2"
    assert line["smoke_test"]["passed"] is True and line["reload"]["reloaded"] is False
    assert json.loads(lines[1])["bento_tag"] == "ranker:def"

    tags = registry.get_model_version(MODEL, "2").tags
    assert tags["deployed_bento"] == "ranker:def"
    assert datetime.fromisoformat(tags["deployed_at"]).tzinfo is not None
    assert "deployed_bento" not in registry.get_model_version(MODEL, "1").tags


def test_record_without_a_bento_or_a_champion_fails_clearly(settings, registry):
    with pytest.raises(DeploymentError, match="names no Bento"):
        record_deployment(settings, {"reload": {"reloaded": False}})
    registry.delete_registered_model_alias(MODEL, "champion")
    with pytest.raises(DeploymentError, match="has no 'champion' version"):
        record_deployment(settings, {"build": {"tag": "ranker:abc"}})
