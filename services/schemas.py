"""Request and response models of the ranking API.

Every response model derives from `ResponseModel`, whose JSON schema writes a nullable field as
`oneOf: [<type>, null]`: BentoML's own HTTP clients (`bentoml.SyncHTTPClient`,
`bentoml.AsyncHTTPClient`) decode a response by that schema, and pydantic's usual `anyOf` form
breaks them (see `_nullable_as_one_of`). tests/unit/test_client_contract.py checks every endpoint's
response schema, OpenAPI document and client decoding against each other.
"""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

# Feast keys entities as 64-bit integers: a larger id could never match and is refused up front.
MAX_ENTITY_ID = 2**63 - 1
LAST_UNIX_SECOND = 253_402_300_799  # 9999-12-31 23:59:59 UTC, the last time pandas and Python both hold

EntityId = Annotated[int, Field(ge=0, le=MAX_ENTITY_ID)]


def unique_item_ids(ids: list[int]) -> list[int]:
    """Refuse repeated ids as pydantic refuses any invalid field, so that a repeat is reported (and
    logged) like every other invalid request: a 400 naming the field and the ids."""
    repeated = sorted(i for i, n in Counter(ids).items() if n > 1)
    if repeated:
        raise PydanticCustomError(
            "unique", "item_ids must be unique; repeated: {repeated}", {"repeated": str(repeated[:10])}
        )
    return ids


class RankContext(BaseModel):
    request_ts: int | None = Field(
        default=None,
        ge=0,
        le=LAST_UNIX_SECOND,
        description="The request's time, Unix seconds (default: now). Request-time features such as "
        "seconds since the user's last event are computed relative to it; set it to replay the past.",
    )


def _nullable_as_one_of(schema: dict[str, Any]) -> None:
    """Write each nullable property `anyOf: [X, null]` (pydantic's form) as `oneOf: [X, null]`.

    A BentoML bug (1.4.39, the pinned version): the schema a service gives its clients
    (/schema.json), and the top-level fields of each response schema in its OpenAPI document, have
    an `anyOf` replaced by its first member (`_bentoml_sdk.method._flatten_field`), so a field
    `list[X] | None` is described as an array that is never null; the client's decoder
    (`_bentoml_impl.serde.GenericSerde._decode`) then iterates the null and fails. The smallest
    reproduction:

        class Out(pydantic.BaseModel):
            tags: list[str] | None = None

        @bentoml.service
        class Tags:
            @bentoml.api
            def tags(self) -> Out:
                return Out()

        # bentoml serve module:Tags, then
        bentoml.SyncHTTPClient("http://127.0.0.1:3000").tags()
        # TypeError: 'NoneType' object is not iterable  (_bentoml_impl/serde.py, _decode)

    or without a server: `JSONSerde()._decode({"tags": None}, {"type": "object", "properties":
    {"tags": {"type": "array", "items": {"type": "string"}}}})`. BentoML keeps a `oneOf` as it is,
    and its decoder returns such a field's JSON value unchanged, null included; the OpenAPI
    document then also says that a top-level field such as `fallback_reason` may be null (with
    `anyOf` it said "string"). The JSON a response carries is the same either way. (Inside such a
    `oneOf`, /schema.json keeps a list's `$ref` to a nested model as written; the decoder does not
    follow it, and /docs.json resolves it among its components.)
    """
    for field in schema.get("properties", {}).values():
        members = field.get("anyOf")
        if members and len(members) == 2 and {"type": "null"} in members:
            field["oneOf"] = field.pop("anyOf")


class ResponseModel(BaseModel):
    """Base of every response model: nullable fields that BentoML's clients decode (see above)."""

    model_config = ConfigDict(json_schema_extra=_nullable_as_one_of)


class Contribution(ResponseModel):
    feature: str
    value: float | None = Field(description="The feature's value for this item (null: missing).")
    contribution: float = Field(description="Its contribution to the item's score, in log-odds.")


class ScoredItem(ResponseModel):
    item_id: int
    score: float = Field(
        description="Predicted probability of purchase intent (cart/fav/buy) after a view; in a "
        "fallback response, the item's popularity share instead."
    )
    unknown: bool = Field(
        default=False,
        description="The online store has no features for this item: it was scored as a new item.",
    )
    source: str | None = Field(
        default=None, description="/recommend: where the candidate came from (covisit, category, popular)."
    )
    explanation: list[Contribution] | None = Field(
        default=None,
        description="With explain=true: the features that moved the score most (null otherwise).",
    )


class ModelRef(ResponseModel):
    name: str
    version: str
    feature_service: str
    variant: str = Field(
        description="champion or challenger (a stable share of users, CTR_CHALLENGER_SHARE)."
    )


class RankResponse(ResponseModel):
    request_id: str = Field(description="Key of this response's rows in the serving log.")
    user_id: int
    items: list[ScoredItem] = Field(description="Highest score first.")
    model: ModelRef
    fallback: bool = Field(
        default=False,
        description="True when the online store failed or was slow: items are ranked by popularity.",
    )
    fallback_reason: str | None = None
    cold_start: bool = Field(
        default=False, description="/recommend: the user has no history; the list is popularity by hour."
    )


class ErrorDetail(BaseModel):
    """One invalid part of a request, as pydantic reports it (more keys, such as `url`, may follow)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="The kind of error, e.g. missing, int_parsing, too_short, unique.")
    loc: list[str | int] = Field(description="Where: the field's name, then positions and names inside it.")
    msg: str = Field(description="What is wrong with it.")


class ErrorResponse(BaseModel):
    """The body of every refused request (4xx) and of every failure (5xx), whichever part answered."""

    # Both fields are in every body: the schema says so (a default alone would make `detail` optional).
    model_config = ConfigDict(json_schema_extra={"required": ["error", "detail"]})

    error: str = Field(description="What is wrong, in a sentence.")
    detail: list[ErrorDetail] = Field(
        default_factory=list,
        description="One entry per invalid part of the request; empty when the request as a whole was "
        "refused (too large, not JSON, no token, unknown path) or the service failed.",
    )


class ReloadResponse(ResponseModel):
    """What POST /reload found: the versions serving after the check."""

    changed: bool = Field(description="An alias had moved: other versions serve from now on.")
    champion: str = Field(description="The champion version serving.")
    challenger: str | None = Field(description="The challenger version serving (null: none).")
    reload_failures: int = Field(
        description="Versions that failed to load or to match the Feast registry, since the start."
    )
    last_error: str = Field(description="Why the last of them failed (empty: none has).")
