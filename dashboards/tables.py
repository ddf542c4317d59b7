"""Tabular views of a study as plain rows: the paper's Table 1, the metrics and the trials.

Plain lists of dicts/strings, so the Dash DataTable, the Plotly go.Table and the static HTML
report all show the same numbers formatted the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxstudy.dashboards.metrics import MINIMIZE, MethodMetrics, params_label, point_value
from proxstudy.study.records import (
    PARAM_CG,
    PARAM_LR,
    STATUS_COMPLETED,
    PointSummary,
    TrialRecord,
)

DIVERGED_MARK = "-"


def format_value(value: float | None) -> str:
    """Like the paper's Table 1: 77.9, 0.079, 1.481, 2e-3, 3e-4; "-" for diverged/non-finite."""
    if value is None or not math.isfinite(value):
        return DIVERGED_MARK
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{value:.3g}".replace("e+0", "e").replace("e+", "e")
    if a >= 10:
        return f"{value:.1f}"
    if a >= 0.01:
        return f"{value:.3f}"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def format_lr(lr: float) -> str:
    """A learning rate as a column header: 50, 0.5, 0.05, 5e-3, 5e-4 (short, like the paper)."""
    if lr >= 0.01:
        return f"{lr:.3g}"
    mantissa, exponent = f"{lr:.2e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def final_train_loss(record: TrialRecord) -> float | None:
    """The last finite full-batch training loss of a trial (None if there is none)."""
    for value in reversed(record.train_loss):
        if value is not None and math.isfinite(value):
            return float(value)
    return None


@dataclass
class Table1:
    """Final training loss per row (method + cg variant) x lr, cells already formatted."""

    lrs: list[float]  # descending, like the paper
    rows: list[str]
    cells: list[list[str]]  # rows x lrs
    values: list[list[float | None]]  # None: no data; inf: diverged

    def as_records(self) -> list[dict[str, str]]:
        return [
            {"method": row, **{format_lr(lr): cell for lr, cell in zip(self.lrs, cells)}}
            for row, cells in zip(self.rows, self.cells)
        ]


def _row_of(point: PointSummary) -> tuple[str, Any]:
    return point.method, point.params.get(PARAM_CG)


def table1(
    points: Sequence[PointSummary],
    records: Sequence[TrialRecord],
    direction: str = MINIMIZE,
) -> Table1:
    """The paper's Table 1: one row per method and CG-iteration count, one column per lr.

    Within a row every parameter except lr (tau_prox, swept optimizer fields) is held at the
    row's best point by the study objective, named in the row label. A cell is the mean over
    seeds of the final full-batch training loss, "-" when any seed diverged, empty without data.
    """
    finals: dict[tuple[str, tuple], list[float]] = {}
    for record in records:
        if record.status == STATUS_COMPLETED:
            loss = final_train_loss(record)
            if loss is not None:
                finals.setdefault((record.method, record.param_items), []).append(loss)
    rows: dict[tuple[str, Any], list[PointSummary]] = {}
    for p in points:
        if PARAM_LR in p.params and (p.diverged or p.n > 0):
            rows.setdefault(_row_of(p), []).append(p)
    lrs = sorted({float(p.params[PARAM_LR]) for ps in rows.values() for p in ps}, reverse=True)
    labels, cells, values = [], [], []
    for (method, cg), pts in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        finite = [p for p in pts if math.isfinite(point_value(p, direction))]
        anchor = (min if direction == MINIMIZE else max)(finite, key=lambda p: point_value(p, direction)) if finite else pts[0]
        fixed = {k: v for k, v in anchor.params.items() if k not in (PARAM_LR, PARAM_CG)}
        label = method if cg is None else f"{method} cg{cg}"
        if fixed:
            label += f" ({params_label(fixed)})"
        by_lr = {
            float(p.params[PARAM_LR]): p
            for p in pts
            if {k: v for k, v in p.params.items() if k not in (PARAM_LR, PARAM_CG)} == fixed
        }
        row_vals: list[float | None] = []
        for lr in lrs:
            p = by_lr.get(lr)
            if p is None:
                row_vals.append(None)
            elif p.diverged:
                row_vals.append(math.inf)
            else:
                losses = finals.get((p.method, tuple(sorted(p.params.items()))), [])
                row_vals.append(sum(losses) / len(losses) if losses else None)
        labels.append(label)
        values.append(row_vals)
        cells.append(["" if v is None else format_value(v) for v in row_vals])
    return Table1(lrs=lrs, rows=labels, cells=cells, values=values)


METRIC_COLUMNS = (
    ("method", "method"),
    ("best", "best"),
    ("best_params", "best parameters"),
    ("median", "median"),
    ("worst", "worst"),
    ("divergence_rate", "divergence rate"),
    ("good_share", "good-region share"),
    ("lr_tolerance", "lr tolerance (decades)"),
    ("n_points", "points"),
)


def metrics_rows(metrics: Mapping[str, MethodMetrics]) -> list[dict[str, str]]:
    """One row per method, formatted for display (keys = METRIC_COLUMNS ids)."""
    rows = []
    for m in metrics.values():
        best = format_value(m.best)
        if m.best is not None and m.best_std:
            best += f" ± {format_value(m.best_std)}"
        rows.append(
            {
                "method": m.method,
                "best": best + (f" (n={m.best_n})" if m.best is not None else ""),
                "best_params": params_label(m.best_params),
                "median": format_value(m.median),
                "worst": format_value(m.worst)
                + (f" (finite {format_value(m.worst_finite)})" if m.worst is not None and not math.isfinite(m.worst) and m.worst_finite is not None else ""),
                "divergence_rate": f"{100 * m.divergence_rate:.0f}%",
                "good_share": f"{100 * m.good_share:.0f}%",
                "lr_tolerance": f"{m.lr_tolerance_decades:.2f}",
                "n_points": str(m.n_points),
            }
        )
    return rows


def trial_rows(records: Sequence[TrialRecord]) -> tuple[list[str], list[dict[str, Any]]]:
    """The trial table: column ids and one row per trial (JSON-able scalars only)."""
    param_names = sorted({k for r in records for k in r.params})
    columns = ["number", "method", *param_names, "seed", "status", "value", "final_train_loss",
               "epochs", "diverged_epoch", "device", "error"]
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "number": r.number,
            "method": r.method,
            "seed": r.seed,
            "status": r.status,
            "value": r.value,
            "final_train_loss": final_train_loss(r),
            "epochs": max(len(r.train_loss) - 1, 0),
            "diverged_epoch": r.diverged_epoch,
            "device": r.device,
            "error": (r.error or "")[:300] or None,
        }
        for name in param_names:
            row[name] = r.params.get(name)
        rows.append(row)
    return columns, rows


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """The trial table as CSV (what the dashboard's download serves)."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buffer.getvalue()

