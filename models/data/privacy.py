"""Pseudonymous user ids.

With CTR_USER_ID_KEY set, the project never keeps a shop's user id: every id is replaced by its
pseudonym where it enters (the raw CSV in `models.data.events.load_events`, the live ingest service in
`models.data.event_log.Ingestor`, the ranker's requests), so the lake, the features, the event log, the
serving log and the models only ever see pseudonyms, and the offline and online sides agree.

The pseudonym is HMAC-SHA256 of the id's decimal digits under the key, truncated to its first 63
bits (big-endian): an integer in [0, 2**63), so every int64 column and schema still holds. Without
the key it can be neither computed nor reversed; with it, the shop can compute it too (to find a
user's rows, e.g. for a deletion request). Changing the key changes every pseudonym: rebuild the
lake and features from the raw log with the new key; ids already in the live event log cannot be
carried over.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd

PSEUDONYM_BITS = 63


def pseudonym(user_id: int, key: str) -> int:
    """The pseudonym of one user id under `key`; the id itself when `key` is empty."""
    if not key:
        return int(user_id)
    digest = hmac.new(key.encode(), str(int(user_id)).encode("ascii"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - PSEUDONYM_BITS)


def pseudonymise(user_ids: pd.Series, key: str) -> pd.Series:
    """`pseudonym` of every valid (non-null, non-negative) id of a column, same dtype and index;
    invalid values are left as they are for validation to quarantine. Each distinct id is hashed once."""
    if not key:
        return user_ids
    valid = user_ids.ge(0).fillna(False).to_numpy(dtype=bool)
    codes, distinct = pd.factorize(user_ids[valid])
    mapped = np.fromiter((pseudonym(u, key) for u in distinct), dtype=np.int64, count=len(distinct))
    result = user_ids.copy()
    result[valid] = mapped[codes]
    return result
