"""Which model scores a request: `champion` for most users, `challenger` for a stable share.

The pool follows the MLflow aliases: a background thread checks them every CTR_MODEL_RELOAD_S and
swaps in a moved version once it is loaded and its features match the Feast registry. Requests
keep using the models they started with, so a reload drops none; a version that fails to load
leaves the current one serving.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from models.registry import CHALLENGER, CHAMPION, ServedModel, client, load_by_alias
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
    ) -> None:
        self.settings = settings
        self.check_binding = check_binding
        self.on_reload = on_reload
        self.reloads = 0
        self.reload_failures = 0
        self.last_error = ""
        champion = self._load(CHAMPION)
        self.variants = Variants(champion, self._challenger(champion, self._alias_version(CHALLENGER)))
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

    def _load(self, alias: str) -> ServedModel:
        served = load_by_alias(self.settings, alias)
        self.check_binding(served)
        return served

    def _alias_version(self, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            found = client(self.settings).get_model_version_by_alias(self.settings.served_model_name, alias)
        except MlflowException:
            return None
        return str(found.version)

    def _challenger(self, champion: ServedModel, version: str | None) -> ServedModel | None:
        """The challenger at `version` (the alias' version now), unless it is none or the champion."""
        if version is None or version == champion.version:
            return None
        try:
            return self._load(CHALLENGER)
        except Exception as exc:  # a broken challenger must not stop the champion serving
            self._failed(f"challenger v{version}: {exc}")
            return None

    def refresh(self) -> bool:
        """Follow the aliases once; True when the served models changed."""
        current = self.variants
        champion = current.champion
        try:
            if self._alias_version(CHAMPION) not in (None, champion.version):
                champion = self._load(CHAMPION)
        except Exception as exc:
            self._failed(f"champion: {exc}")
            return False
        wanted = self._alias_version(CHALLENGER)
        if current.challenger is not None and current.challenger.version == wanted != champion.version:
            challenger = current.challenger
        else:
            challenger = self._challenger(champion, wanted)
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
