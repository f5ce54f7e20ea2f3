"""BentoML ingest service: `bentoml serve services.ingest:Ingest` (or `ctr ingest`).

POST /events with a batch of behaviour events. Each event is validated, logged durably to the
offline event log under CTR_DATA_DIR (read by the next batch run) and merged into the user's
short-term state in the online store, through the Feast push source. Redelivered events are
recognised by their content and counted once. While the online store is down, batches are still
logged and answered (`deferred`), and applied to it every CTR_INGEST_RETRY_S once it is back.

With CTR_API_TOKEN set, POST /events needs `Authorization: Bearer <CTR_API_TOKEN>`; bodies over
CTR_INGEST_MAX_REQUEST_BYTES get a 413 (services/security.py). With CTR_USER_ID_KEY set, user ids
are pseudonymised before anything is logged or pushed (models/data/event_log.py).
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import bentoml
from pydantic import AwareDatetime, BaseModel, Field, field_validator

from feature_repo.contract import BEHAVIORS
from models.settings import get_settings
from services.degradation import StoreGuard
from services.errors import ErrorBodies, log_refusals_as_client_errors
from services.schemas import EntityId, ResponseModel
from services.security import RequestGuard

SETTINGS = get_settings()
Behavior = Literal[BEHAVIORS]  # type: ignore[valid-type]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_CLOCK_SKEW = timedelta(hours=1)


class Event(BaseModel):
    """One shopper action, in the canonical schema of feature_repo/contract.py."""

    user_id: EntityId
    item_id: EntityId
    category_id: EntityId
    behavior: Behavior = Field(description="pv (view), cart, fav or buy.")
    event_timestamp: AwareDatetime = Field(
        description="When it happened: Unix seconds, or ISO-8601 with a UTC offset; not before 1970 "
        "and not more than an hour ahead of the service's clock."
    )

    @field_validator("event_timestamp")
    @classmethod
    def _plausible(cls, value: datetime) -> datetime:
        # A time from the future would make a shopper look active until then.
        if not EPOCH <= value <= datetime.now(UTC) + MAX_CLOCK_SKEW:
            raise ValueError("must be between 1970-01-01 and an hour from now")
        return value


class IngestResponse(ResponseModel):
    """The batch's events, counted (README.md describes each field)."""

    received: int = Field(description="Events in the request.")
    accepted: int = Field(description="New events: logged and applied to the online features.")
    duplicates: int = Field(description="Events already ingested (same content), or repeated in the batch.")
    late: int = Field(description="Older than the user's kept recent events: logged for the batch job only.")
    users_updated: int = Field(
        description="Users whose recent activity this batch updated in the online store."
    )
    deferred: int = Field(
        description="Logged while the online store was unreachable: applied to it once it is back."
    )
    pending: int = Field(description="Events of this and earlier batches still waiting for the online store.")


@bentoml.service(traffic={"timeout": 30}, workers=1)
class Ingest:
    def __init__(self) -> None:
        from models.data.event_log import Ingestor
        from models.features.store import fail_fast, open_store
        from services.heap import freeze_loaded

        log_refusals_as_client_errors()
        # A deadline on store calls, and after a failure none for CTR_INGEST_RETRY_S: while the store
        # is down a batch is logged and answered at once instead of waiting on client retries.
        guard = StoreGuard(SETTINGS.ingest_store_timeout_ms / 1000, retry_after_s=SETTINGS.ingest_retry_s)
        self.ingestor = Ingestor(SETTINGS, store=fail_fast(open_store(SETTINGS)), guard=guard)
        self._stop = threading.Event()
        self._retry = threading.Thread(target=self._retry_pending, name="ingest-retry", daemon=True)
        self._retry.start()
        freeze_loaded()

    def _retry_pending(self) -> None:
        """Apply events logged while the online store was down, as soon as it is back."""
        while not self._stop.wait(SETTINGS.ingest_retry_s):
            try:
                self.ingestor.retry_pending()
            except Exception:  # a bad pending file must not stop the retries of the others
                logging.getLogger(__name__).exception("retrying pending events failed")

    @bentoml.on_shutdown
    def close(self) -> None:
        self._stop.set()

    @bentoml.api(route="/events")
    def events(
        self,
        events: Annotated[
            list[Event],
            Field(min_length=1, max_length=SETTINGS.ingest_max_events, description="The events, any order."),
        ],
    ) -> IngestResponse:
        """Ingest a batch of behaviour events; safe to retry. With CTR_API_TOKEN set, needs the
        header `Authorization: Bearer <CTR_API_TOKEN>`."""
        from models.data.event_log import canonical

        frame = canonical(event.model_dump() for event in events)
        return IngestResponse(**self.ingestor.ingest(frame).as_dict())


Ingest.add_asgi_middleware(ErrorBodies, protected=["/events"], limit_name="CTR_INGEST_MAX_REQUEST_BYTES")
Ingest.add_asgi_middleware(
    RequestGuard,
    settings=SETTINGS,
    max_bytes=SETTINGS.ingest_max_request_bytes,
    limit_name="CTR_INGEST_MAX_REQUEST_BYTES",
    protected=["/events"],
)
