"""The best configuration of each method, exactly as `proxstudy export` writes it.

``study.export`` builds the document, so the dashboard's download and the command write the
same bytes; this module only adapts it to the dashboard's study data.
"""

from __future__ import annotations

from proxstudy.dashboards.data import StudyData
from proxstudy.errors import NothingToExport
from proxstudy.study import export as study_export

__all__ = ["NothingToExport", "export_text"]  # the page catches NothingToExport from here


def export_text(storage: str, data: StudyData, fmt: str = "yaml") -> str:
    """The export file as text (raises NothingToExport)."""
    return study_export.render(study_export.export_document(storage, data.name), fmt)
