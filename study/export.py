"""The best configuration of each method, as an export file `proxstudy train` can run.

Best = the parameter point with the best objective averaged over its completed seeds
(``records.aggregate_points``), in the study's direction; points where any seed diverged rank
last, points with no completed seed cannot be exported. The file format is "Export file" in
docs/INTERFACES.md; the trial config is rebuilt from the study's stored search space, so the
export needs nothing but the storage and the study name.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import yaml

from proxstudy.errors import NothingToExport
from proxstudy.files import write_atomically
from proxstudy.study import records as R
from proxstudy.study.reader import StorageLike, load_records, stored_space, study_settings
from proxstudy.study.space import trial_config

__all__ = ["best_points", "export_document", "export_study", "render"]


def best_points(records: list[R.TrialRecord], maximize: bool) -> dict[str, R.PointSummary]:
    """Per method, the best parameter point over its seeds (diverged points never win)."""
    by_method: dict[str, list[R.PointSummary]] = {}
    for summary in R.aggregate_points(records):
        by_method.setdefault(summary.method, []).append(summary)
    direction = R.MAXIMIZE if maximize else R.MINIMIZE
    best = {method: R.best_point(summaries, direction) for method, summaries in by_method.items()}
    return {method: point for method, point in best.items() if point is not None}


def export_document(storage: StorageLike, study_name: str) -> dict[str, Any]:
    """The export file's content (a JSON-able dict) for a study (raises StudyNotFound,
    NothingToExport)."""
    space = stored_space(study_settings(storage, study_name))
    if space is None:
        raise NothingToExport(f"study {study_name!r} has no stored search space (not made by proxstudy run)")
    best = best_points(load_records(storage, study_name), space.direction == R.MAXIMIZE)
    if not best:
        raise NothingToExport(f"study {study_name!r} has no completed trial to export yet")
    methods: dict[str, Any] = {}
    for method in space.methods:  # document order
        point = best.get(method)
        if point is None:
            continue
        seeds = sorted(point.seeds)
        methods[method] = {
            "params": dict(point.params),
            "objective": {"mean": point.mean, "std": point.std, "n": point.n},
            "seeds": seeds,
            "trial_config": trial_config(space, method, point.params, seeds[0]).to_dict(),
        }
    return {
        "study": study_name,
        "objective": space.objective,
        "direction": space.direction,
        "methods": methods,
    }


def render(document: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def export_study(storage: StorageLike, study_name: str, fmt: str = "yaml",
                 out: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Export to ``out`` (atomically) or stdout; returns the document."""
    document = export_document(storage, study_name)
    text = render(document, fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomically(text, out)
    return document
