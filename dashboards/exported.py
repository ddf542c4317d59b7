"""The export file from the robustness analysis: each method's best and most robust point.

``metrics.picks`` chooses the points (best = best capped seed mean; most robust = the centre of
the trained lr range at the method's least lr-sensitive setting); ``study.export`` lays them
out. `proxstudy export` and the dashboard's download both call :func:`export_document`, so
they write the same bytes for the same study.
"""

from __future__ import annotations

from typing import Any

from proxstudy.dashboards.data import StudyData, study_summary_data
from proxstudy.dashboards.metrics import MethodRobustness, PointRobustness, picks
from proxstudy.errors import NothingToExport
from proxstudy.study import export as study_export
from proxstudy.study.reader import StorageLike

__all__ = ["NothingToExport", "export_document", "export_text", "picked_points", "study_export_document"]


def _extra(kind: str, method: MethodRobustness) -> dict[str, Any]:
    if kind != "robust":
        return {}
    return {
        "lr_sensitivity": method.lr_sensitivity,
        "trained_lr": None if method.trained_lr is None else list(method.trained_lr),
        "trained_decades": method.trained_decades,
    }


def _picked(point: PointRobustness, extra: dict[str, Any]) -> study_export.PickedPoint:
    return study_export.PickedPoint(params=point.params, value=point.value, seeds=point.seeds,
                                    values=point.values, diverged_seeds=point.n_diverged, extra=extra)


def picked_points(data: StudyData, pick: str = "both") -> dict[str, dict[str, study_export.PickedPoint]]:
    """The study's picks as ``study.export`` takes them (``pick``: best | robust | both)."""
    chosen = picks(data.metrics, pick)
    return {
        name: {kind: _picked(point, _extra(kind, data.metrics.methods[name])) for kind, point in by_kind.items()}
        for name, by_kind in chosen.items()
    }


def export_document(storage: StorageLike, data: StudyData, pick: str = "both") -> dict[str, Any]:
    """The export document of the study in ``data`` (raises NothingToExport)."""
    space = study_export.study_space(storage, data.name)
    return study_export.export_document(space, data.name, picked_points(data, pick))


def study_export_document(storage: str, study_name: str, pick: str = "both") -> dict[str, Any]:
    """The export document of a study read afresh (what `proxstudy export` writes)."""
    return export_document(storage, study_summary_data(storage, study_name), pick)


def export_text(storage: str, data: StudyData, fmt: str = "yaml", pick: str = "both") -> str:
    """The export file as text (raises NothingToExport)."""
    return study_export.render(export_document(storage, data, pick), fmt)
