"""BentoML ranking service: `bentoml serve services.ranker:Ranker` (or `ctr serve`).

POST /rank scores a user's candidate items; POST /recommend generates candidates (co-visitation,
the user's categories, popularity) and ranks them. Features come from the Feast online store
through the FeatureService each model version was trained with. Most users are scored by the
MLflow `champion` of CTR_SERVED_MODEL, a stable CTR_CHALLENGER_SHARE of them by its `challenger`;
both follow their aliases while the service runs, and only to versions whose promotion record the
gate signed (models.registry.check_record; refusals are counted in /metrics as
ctr_model_refusals_total). When the store fails or is slow, responses are
ranked by popularity and flagged. Every response is logged for the online A/B readout.

With CTR_USER_ID_KEY set, the user id of a request is the shop's own and is pseudonymised
(models/data/privacy.py) before features are read, a variant is picked or anything is logged; the
response echoes the id as sent. With CTR_API_TOKEN set, POST /reload needs it as a bearer token.
Request bodies over CTR_MAX_REQUEST_BYTES get a 413 (services/security.py). Every error has one JSON
shape, documented in /docs.json (services/errors.py).

GET /readyz answers 503, saying how to fill it, while the online store holds none of the served
FeatureService's entities (services/readiness.py); /livez is BentoML's own.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Annotated

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import ServiceUnavailable
from pydantic import AfterValidator, Field

from feature_repo.contract import (
    RECENT_CATEGORIES,
    RECENT_ITEMS,
    RECENT_TIMESTAMPS,
    RECENT_VIEW,
    USER_ID,
    USER_TOP_CATEGORIES,
    USER_VIEW,
    shop_hour,
)
from models.data.privacy import pseudonym
from models.settings import get_settings
from services import metrics
from services.errors import ErrorBodies, log_refusals_as_client_errors
from services.heap import freeze_loaded
from services.schemas import (
    Contribution,
    EntityId,
    ModelRef,
    RankContext,
    RankResponse,
    ReloadResponse,
    ScoredItem,
    unique_item_ids,
)
from services.security import RequestGuard

SETTINGS = get_settings()
log = logging.getLogger(__name__)

UserId = Annotated[EntityId, Field(description="The shopper's id, as the shop knows it.")]
Explain = Annotated[bool, Field(description="Add each item's top feature contributions to its score.")]
PROTECTED = ["/reload"]  # the paths that need CTR_API_TOKEN, when it is set
PROBED_ITEMS = 20  # the most popular items /readyz looks for in the online store


class FeatureBindingError(RuntimeError):
    """The model was trained on other features than the Feast registry now serves."""


@bentoml.service(traffic={"timeout": 10}, workers=SETTINGS.ranker_workers)
class Ranker:
    def __init__(self) -> None:
        from models.features.store import fail_fast, open_store
        from models.monitoring.serving_log import ServingLog
        from models.retrieval.index import CandidateIndex
        from services.champion_challenger import ModelPool
        from services.degradation import StoreGuard
        from services.features import RankerFeatures
        from services.readiness import StoreProbe

        log_refusals_as_client_errors()
        self.store = fail_fast(open_store(SETTINGS))
        self.pool = ModelPool(
            SETTINGS,
            self._check_binding,
            on_reload=self._after_reload,
            on_refusal=lambda reason: metrics.MODEL_REFUSALS.labels(reason=reason).inc(),
        )
        self.pool.start()
        self.guard = StoreGuard(SETTINGS.feature_timeout_ms / 1000)
        self.serving_log = ServingLog(SETTINGS.serving_log_dir)
        self.features = RankerFeatures(self.store, SETTINGS)
        self.candidates = (
            CandidateIndex.load(SETTINGS.candidates_dir) if SETTINGS.candidates_dir.exists() else None
        )
        if self.candidates is not None:
            index = self.candidates
            self.features.keep_warm(
                self.pool.variants.champion.feature_service,
                lambda: index.cold_start(SETTINGS.warm_items, None),
            )
        self.readiness = StoreProbe(
            lambda items: self.features.stored(self.pool.variants.champion.feature_service, items),
            self._probed_items,
            lambda: (
                f"the {PROBED_ITEMS} most popular items of the candidate lists (FeatureService "
                f"'{self.pool.variants.champion.feature_service}', online store "
                f"{self.store.config.online_store.type})"
            ),
        )
        self.readiness.check()  # at start-up too: an empty store is in the log from the start
        freeze_loaded()

    def _probed_items(self) -> list[int]:
        """Keys the online store must hold: the most popular items of the candidate lists (none
        without the lists: nothing to tell)."""
        return [] if self.candidates is None else self.candidates.cold_start(PROBED_ITEMS, None)

    def __is_ready__(self) -> bool:
        """BentoML's /readyz: not ready, with the reason as the 503's message, while the online store
        holds none of the served entities; a store that is down only degrades the responses."""
        from starlette.exceptions import HTTPException

        state = self.readiness.check()
        if not state.ready:
            raise HTTPException(status_code=503, detail=f"not ready: {state.reason}")
        return True

    def _check_binding(self, served) -> None:
        """Refuse a model whose FeatureService is missing or has other features than it was trained on."""
        from models.features.store import fingerprint

        try:
            service = self.store.get_feature_service(served.feature_service)
        except Exception as exc:
            raise FeatureBindingError(
                f"{served.name} v{served.version} was trained with FeatureService "
                f"'{served.feature_service}', which the Feast registry does not have ({exc}); "
                "apply the matching feature repo"
            ) from exc
        registered = fingerprint(service)
        if registered != served.fingerprint:
            raise FeatureBindingError(
                f"{served.name} v{served.version} was trained with FeatureService "
                f"'{served.feature_service}' fingerprint {served.fingerprint}, but the Feast "
                f"registry now has fingerprint {registered}; retrain or re-apply the matching feature repo"
            )

    @staticmethod
    def _after_reload(result: str) -> None:
        """Count each reload check; after a swap, the new models join the long-lived (frozen)
        objects and the old ones are collected."""
        metrics.MODEL_RELOADS.labels(result=result).inc()
        if result == "swapped":
            freeze_loaded()

    @bentoml.on_shutdown
    def close(self) -> None:
        self.pool.stop()
        self.serving_log.close()
        self.guard.close()
        self.readiness.close()

    # --- steps ---------------------------------------------------------------------------------

    def _user_history(self, user_id: int, request_ts: int) -> tuple[list[int], list[int]]:
        """The user's recent items and categories, newest last (as the candidate index weighs
        them); the user's top 7-day categories go before the recent ones, heaviest nearest."""
        refs = [f"{RECENT_VIEW}:{name}" for name in (RECENT_ITEMS, RECENT_CATEGORIES, RECENT_TIMESTAMPS)]
        row = self.store.get_online_features(
            features=[*refs, f"{USER_VIEW}:{USER_TOP_CATEGORIES}"], entity_rows=[{USER_ID: user_id}]
        ).to_dict()
        stamps = row[RECENT_TIMESTAMPS][0] or []
        known = [i for i, ts in enumerate(stamps) if ts <= request_ts]  # events after it are not known
        items = [row[RECENT_ITEMS][0][i] for i in known]
        top = list(row[USER_TOP_CATEGORIES][0] or [])
        return items, [*reversed(top), *(row[RECENT_CATEGORIES][0][i] for i in known)]

    def _popularity(self, item_ids: list[int]) -> np.ndarray:
        if self.candidates is None:
            return np.zeros(len(item_ids))
        return self.candidates.popularity(item_ids)

    def _score(
        self,
        endpoint: str,
        user_id: int,
        item_ids: list[int],
        request_ts: int,
        explain: bool,
        sources: list[str] | None = None,
        k: int | None = None,
    ) -> RankResponse:
        """Features, model, sort, respond: the path both endpoints share. Only the top `k` (all
        when None) are returned and logged as served."""
        from services.degradation import StoreUnavailable

        variant, served = self.pool.pick(user_id)
        frame, unknown, explanations, reason = None, np.zeros(len(item_ids), bool), None, None
        started = time.perf_counter()
        try:
            frame, unknown = self.guard.call(
                self.features.read, served.feature_service, user_id, item_ids, request_ts
            )
        except StoreUnavailable as exc:
            reason = exc.reason
            metrics.STORE_ERRORS.labels(kind="timeout" if exc.timed_out else "error").inc()
        metrics.STAGE_SECONDS.labels(stage="features").observe(time.perf_counter() - started)
        if frame is not None:
            if unknown.any():
                metrics.UNKNOWN_ITEMS.inc(int(unknown.sum()))
            started = time.perf_counter()
            scores = served.predict(frame)
            metrics.STAGE_SECONDS.labels(stage="model").observe(time.perf_counter() - started)
            if explain:
                from models.explain import top_contributions

                explanations = top_contributions(served.scorer, frame)
        else:
            scores = self._popularity(item_ids)
            metrics.FALLBACKS.labels(endpoint=endpoint, reason="store").inc()
        order = np.argsort(-np.asarray(scores), kind="stable")[:k]
        items = [
            ScoredItem(
                item_id=item_ids[i],
                score=float(scores[i]),
                unknown=bool(unknown[i]),
                source=sources[i] if sources else None,
                explanation=[Contribution(**c) for c in explanations[i]] if explanations else None,
            )
            for i in order
        ]
        mode = "fallback" if reason else "model"
        return self._respond(endpoint, user_id, variant, served, items, mode, reason, frame, order)

    def _respond(
        self,
        endpoint: str,
        user_id: int,
        variant: str,
        served,
        items: list[ScoredItem],
        mode: str,
        reason: str | None,
        features: pd.DataFrame | None = None,
        order: np.ndarray | None = None,
    ) -> RankResponse:
        """Count, log and answer one response; `mode` is model, fallback or cold_start."""
        request_id = uuid.uuid4().hex
        metrics.SERVED.labels(
            endpoint=endpoint, variant=variant, model_version=served.version, mode=mode
        ).inc()
        self._log(request_id, endpoint, user_id, served, variant, items, reason is not None, features, order)
        return RankResponse(
            request_id=request_id,
            user_id=user_id,
            items=items,
            model=ModelRef(
                name=served.name,
                version=served.version,
                feature_service=served.feature_service,
                variant=variant,
            ),
            fallback=reason is not None,
            fallback_reason=reason,
            cold_start=mode == "cold_start",
        )

    def _log(
        self,
        request_id: str,
        endpoint: str,
        user_id: int,
        served,
        variant: str,
        items: list[ScoredItem],
        fallback: bool,
        features: pd.DataFrame | None,
        order: np.ndarray | None = None,
    ) -> None:
        self.serving_log.append(
            request_id=request_id,
            endpoint=endpoint,
            user_id=user_id,
            item_ids=[i.item_id for i in items],
            scores=[i.score for i in items],
            variant=variant,
            model_name=served.name,
            model_version=served.version,
            feature_service=served.feature_service,
            fallback=fallback,
            unknown=[i.unknown for i in items],
            sources=[i.source or "" for i in items],
            features=features,
            order=order,
            served_at=datetime.now(UTC),
        )

    # --- API -----------------------------------------------------------------------------------

    @bentoml.api
    def rank(
        self,
        user_id: UserId,
        item_ids: Annotated[
            list[EntityId],
            Field(
                min_length=1,
                max_length=SETTINGS.max_candidates,
                description="Candidate item ids, unique.",
                json_schema_extra={"uniqueItems": True},
            ),
            AfterValidator(unique_item_ids),
        ],
        context: RankContext | None = None,
        explain: Explain = False,
    ) -> RankResponse:
        """Rank candidate items for a user, highest predicted purchase intent first."""
        request_ts = context.request_ts if context and context.request_ts is not None else int(time.time())
        user = pseudonym(user_id, SETTINGS.user_id_key)
        return _as_sent(self._score("rank", user, item_ids, request_ts, explain), user_id)

    @bentoml.api
    def recommend(
        self,
        user_id: UserId,
        k: Annotated[int, Field(ge=1, le=SETTINGS.max_recommendations, description="How many items.")] = 10,
        context: RankContext | None = None,
        explain: Explain = False,
    ) -> RankResponse:
        """Top-k items for a user: candidates from co-visitation, the user's categories and
        popularity, ranked by the CTR model. A user without history gets popularity by hour."""
        user = pseudonym(user_id, SETTINGS.user_id_key)
        return _as_sent(self._recommend(user, k, context, explain), user_id)

    def _recommend(self, user_id: int, k: int, context: RankContext | None, explain: bool) -> RankResponse:
        from services.degradation import StoreUnavailable

        if self.candidates is None:
            raise ServiceUnavailable(
                f"no candidate lists under {SETTINGS.candidates_dir}; run the pipeline "
                "(ctr run, or the ctr_features DAG) to build them"
            )
        request_ts = context.request_ts if context and context.request_ts is not None else int(time.time())
        hour = shop_hour(request_ts)
        try:
            items, categories = self.guard.call(self._user_history, user_id, request_ts)
        except StoreUnavailable as exc:
            metrics.FALLBACKS.labels(endpoint="recommend", reason="store").inc()
            return self._popular("recommend", user_id, k, hour, fallback_reason=exc.reason)
        if not items and not categories:
            return self._popular("recommend", user_id, k, hour)
        pool = min(SETTINGS.max_candidates, max(100, 4 * k))
        candidates, sources = self.candidates.recommend_with_sources(items, categories, pool, hour)
        return self._score("recommend", user_id, candidates, request_ts, explain, sources, k)

    def _popular(
        self, endpoint: str, user_id: int, k: int, hour: int, fallback_reason: str | None = None
    ) -> RankResponse:
        """Cold start (no history) or fallback (store down): the most popular items at this hour."""
        variant, served = self.pool.pick(user_id)
        items = self.candidates.cold_start(k, hour)
        scores = self._popularity(items)
        scored = [
            ScoredItem(item_id=i, score=float(s), source="popular")
            for i, s in zip(items, scores, strict=True)
        ]
        mode = "fallback" if fallback_reason else "cold_start"
        return self._respond(endpoint, user_id, variant, served, scored, mode, fallback_reason)

    @bentoml.api(route="/reload")
    def reload(self) -> ReloadResponse:
        """Check the MLflow aliases now instead of at the next CTR_MODEL_RELOAD_S tick. With
        CTR_API_TOKEN set, needs the header `Authorization: Bearer <CTR_API_TOKEN>`."""
        changed = self.pool.refresh()
        variants = self.pool.variants
        return ReloadResponse(
            changed=changed,
            champion=variants.champion.version,
            challenger=variants.challenger.version if variants.challenger else None,
            reload_failures=self.pool.reload_failures,
            last_error=self.pool.last_error,
        )


def _as_sent(response: RankResponse, user_id: int) -> RankResponse:
    """The response with the user id the caller sent (the logs hold its pseudonym)."""
    return response.model_copy(update={"user_id": user_id})


Ranker.add_asgi_middleware(ErrorBodies, protected=PROTECTED, limit_name="CTR_MAX_REQUEST_BYTES")
Ranker.add_asgi_middleware(
    RequestGuard, settings=SETTINGS, max_bytes=SETTINGS.max_request_bytes, protected=PROTECTED
)
