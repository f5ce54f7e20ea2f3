"""Which model scores a request: `champion` for most users, `challenger` for a stable share.

The pool follows the MLflow aliases: a background thread checks them every CTR_MODEL_RELOAD_S and
swaps in a moved version once it is loaded and its features match the Feast registry. Requests
keep using the models they started with, so a reload drops none; a version that fails to load
leaves the current one serving.

Only versions the promotion gate admitted are served (models.registry.check_record): a version
without a valid promotion record for its alias is refused before anything is downloaded, counted
(`on_refusal`, with the reason) and logged once, and the current one keeps serving. It is checked
again only when its alias moves or its record changes.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models.registry import (
    CHALLENGER,
    CHAMPION,
    TAG_PROMOTION_RECORD,
    ServedModel,
    UnpromotedVersionError,
    aliased_version,
    client,
    load_promoted,
)
from models.settings import Settings

log = logging.getLogger(__name__)


def user_bucket(user_id: int) -> float:
    """A user's place in [0, 1): the same on every replica and restart (not Python's salted hash)."""
    digest = hashlib.blake2b(str(user_id).encode(), digest_size=8, person=b"ctr-ab-v1").digest()
    return int.from_bytes(digest, "big") / 2**64


def variant_for(user_id: int, challenger_share: float) -> str:
    return CHALLENGER if user_bucket(user_id) < challenger_share else CHAMPION


@dataclass(frozen=True)
class Variants:
    champion: ServedModel
    challenger: ServedModel | None = None


class ModelPool:
    """The served champion and (when there is a distinct one) challenger of one registered model."""

    def __init__(
        self,
        settings: Settings,
        check_binding: Callable[[ServedModel], None],
        on_reload: Callable[[str], None] = lambda result: None,
        on_refusal: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.settings = settings
        self.check_binding = check_binding
        self.on_reload = on_reload
        self.on_refusal = on_refusal
        self.reloads = 0
        self.reload_failures = 0
        self.last_error = ""
        # alias -> (version, its promotion record) last refused: not checked, counted or logged again
        self._refused: dict[str, tuple[str, str]] = {}
        champion = self._load(aliased_version(settings, CHAMPION), CHAMPION)
        self.variants = Variants(champion, self._challenger(champion, self._alias(CHALLENGER)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def pick(self, user_id: int) -> tuple[str, ServedModel]:
        variants = self.variants  # one read: a concurrent swap cannot mix two generations
        if (
            variants.challenger is not None
            and variant_for(user_id, self.settings.challenger_share) == CHALLENGER
        ):
            return CHALLENGER, variants.challenger
        return CHAMPION, variants.champion

    def _load(self, version: Any, alias: str) -> ServedModel:
        """Load `version` (an MLflow ModelVersion) for `alias`, if the gate admitted it for that alias."""
        try:
            served = load_promoted(self.settings, version, alias)
        except UnpromotedVersionError as exc:
            self._refused[alias] = _refusal_key(version)
            self.on_refusal(exc.reason)
            raise
        self.check_binding(served)
        return served

    def _refused_before(self, alias: str, version: Any) -> bool:
        """True when this version, with this record, was refused for this alias already."""
        return self._refused.get(alias) == _refusal_key(version)

    def _alias(self, alias: str) -> Any | None:
        """The version (MLflow ModelVersion, with its tags) the alias points to now, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return client(self.settings).get_model_version_by_alias(self.settings.served_model_name, alias)
        except MlflowException:
            return None

    def _challenger(self, champion: ServedModel, found: Any | None) -> ServedModel | None:
        """The challenger at `found` (the alias' version now), unless it is none, the champion, or
        a version already refused."""
        if found is None or str(found.version) == champion.version or self._refused_before(CHALLENGER, found):
            return None
        try:
            return self._load(found, CHALLENGER)
        except Exception as exc:  # a broken challenger must not stop the champion serving
            self._failed(f"challenger v{found.version}: {exc}")
            return None

    def refresh(self) -> bool:
        """Follow the aliases once; True when the served models changed."""
        current = self.variants
        champion = current.champion
        try:
            found = self._alias(CHAMPION)
            if (
                found is not None
                and str(found.version) != champion.version
                and not self._refused_before(CHAMPION, found)
            ):
                champion = self._load(found, CHAMPION)
        except Exception as exc:
            self._failed(f"champion: {exc}")
            return False
        found = self._alias(CHALLENGER)
        wanted = None if found is None else str(found.version)
        if current.challenger is not None and current.challenger.version == wanted != champion.version:
            challenger = current.challenger
        else:
            challenger = self._challenger(champion, found)
        if champion is current.champion and challenger is current.challenger:
            return False
        self.variants = Variants(champion, challenger)
        self.reloads += 1
        self.on_reload("swapped")
        log.info(
            "now serving %s champion v%s, challenger %s",
            champion.name,
            champion.version,
            f"v{challenger.version}" if challenger else "none",
        )
        return True

    def _failed(self, message: str) -> None:
        self.reload_failures += 1
        self.last_error = message
        self.on_reload("failed")
        log.error("model reload failed, still serving the current version: %s", message)

    def start(self) -> None:
        """Check the aliases every CTR_MODEL_RELOAD_S in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(self.settings.model_reload_s):
                try:
                    self.refresh()
                except Exception as exc:  # the tracking server being down is not fatal
                    self._failed(str(exc))

        self._thread = threading.Thread(target=loop, name="model-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _refusal_key(version: Any) -> tuple[str, str]:
    return str(version.version), version.tags.get(TAG_PROMOTION_RECORD, "")
