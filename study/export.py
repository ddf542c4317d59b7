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
import tempfile
from pathlib import Path
from typing import Any

import optuna

from proxstudy.study import records as R
from proxstudy.study.status import UnknownStudyError


class NothingToExportError(LookupError):
    """The study has no finished point that could be exported."""


def best_points(records: list[R.TrialRecord], maximize: bool) -> dict[str, R.PointSummary]:
    """Per method, the best parameter point over its seeds (diverged points never win)."""
    by_method: dict[str, list[R.PointSummary]] = {}
    for summary in R.aggregate_points(records):
        by_method.setdefault(summary.method, []).append(summary)
    direction = R.MAXIMIZE if maximize else R.MINIMIZE
    best = {method: R.best_point(summaries, direction) for method, summaries in by_method.items()}
    return {method: point for method, point in best.items() if point is not None}


def export_document(storage: str | optuna.storages.BaseStorage, study_name: str) -> dict[str, Any]:
    """The export file's content (a JSON-able dict) for a study."""
    from proxstudy.study.space import parse_space, trial_config

    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if study_name not in summaries:
        names = ", ".join(sorted(summaries)) or "none"
        raise UnknownStudyError(f"no study {study_name!r} in the storage (studies there: {names})")
    attrs = summaries[study_name].user_attrs
    document = attrs.get(R.STUDY_ATTR_SPACE)
    if not isinstance(document, dict):
        raise NothingToExportError(f"study {study_name!r} has no stored search space (not made by proxstudy run)")
    space = parse_space(document, str(attrs.get(R.STUDY_ATTR_SOURCE, "<stored document>")))
    maximize = space.direction == "maximize"
    best = best_points(R.load_records(storage, study_name), maximize)
    if not best:
        raise NothingToExportError(f"study {study_name!r} has no completed trial to export yet")
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
            "trial_config": trial_config(space, method, point.params, seeds[0]),
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
    import yaml

    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)


def write_atomically(text: str, out: str | os.PathLike) -> None:
    """Write ``text`` to ``out`` via a temporary file in the same directory and a rename, so a
    reader never sees half a file and a failure leaves the old file in place."""
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_study(storage, study_name: str, fmt: str = "yaml", out: str | os.PathLike | None = None) -> dict:
    """Export to ``out`` (atomically) or stdout; returns the document."""
    document = export_document(storage, study_name)
    text = render(document, fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomically(text, out)
    return document
