"""BentoML's own HTTP clients against every endpoint of the ranker and the ingest service, without a
server. For each endpoint's response model:

* the schema BentoML gives its clients (/schema.json) is walked the way the client's decoder walks
  it, and no field the model lets be null may be one the decoder would iterate (a nullable list
  decoded as a list is what broke `bentoml.SyncHTTPClient` on /rank and /recommend);
* example responses, one with every nullable field null and one with every field set, are valid
  responses of the model, match the endpoint's response schema in the OpenAPI document
  (/docs.json), and come out of `bentoml.SyncHTTPClient` and `bentoml.AsyncHTTPClient` unchanged
  (the clients run against an in-process app that serves the service's /schema.json and the
  example: the classes `bentoml.SyncHTTPClient` and `bentoml.AsyncHTTPClient` derive from, which
  take an ASGI app instead of a URL and decode as they do).

A new endpoint or response field is covered without changing this file.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import bentoml
import jsonschema
import pytest
from _bentoml_impl.client.http import AsyncHTTPClient, SyncHTTPClient
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from services.ingest import Ingest
from services.ranker import Ranker
from services.schemas import ResponseModel

SERVICES = {"ranker": Ranker, "ingest": Ingest}
ENDPOINTS = [(service, name) for service, svc in SERVICES.items() for name in svc.apis]
NULL = {"type": "null"}

Schema = dict[str, Any]


def _served(document: Any) -> Any:
    """As a client receives it: JSON, so that integer keys (the OpenAPI status codes) are strings."""
    return json.loads(json.dumps(document))


def _resolve(node: Schema, defs: Schema) -> Schema:
    while "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[1]]
    return node


def _without_null(node: Schema, defs: Schema) -> tuple[Schema, bool]:
    """The schema of the values other than null, and whether null is allowed."""
    node = _resolve(node, defs)
    for key in ("anyOf", "oneOf"):
        members = node.get(key)
        if members and NULL in members:
            rest = [m for m in members if m != NULL]
            return (_resolve(rest[0], defs) if len(rest) == 1 else {key: rest}), True
    return node, node.get("type") == "null"


def undecodable_nulls(client: Schema, model: Schema, defs: Schema, path: str = "response") -> list[str]:
    """The fields that the model lets be null but the client's decoder would not take null in.

    `client` is the endpoint's output schema as /schema.json gives it, walked as
    `_bentoml_impl.serde.GenericSerde._decode` walks it (into an array's items and an object's
    properties); `model` is the response model's JSON schema at the same place, `defs` its $defs.
    The decoder iterates an array and validates a tensor or a data frame, so null fails there; an
    object it decodes only when the value is a mapping, and any other schema (a scalar, a
    `oneOf`) leaves the value as it is."""
    model, nullable = _without_null(model, defs)
    kind = client.get("type")
    is_array = kind == "array" and "items" in client
    if nullable and (is_array or kind in ("tensor", "dataframe")):
        return [path]
    if is_array:
        return undecodable_nulls(client["items"], model.get("items", {}), defs, f"{path}[]")
    if kind == "object" and client.get("properties"):
        fields = model.get("properties", {})
        return [
            found
            for name, child in client["properties"].items()
            for found in undecodable_nulls(child, fields.get(name, {}), defs, f"{path}.{name}")
        ]
    return []


def example(node: Schema, defs: Schema, nulls: bool) -> Any:
    """A value of the JSON schema `node`: every nullable field null (`nulls`), or every one set."""
    node, nullable = _without_null(node, defs)
    if nullable and nulls:
        return None
    if "anyOf" in node or "oneOf" in node:
        return example((node.get("anyOf") or node["oneOf"])[0], defs, nulls)
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if kind == "object":
        fields = node.get("properties")
        if fields is None:
            return {"key": "value"}
        return {name: example(child, defs, nulls) for name, child in fields.items()}
    if kind == "array":
        return [example(node["items"], defs, nulls), example(node["items"], defs, nulls)]
    scalars = {"string": "text", "integer": 7, "number": 0.25, "boolean": True}
    assert kind in scalars, f"example() does not know this schema yet: {node}"
    if node.get("format") == "date-time":
        return "2017-12-03T12:00:00+08:00"
    return scalars[kind]


def _model_schema(output_spec: type[BaseModel]) -> tuple[Schema, Schema]:
    schema = output_spec.model_json_schema(mode="serialization")
    return schema, schema.get("$defs", {})


def _client_schema(service: str, name: str) -> Schema:
    routes = _served(SERVICES[service].schema())["routes"]
    return next(route for route in routes if route["name"] == name)


def _openapi_response(service: str, name: str) -> jsonschema.protocols.Validator:
    """A validator for the endpoint's 200 response as the service's OpenAPI document has it."""
    spec = _served(SERVICES[service].openapi_spec.asdict())
    route = _client_schema(service, name)["route"]
    schema = spec["paths"][route]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    # Its $refs point into the document's components: give the schema the components to resolve them.
    return jsonschema.Draft202012Validator({**schema, "components": spec["components"]})


def _examples(service: str, name: str) -> dict[str, Any]:
    schema, defs = _model_schema(SERVICES[service].apis[name].output_spec)
    return {"nulls": example(schema, defs, True), "set": example(schema, defs, False)}


def _arguments(service: str, name: str) -> dict[str, Any]:
    """Keyword arguments for the client's call: every field of the input set (the app ignores them)."""
    schema, defs = _model_schema(SERVICES[service].apis[name].input_spec)
    return example(schema, defs, nulls=False) if schema.get("properties") else {}


def _app(service: str, name: str, body: Any) -> Starlette:
    """An app with the service's /schema.json whose endpoint `name` answers `body`."""
    schema = _served(SERVICES[service].schema())

    async def schema_json(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def answer(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(body)

    route = _client_schema(service, name)["route"]
    return Starlette(routes=[Route("/schema.json", schema_json), Route(route, answer, methods=["POST"])])


def test_every_endpoint_of_both_services_is_checked():
    """The endpoints are found on the services themselves: a new one is checked as it comes."""
    assert set(ENDPOINTS) >= {
        ("ranker", "rank"),
        ("ranker", "recommend"),
        ("ranker", "reload"),
        ("ingest", "events"),
    }


@pytest.mark.parametrize(("service", "name"), ENDPOINTS)
def test_no_field_may_be_null_where_the_clients_decoder_cannot_take_null(service, name):
    output_spec = SERVICES[service].apis[name].output_spec
    schema, defs = _model_schema(output_spec)
    assert undecodable_nulls(_client_schema(service, name)["output"], schema, defs) == []


@pytest.mark.parametrize(("service", "name"), ENDPOINTS)
def test_response_schemas_have_no_anyof_for_bentoml_to_cut_down(service, name):
    """BentoML describes an `anyOf` field to its clients and in the OpenAPI document by its first
    member alone; ResponseModel writes nullable fields as `oneOf`, nested models included."""
    output_spec = SERVICES[service].apis[name].output_spec
    assert issubclass(output_spec, ResponseModel), output_spec.__mro__
    schema, defs = _model_schema(output_spec)
    for part, node in [("response", schema.get("properties", {})), *defs.items()]:
        assert "anyOf" not in json.dumps(node), (part, node)


@pytest.mark.parametrize("variant", ["nulls", "set"])
@pytest.mark.parametrize(("service", "name"), ENDPOINTS)
def test_example_responses_fit_the_model_and_the_openapi_document(service, name, variant):
    body = _examples(service, name)[variant]
    output_spec = SERVICES[service].apis[name].output_spec
    # A response the service could send: the model takes it and writes it back the same.
    assert output_spec.model_validate(body).model_dump(mode="json") == body
    validator = _openapi_response(service, name)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == [], body


@pytest.mark.parametrize("variant", ["nulls", "set"])
@pytest.mark.parametrize(("service", "name"), ENDPOINTS)
def test_bentomls_clients_decode_example_responses_unchanged(service, name, variant):
    body = _examples(service, name)[variant]
    app, arguments = _app(service, name, body), _arguments(service, name)

    with SyncHTTPClient("http://service", app=app) as client:
        assert getattr(client, name)(**arguments) == body

    async def call() -> Any:
        async with AsyncHTTPClient("http://service", app=app) as client:
            return await getattr(client, name)(**arguments)

    assert asyncio.run(call()) == body


class _Tags(BaseModel):
    tags: list[str] | None = None


class _TagsResponse(ResponseModel):
    tags: list[str] | None = None


@bentoml.service
class _TagsPlain:
    @bentoml.api
    def tags(self) -> _Tags:
        return _Tags()


@bentoml.service
class _TagsFixed:
    @bentoml.api
    def tags(self) -> _TagsResponse:
        return _TagsResponse()


def _tags_app(service) -> Starlette:
    schema = _served(service.schema())

    async def schema_json(request: Request) -> JSONResponse:
        return JSONResponse(schema)

    async def answer(request: Request) -> JSONResponse:
        return JSONResponse({"tags": None})

    return Starlette(routes=[Route("/schema.json", schema_json), Route("/tags", answer, methods=["POST"])])


def test_the_checks_catch_the_nullable_list_that_broke_the_client_and_the_base_mends_it():
    """In pydantic's `anyOf` form, the pinned BentoML describes `tags` to its clients as a list
    that is never null, and its client fails on the null (the reproduction in services/schemas.py).
    Should this fail after a BentoML upgrade, BentoML keeps the null now and ResponseModel's
    rewrite may go."""
    for service, expected in ((_TagsPlain, ["response.tags"]), (_TagsFixed, [])):
        route = _served(service.schema())["routes"][0]
        schema, defs = _model_schema(service.apis["tags"].output_spec)
        assert undecodable_nulls(route["output"], schema, defs) == expected, service
    with (
        SyncHTTPClient("http://service", app=_tags_app(_TagsPlain)) as client,
        pytest.raises(TypeError, match="'NoneType' object is not iterable"),
    ):
        client.tags()
    with SyncHTTPClient("http://service", app=_tags_app(_TagsFixed)) as client:
        assert client.tags() == {"tags": None}
