"""The export file: chosen configurations of each method, as `proxstudy train` runs them.

This module fixes the file's layout ("Export file" in docs/INTERFACES.md) and writes it; it
does not choose the points. The choice -- each method's best and most robust configuration --
is the robustness analysis' (``dashboards.metrics.picks``), and ``dashboards.exported`` hands
its picks here as :class:`PickedPoint`. The trial config of each pick is rebuilt from the
study's stored search space, so an export needs nothing but the storage and the study name.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from proxstudy.errors import NothingToExport
from proxstudy.files import write_atomically
from proxstudy.study.reader import StorageLike, stored_space, study_settings
from proxstudy.study.space import SearchSpace, trial_config

__all__ = ["PICKS", "PICK_CHOICES", "PickedPoint", "export_document", "render", "study_space", "write_export"]

#: The picks an export file may hold per method, in file order.
PICKS = ("best", "robust")
#: What ``--pick`` of `proxstudy export` accepts.
PICK_CHOICES = (*PICKS, "both")


@dataclass(frozen=True)
class PickedPoint:
    """One chosen parameter point of one method and what the study measured there."""

    params: Mapping[str, Any]  # recorded params without method and seed (lr, tau_prox, ...)
    value: float  # the point's capped seed mean (the robustness analysis' v)
    seeds: Sequence[int]  # the seeds that completed (at least one)
    values: Sequence[float]  # their final objectives, in seed order
    diverged_seeds: int
    extra: Mapping[str, Any] = field(default_factory=dict)  # pick-specific numbers, e.g. trained_lr


def study_space(storage: StorageLike, study_name: str) -> SearchSpace:
    """The study's stored search space (raises StudyNotFound, NothingToExport)."""
    space = stored_space(study_settings(storage, study_name))
    if space is None:
        raise NothingToExport(f"study {study_name!r} has no stored search space (not made by proxstudy run)")
    return space


def _entry(space: SearchSpace, method: str, point: PickedPoint) -> dict[str, Any]:
    seeds = [int(s) for s in point.seeds]
    values = [float(v) for v in point.values]
    return {
        "params": dict(point.params),
        "value": float(point.value),
        "objective": {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "n": len(values)},
        "diverged_seeds": int(point.diverged_seeds),
        "seeds": seeds,
        **point.extra,
        "trial_config": trial_config(space, method, dict(point.params), seeds[0]).to_dict(),
    }


def export_document(space: SearchSpace, study_name: str,
                    picked: Mapping[str, Mapping[str, PickedPoint]]) -> dict[str, Any]:
    """The export file's content (a JSON-able dict): per method in the space's order, each
    pick of ``picked[method]`` in ``PICKS`` order. Raises NothingToExport when nothing is
    picked; a pick without a completed seed is a caller's bug (ValueError)."""
    methods: dict[str, Any] = {}
    for method in space.methods:
        chosen = picked.get(method) or {}
        entries = {}
        for kind in PICKS:
            point = chosen.get(kind)
            if point is None:
                continue
            if not point.seeds:
                raise ValueError(f"{method} {kind}: a picked point needs a completed seed")
            entries[kind] = _entry(space, method, point)
        if entries:
            methods[method] = entries
    if not methods:
        raise NothingToExport(f"study {study_name!r} has no completed point to export yet")
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


def write_export(document: dict[str, Any], fmt: str = "yaml", out: str | os.PathLike[str] | None = None) -> str:
    """Write the rendered document to ``out`` (atomically) or stdout; returns the text."""
    text = render(document, fmt)
    if out is None:
        sys.stdout.write(text)
    else:
        write_atomically(text, out)
    return text
