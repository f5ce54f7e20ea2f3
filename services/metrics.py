"""The ranker's own Prometheus metrics, beside BentoML's request metrics on GET /metrics."""

from __future__ import annotations

import bentoml

SERVED = bentoml.metrics.Counter(
    name="ctr_served_requests",
    documentation="Requests answered, by endpoint, model variant and version, and whether it fell back.",
    labelnames=["endpoint", "variant", "model_version", "mode"],
)
FALLBACKS = bentoml.metrics.Counter(
    name="ctr_fallback_responses",
    documentation="Responses ranked by popularity because the online store failed or was too slow.",
    labelnames=["endpoint", "reason"],
)
STORE_ERRORS = bentoml.metrics.Counter(
    name="ctr_feature_store_errors",
    documentation="Online-store reads that failed or timed out.",
    labelnames=["kind"],
)
UNKNOWN_ITEMS = bentoml.metrics.Counter(
    name="ctr_unknown_items",
    documentation="Candidates the online store has no features for (scored with new-item defaults).",
)
STAGE_SECONDS = bentoml.metrics.Histogram(
    name="ctr_stage_seconds",
    documentation="Time spent in each step of a request.",
    labelnames=["stage"],
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
MODEL_RELOADS = bentoml.metrics.Counter(
    name="ctr_model_reloads",
    documentation="Model swaps after an MLflow alias moved, and failed reload attempts.",
    labelnames=["result"],
)
ITEM_FEATURE_READS = bentoml.metrics.Counter(
    name="ctr_item_feature_reads",
    documentation="Distinct candidates per request by where their item features came from: the "
    "ranker's item cache (source=cache) or the online store (source=store); cache / (cache + store) "
    "is the cache's hit rate.",
    labelnames=["source"],
)
MODEL_REFUSALS = bentoml.metrics.Counter(
    name="ctr_model_refusals",
    documentation="Model versions refused because the promotion gate did not admit them for their "
    "alias, by reason: missing, malformed, signature, mismatch (the record is another version's), "
    "alias (admitted as challenger only).",
    labelnames=["reason"],
)
