"""The best configuration of each method, as `proxstudy export` writes it (docs/INTERFACES.md).

``study.export`` (the `proxstudy export` code) builds the file, so the dashboard's download and
the command write the same bytes; ``export_document`` here is a fallback from the same records
and stored search-space document, used only if that module is missing.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from dashboards.data import StudyData
from study.records import OPTIMIZER_PARAM_PREFIX, PARAM_CG, PARAM_LR, PARAM_TAU


def _trial_config(data: StudyData, method: str, params: dict[str, Any], seed: int) -> dict[str, Any] | None:
    space = data.space or {}
    arm = (space.get("methods") or {}).get(method)
    if not isinstance(arm, dict):
        return None
    training = dict(space.get("training") or {})
    training.pop("seeds", None)
    optimizer = dict(arm.get("optimizer") or {})
    for name, value in params.items():
        if name.startswith(OPTIMIZER_PARAM_PREFIX):
            optimizer[name[len(OPTIMIZER_PARAM_PREFIX):]] = value
    config: dict[str, Any] = {
        "dataset": space.get("dataset"),
        "model": space.get("model"),
        "training": {k: training[k] for k in ("epochs", "batch_size") if k in training},
        "objective": data.objective,
        "method": method,
        "mode": arm.get("mode"),
        "lr": params.get(PARAM_LR),
        "optimizer": optimizer,
        "seed": seed,
    }
    if PARAM_TAU in params:
        config["tau_prox"] = params[PARAM_TAU]
    if PARAM_CG in params:
        config["cg_iterations"] = params[PARAM_CG]
    return config


def export_document(data: StudyData) -> dict[str, Any]:
    """The export file's content for a study's data (best point per method over its seeds)."""
    methods: dict[str, Any] = {}
    for method, m in data.metrics.items():
        if m.best_params is None:
            continue
        point = next(p for p in data.points if p.method == method and p.params == m.best_params)
        seeds = sorted(point.seeds)
        methods[method] = {
            "params": dict(m.best_params),
            "objective": {"mean": m.best, "std": m.best_std, "n": m.best_n},
            "seeds": seeds,
            "trial_config": _trial_config(data, method, dict(m.best_params), seeds[0] if seeds else 0),
        }
    return {"study": data.name, "objective": data.objective, "direction": data.direction, "methods": methods}


class NothingToExport(LookupError):
    """The study has nothing exportable (no completed point, or no stored search space)."""


def export_text(storage: str, data: StudyData, fmt: str = "yaml") -> str:
    """The export file as text, built by ``study.export`` (the same code as `proxstudy export`).

    The dashboard's cached Optuna storage object is passed in, so the records come from its
    trial cache. Only if ``study.export`` is unavailable (a partial install) is the document
    built here from the same records.
    """
    try:
        from study import export as study_export
    except ImportError:
        study_export = None
    if study_export is None:
        doc = export_document(data)
        if not doc["methods"]:
            raise NothingToExport(f"study {data.name!r} has no completed trial to export yet")
        return json.dumps(doc, indent=2) + "\n" if fmt == "json" else yaml.safe_dump(doc, sort_keys=False)
    from dashboards.data import get_storage

    try:
        doc = study_export.export_document(get_storage(storage), data.name)
    except study_export.NothingToExportError as exc:
        raise NothingToExport(str(exc)) from None
    return study_export.render(doc, fmt)
