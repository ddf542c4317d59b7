"""The best configuration of each method, exactly as `proxstudy export` writes it.

``study.export`` builds the document, so the dashboard's download and the command write the
same bytes; this module only adapts it to the dashboard's cached storage and error type.
"""

from __future__ import annotations

from proxstudy.dashboards.data import StudyData, get_storage
from proxstudy.study import export as study_export


class NothingToExport(LookupError):
    """The study has nothing exportable (no completed point, or no stored search space)."""


def export_text(storage: str, data: StudyData, fmt: str = "yaml") -> str:
    """The export file as text, from the dashboard's cached Optuna storage object."""
    try:
        doc = study_export.export_document(get_storage(storage), data.name)
    except study_export.NothingToExportError as exc:
        raise NothingToExport(str(exc)) from None
    return study_export.render(doc, fmt)
