"""Validations that overlap: two processes validating days into the same Great Expectations project,
as a backfill beside the schedule or two Celery workers do."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAYS = ("2017-11-25", "2017-11-26")
ROUNDS = 4  # each process validates its day this many times, so the two keep overlapping


def _validate_day(project_root: str, day: str, rounds: int, start, results) -> None:
    """In a process of its own: validate `day` of the real slice `rounds` times into the project."""
    try:
        import pandas as pd

        from models.data.events import load_events
        from models.data.validation import validate_events
        from models.settings import get_settings

        settings = get_settings()
        first = pd.Timestamp(f"{day}T00:00:00", tz=settings.timezone)
        until = first + pd.Timedelta(days=1)
        events = load_events(settings.raw_events)
        batch = events[(events["event_timestamp"] >= first) & (events["event_timestamp"] < until)]
        start.wait(timeout=120)  # both processes begin together
        for _ in range(rounds):
            outcome = validate_events(batch, first, until, settings.max_bad_row_fraction, Path(project_root))
            assert outcome.success, outcome.failures
            assert len(outcome.accepted) + len(outcome.quarantined) == len(batch)
        results.put((day, "ok"))
    except BaseException:
        results.put((day, traceback.format_exc()))


def test_two_validations_at_once_both_pass_and_both_reach_the_data_docs(tmp_path: Path):
    spawn = multiprocessing.get_context("spawn")
    start, results = spawn.Barrier(len(DAYS)), spawn.Queue()
    workers = [
        spawn.Process(target=_validate_day, args=(str(tmp_path), day, ROUNDS, start, results)) for day in DAYS
    ]
    for worker in workers:
        worker.start()
    outcomes = dict(results.get(timeout=600) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    failed = {day: error for day, error in outcomes.items() if error != "ok"}
    assert not failed, "\n".join(f"--- {day}\n{error[-3000:]}" for day, error in failed.items())
    assert [worker.exitcode for worker in workers] == [0] * len(DAYS)
    # Every run is in the Data Docs: one validation page each, listed on the front page.
    site = tmp_path / "gx/uncommitted/data_docs/local_site"
    pages = list((site / "validations").rglob("*.html"))
    assert len(pages) == ROUNDS * len(DAYS)
    index = (site / "index.html").read_text()
    assert all(f"{day} 00:00" in index for day in DAYS)
