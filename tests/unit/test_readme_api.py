"""The README describes the services' answers as they are: every field of the ingest service's
response is documented where the ingest service is described, and no field that is not."""

from __future__ import annotations

import re
from pathlib import Path

from services.ingest import IngestResponse

README = Path(__file__).resolve().parents[2] / "README.md"
TABLE_HEADER = "| ingest response field |"


def documented_ingest_fields(text: str) -> list[str]:
    """The first column of the README's table of the ingest response's fields."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEADER))
    fields = []
    for line in lines[start + 2 :]:  # past the header and its |---| line
        if not line.startswith("|"):
            break
        fields += re.findall(r"^\|\s*`(\w+)`", line)
    return fields


def test_every_field_of_the_ingest_response_is_in_the_readme():
    text = README.read_text()
    assert TABLE_HEADER in text, "the README has no table of the ingest response's fields"
    documented = documented_ingest_fields(text)
    assert sorted(documented) == sorted(IngestResponse.model_fields), documented
    assert len(documented) == len(set(documented))
    # Where the ingest service is described, after its introduction and before the ranker's section.
    position = text.index(TABLE_HEADER)
    assert text.index("Live events:") < position < text.index("### The ranking service")


def test_the_check_reads_the_table_it_looks_for():
    text = (
        f"intro\n{TABLE_HEADER} means |\n|---|---|\n| `received` | all |\n| `late` | old |\n\nafter | `x` |"
    )
    assert documented_ingest_fields(text) == ["received", "late"]
