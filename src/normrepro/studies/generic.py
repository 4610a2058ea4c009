"""A user-added study with no paper artifact: the report shows its cells table (normrepro.report
adds it to every study) and its Welch tests; nothing kind-specific."""

from __future__ import annotations

from normrepro.studies.common import StudyData


def build(sd: StudyData) -> list[dict]:
    return []
