"""The ranker and the ingest service as the README and their OpenAPI documents describe them, on a
real `bentoml serve` of each over the DAG's stores:

* every URL path the README names for them is served (none answers 404);
* every refused request, whatever refused it (pydantic, the service, the request guard, the router),
  gets one JSON shape, the one /docs.json documents for that status, through plain HTTP and through
  BentoML's own client alike;
* a refused request is logged as the caller's mistake (no error, no traceback), while a failure of
  the service itself still is logged as an error.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import bentoml
import httpx
import jsonschema
import pytest
from bentoml.exceptions import BentoMLException

from tests.integration.conftest import ROOT, bentoml_serve

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024  # CTR_MAX_REQUEST_BYTES of the ranker here
JSON = {"content-type": "application/json"}

# (label, method, path, httpx arguments, status, text the body must hold)
REFUSED = [
    ("repeated items", "POST", "/rank", {"json": {"user_id": 1, "item_ids": [283, 283]}}, 400,
     "item_ids must be unique; repeated: [283]"),
    ("no items", "POST", "/rank", {"json": {"user_id": 1, "item_ids": []}}, 400, "at least 1 item"),
    ("user id missing", "POST", "/rank", {"json": {"item_ids": [283]}}, 400, "user_id"),
    ("k out of range", "POST", "/recommend", {"json": {"user_id": 1, "k": 0}}, 400,
     "greater than or equal to 1"),
    ("malformed JSON", "POST", "/rank", {"content": b'{"user_id": 1, "item_ids": [', "headers": JSON}, 400,
     "Invalid JSON"),
    ("not JSON", "POST", "/rank", {"content": b"user_id=1", "headers": {"content-type": "text/plain"}}, 415,
     "must be JSON"),
    ("too large", "POST", "/rank", {"content": b'{"user_id": 1, "item_ids": [283]' + b" " * LIMIT + b"}",
     "headers": JSON}, 413, "larger than"),
    ("unknown path", "POST", "/no-such-endpoint", {"json": {}}, 404, "Not Found"),
    ("wrong method", "GET", "/rank", {}, 405, "Method Not Allowed"),
]  # fmt: skip


@pytest.fixture(scope="module")
def services(dag_run, tmp_path_factory):
    assert dag_run["result"].returncode == 0, dag_run["output"][-3000:]
    work = tmp_path_factory.mktemp("documented")
    env = {
        **dag_run["env"],
        "CTR_MAX_REQUEST_BYTES": str(LIMIT),
        "CTR_SERVING_LOG": str(work / "serving"),
        "CTR_EVENT_LOG": str(work / "events"),
    }
    logs = {"ranker": work / "ranker.log", "ingest": work / "ingest.log"}
    with (
        bentoml_serve(["ctr", "serve"], env, logs["ranker"]) as ranker,
        bentoml_serve(["ctr", "ingest"], env, logs["ingest"]) as ingest,
    ):
        yield {"ranker": ranker, "ingest": ingest, "logs": logs, "env": env, "work": work}


@pytest.fixture(autouse=True)
def _no_cloud_key(monkeypatch):
    """A client without `token` sends $BENTO_CLOUD_API_KEY instead: none here."""
    monkeypatch.delenv("BENTO_CLOUD_API_KEY", raising=False)


# --- the paths the README names ------------------------------------------------------------------

BARE_PATH = re.compile(r"(?<![\w.:/<>$~-])(/(?:[a-z][a-z0-9_]*(?:\.json)?)?)(?![\w/<.-])")


def readme_paths() -> dict[str, set[str]]:
    """The URL paths the README names for each service: those of its example URLs (port 3000 is the
    ranker's, 3001 the ingest service's), and the bare paths of the text about each."""
    text = (ROOT / "README.md").read_text()
    usage = text[text.index("## Using what the demo produced") : text.index("## Configuration")]
    ports = {"3000": "ranker", "3001": "ingest"}
    paths: dict[str, set[str]] = {"ranker": set(), "ingest": set()}
    for port, path in re.findall(r"http://127\.0\.0\.1:(300[01])(/[\w./-]*)", usage):
        paths[ports[port]].add(path)
    ingest = usage[usage.index("Live events:") : usage.index("### The ranking service")]
    ranker = usage[usage.index("### The ranking service") :]
    paths["ingest"].update(BARE_PATH.findall(ingest))
    paths["ranker"].update(BARE_PATH.findall(ranker))
    return paths


def test_the_readme_names_the_service_paths_users_need():
    paths = readme_paths()
    assert {"/rank", "/recommend", "/reload", "/readyz", "/livez", "/metrics", "/docs.json"} <= paths[
        "ranker"
    ]
    assert "/events" in paths["ingest"]


def test_every_path_the_readme_names_is_served(services):
    missing = []
    for service, paths in readme_paths().items():
        for path in sorted(paths):
            url = f"{services[service]}{path}"
            response = httpx.get(url, timeout=30)
            if response.status_code == 405:  # an API: an empty body is refused, not unknown
                response = httpx.post(url, json={}, timeout=60)
            if response.status_code in (404, 405) or response.status_code >= 500:
                missing.append(f"{service} {path}: {response.status_code} {response.text[:200]}")
    assert missing == []


# --- one error shape, documented ---------------------------------------------------------------


def _openapi(url: str) -> dict:
    return httpx.get(f"{url}/docs.json", timeout=30).json()


def _documented(spec: dict, path: str, status: int) -> jsonschema.protocols.Validator:
    """A validator for the body /docs.json documents for `status` on POST `path` (the ranker's /rank
    for a path or method it does not have)."""
    operation = spec["paths"].get(path, {}).get("post") or spec["paths"]["/rank"]["post"]
    responses = operation["responses"]
    schema = (
        responses[str(status)]["content"]["application/json"]["schema"]
        if str(status) in responses
        else {"$ref": "#/components/schemas/ErrorResponse"}
    )
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def _check_shape(body, expected: str, validator, label: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error", "detail"}, (label, body)
    assert isinstance(body["error"], str) and isinstance(body["detail"], list), (label, body)
    assert expected in json.dumps(body), (label, body)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == [], (label, body)


def test_the_openapi_document_describes_every_refusal_with_one_schema(services):
    for service in ("ranker", "ingest"):
        spec = _openapi(services[service])
        schema = spec["components"]["schemas"]["ErrorResponse"]
        assert set(schema["required"]) == {"error", "detail"}, schema
        assert schema["properties"]["detail"]["type"] == "array", schema
        for path, item in spec["paths"].items():
            if "post" not in item:
                continue
            responses = item["post"]["responses"]
            for status in ("400", "404", "413", "415"):
                assert status in responses, (service, path, status)
            for status, response in responses.items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]
                    assert ref == {"$ref": "#/components/schemas/ErrorResponse"}, (service, path, status)


@pytest.mark.parametrize(("label", "method", "path", "arguments", "status", "expected"), REFUSED)
def test_every_refusal_has_the_documented_shape(services, label, method, path, arguments, status, expected):
    url = services["ranker"]
    response = httpx.request(method, f"{url}{path}", timeout=60, **arguments)
    assert response.status_code == status, (label, response.text)
    assert response.headers["content-type"].startswith("application/json"), label
    _check_shape(response.json(), expected, _documented(_openapi(url), path, status), label)


def test_bentomls_client_raises_with_the_same_body_as_plain_http(services):
    calls = [
        ("ranker", "rank", "/rank", {"user_id": 1, "item_ids": [283, 283]}, "repeated: [283]"),
        ("ranker", "rank", "/rank", {"user_id": 1, "item_ids": []}, "at least 1 item"),
        ("ranker", "recommend", "/recommend", {"user_id": 1, "k": 0}, "greater than or equal to 1"),
        ("ingest", "events", "/events", {"events": []}, "at least 1 item"),
    ]
    for service, endpoint, path, kwargs, expected in calls:
        url = services[service]
        with bentoml.SyncHTTPClient(url, token=None) as client, pytest.raises(BentoMLException) as raised:
            getattr(client, endpoint)(**kwargs)
        assert raised.value.error_code == 400, (endpoint, raised.value)
        body = json.loads(str(raised.value))
        _check_shape(body, expected, _documented(_openapi(url), path, 400), endpoint)
        plain = httpx.post(f"{url}{path}", json=kwargs, timeout=60)
        assert plain.status_code == 400 and plain.json() == body, endpoint


# --- what the log says about refusals and failures -------------------------------------------------


def _log_after(log: Path, offset: int, settle_s: float = 1.5) -> list[str]:
    time.sleep(settle_s)  # the service writes its log through its own buffered pipe
    with log.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace").splitlines()


def test_a_refused_request_is_logged_as_the_callers_mistake(services):
    log = services["logs"]["ranker"]
    offset = log.stat().st_size
    for _, method, path, arguments, _, _ in REFUSED[:5]:
        httpx.request(method, f"{services['ranker']}{path}", timeout=60, **arguments)
    lines = _log_after(log, offset)
    errors = [line for line in lines if "[ERROR]" in line or "Exception on" in line or "Traceback" in line]
    assert errors == [], "\n".join(lines[-40:])
    refused = [line for line in lines if "/rank" in line and "item_ids must be unique" in line]
    assert refused and all("[INFO]" in line for line in refused), "\n".join(lines[-40:])


def test_a_failure_of_the_service_itself_is_still_logged_as_an_error(services):
    """A ranker without candidate lists cannot recommend: a 503, logged as an error."""
    env = {**services["env"], "CTR_CANDIDATES_DIR": str(services["work"] / "no-candidates")}
    log = services["work"] / "no-candidates.log"
    with bentoml_serve(["ctr", "serve"], env, log) as url:
        offset = log.stat().st_size
        response = httpx.post(f"{url}/recommend", json={"user_id": 1, "k": 5}, timeout=60)
        assert response.status_code == 503, response.text
        lines = _log_after(log, offset)
    assert any("[ERROR]" in line and "/recommend" in line for line in lines), "\n".join(lines[-40:])
