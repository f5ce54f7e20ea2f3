"""What each pipeline stage returns: a typed record, printed by `ctr run` and returned by the Airflow
tasks as JSON (`to_dict`).

Reading a field by its key (`result["rows"]`) still works, for callers written against the JSON
summaries the stages used to return.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class StageResult:
    def to_dict(self) -> dict[str, Any]:
        """The JSON-able summary (what the Airflow task returns as its XCom)."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(frozen=True)
class Ingested(StageResult):
    source: str
    rows: int
    days: dict[str, int]  # rows per lake day
    event_log_rows: int
    duplicates_dropped: int


@dataclass(frozen=True)
class Validated(StageResult):
    input_rows: int
    accepted_rows: int
    quarantined_rows: int
    success: bool
    days: dict[str, dict[str, Any]]  # per day: its counts and report
    data_docs: str


@dataclass(frozen=True)
class ValidationTotals(StageResult):
    input_rows: int = 0
    accepted_rows: int = 0
    quarantined_rows: int = 0
    days: int = 0
    failed_days: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Applied(StageResult):
    feature_services: list[str]


@dataclass(frozen=True)
class FeaturesBuilt(StageResult):
    rows: dict[str, int]  # rows written per feature view
    days: int
    events_read: int


@dataclass(frozen=True)
class Materialized(StageResult):
    start: str
    end: str


@dataclass(frozen=True)
class Readiness(StageResult):
    ready: bool
    missing_days: list[str]


@dataclass(frozen=True)
class CandidatesBuilt(StageResult):
    index: dict[str, Any]  # what the saved index holds (CandidateIndex.summary)
    path: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**self.index, "path": self.path, "seconds": self.seconds}


@dataclass(frozen=True)
class TrainingSetBuilt(StageResult):
    rows: int
    positives: int
    positive_rate: float


@dataclass(frozen=True)
class Trained(StageResult):
    kind: str
    rows: dict[str, int]  # train / valid / test
    device: str
    train_seconds: float
    details: dict[str, Any]  # the kind's own summary: best round or epoch, throughput

    def to_dict(self) -> dict[str, Any]:
        return {**self.details, "rows": self.rows, "device": self.device, "train_seconds": self.train_seconds}

    def __getitem__(self, key: str) -> Any:
        return self.details[key] if key in self.details else super().__getitem__(key)


@dataclass(frozen=True)
class Monitored(StageResult):
    rows: int
    message: str | None
    window: list[str] | None
    catalogue_items: int
    thresholds: dict[str, Any]
    ab: dict[str, Any] | None
    drift: list[dict[str, Any]]
    coverage: dict[str, Any] | None
    breaches: list[str]
    mlflow_run_id: str | None
