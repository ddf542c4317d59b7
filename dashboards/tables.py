"""Tabular views of a study as plain rows and text: Table 1, the metrics, the verdict, the trials.

Plain lists of dicts/strings, so the Dash DataTable, the Plotly go.Table and the static HTML
report all show the same numbers formatted the same way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxstudy.dashboards.metrics import MINIMIZE, Robustness, params_label
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
            {"method": row, **{format_lr(lr): cell for lr, cell in zip(self.lrs, cells, strict=True)}}
            for row, cells in zip(self.rows, self.cells, strict=True)
        ]


def _rank_value(point: PointSummary, direction: str) -> float:
    """A point's seed mean for ranking; diverged points (or none completed) rank last."""
    if point.diverged or point.mean is None:
        return math.inf if direction == MINIMIZE else -math.inf
    return float(point.mean)


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
        finite = [p for p in pts if math.isfinite(_rank_value(p, direction))]
        pick = min if direction == MINIMIZE else max
        anchor = pick(finite, key=lambda p: _rank_value(p, direction)) if finite else pts[0]
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
            cell = by_lr.get(lr)
            if cell is None:
                row_vals.append(None)
            elif cell.diverged:
                row_vals.append(math.inf)
            else:
                losses = finals.get((cell.method, tuple(sorted(cell.params.items()))), [])
                row_vals.append(sum(losses) / len(losses) if losses else None)
        labels.append(label)
        values.append(row_vals)
        cells.append(["" if v is None else format_value(v) for v in row_vals])
    return Table1(lrs=lrs, rows=labels, cells=cells, values=values)


METRIC_COLUMNS = (
    ("method", "method"),
    ("lr_sensitivity", "lr sensitivity [95% CI]"),
    ("sensitivity_params", "at (most robust setting)"),
    ("trained_lr", "trained lr range"),
    ("trained_decades", "decades [95% CI]"),
    ("robust_params", "most robust configuration"),
    ("best", "best (capped seed mean)"),
    ("best_params", "best parameters"),
    ("median", "median"),
    ("worst", "worst"),
    ("divergence_rate", "diverged points"),
    ("seeds", "seeds per point"),
)


def format_number(value: float | None, digits: int = 2) -> str:
    """A unitless number (sensitivity, decades) with fixed decimals; "n/a" when undefined."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def format_interval(interval: tuple[float, float] | None, digits: int = 2) -> str:
    if interval is None:
        return ""
    return f"[{format_number(interval[0], digits)}, {format_number(interval[1], digits)}]"


def format_lr_range(lr_range: tuple[float, float] | None) -> str:
    if lr_range is None:
        return "none"
    lo, hi = lr_range
    return format_lr(lo) if lo == hi else f"{format_lr(lo)} to {format_lr(hi)}"


def _setting(params: Mapping[str, Any] | None) -> str:
    if params is None:
        return ""
    return params_label(params) or "(no other parameter)"


def metrics_rows(robustness: Robustness) -> list[dict[str, str]]:
    """One row per method, formatted for display (keys = METRIC_COLUMNS ids)."""
    rows = []
    for m in robustness.methods.values():
        seeds = str(m.seeds_min) if m.seeds_min == m.seeds_max else f"{m.seeds_min}-{m.seeds_max}"
        rows.append(
            {
                "method": m.method,
                "lr_sensitivity": f"{format_number(m.lr_sensitivity)} {format_interval(m.lr_sensitivity_ci)}".strip(),
                "sensitivity_params": _setting(m.sensitivity_params),
                "trained_lr": format_lr_range(m.trained_lr),
                "trained_decades": (f"{format_number(m.trained_decades, 1)} "
                                    f"{format_interval(m.trained_decades_ci, 1)}").strip(),
                "robust_params": params_label(m.robust_params) if m.robust_params is not None else "none",
                "best": format_value(m.best_value),
                "best_params": params_label(m.best_params),
                "median": format_value(m.median),
                "worst": format_value(m.worst),
                "divergence_rate": f"{100 * m.divergence_rate:.0f}% ({m.diverged_points} of {m.points})",
                "seeds": seeds,
            }
        )
    return rows


@dataclass
class Verdict:
    """The plain-language answer a study page and report open with."""

    scale: str  # what "progress" and "trained" mean on this study, in its own units
    methods: list[str]  # one sentence per method
    comparisons: list[str]  # one sentence per pair of methods
    ranking: str  # the methods ordered by lr sensitivity

    @property
    def sentences(self) -> list[str]:
        return [self.scale, *self.methods, self.ranking, *self.comparisons]


#: P(A less sensitive than B) at or beyond which the verdict calls A less sensitive.
DECISIVE = 0.95


def _method_sentence(m, delta: float) -> str:
    if m.lr_sensitivity is None:
        return f"{m.method}: no learning-rate grid to measure (no point records an lr)."
    text = f"{m.method}: lr sensitivity {format_number(m.lr_sensitivity)} {format_interval(m.lr_sensitivity_ci)}"
    if m.sensitivity_params:
        text += f" at its most robust setting {params_label(m.sensitivity_params)}"
    share = f"{100 * (1 - delta):.0f}% of the best progress"
    if m.trained_lr is None:
        text += f"; it reaches {share} at none of the {m.lr_points} learning rates there"
    elif m.trained_lr[0] == m.trained_lr[1]:
        text += (f"; it reaches {share} at a single learning rate ({format_lr(m.trained_lr[0])}), "
                 f"0 decades {format_interval(m.trained_decades_ci, 1)}")
    else:
        text += (f"; it reaches {share} over {format_number(m.trained_decades, 1)} decades of lr "
                 f"{format_interval(m.trained_decades_ci, 1)} ({format_lr_range(m.trained_lr)})")
    text += f"; {m.diverged_points} of {m.points} points diverged"
    if m.seeds_max < 2:
        text += " (one seed per point: the intervals show no seed-to-seed variation, they are not evidence)"
    return text + "."


def _comparison_sentence(a: str, b: str, p: float | None, resamples: int) -> str:
    if p is None:
        return f"{a} vs {b}: not comparable (one of them has no learning-rate grid)."
    if p >= DECISIVE:
        return f"{a} is less lr-sensitive than {b}: P = {p:.2f} over {resamples} bootstrap resamples of the seeds."
    if p <= 1 - DECISIVE:
        return f"{b} is less lr-sensitive than {a}: P = {1 - p:.2f} over {resamples} bootstrap resamples of the seeds."
    return (f"The seeds do not separate {a} and {b}: P({a} less lr-sensitive than {b}) = {p:.2f} "
            f"(decisive would be >= {DECISIVE:.2f} or <= {1 - DECISIVE:.2f}).")


def verdict(robustness: Robustness, objective: str = "objective") -> Verdict:
    """One plain sentence per method with its numbers and intervals, then the pairwise
    probabilities; it states the result whichever way it falls."""
    r = robustness
    if r.initial_value is None or r.best_value is None:
        return Verdict("No completed or diverged trial yet: nothing to judge.", [], [], "")
    counted = sum(1 for p in r.points for _ in p.capped)
    threshold = r.progress_threshold
    better = "<=" if r.direction == MINIMIZE else ">="
    scale = (f"Scale: {objective} {format_value(r.initial_value)} before training ({r.initial_value_source}) "
             f"to {format_value(r.best_value)}, the best point of all methods (capped seed means over "
             f"{counted} runs); a point counts as trained when it reaches {100 * (1 - r.delta):.0f}% of that "
             f"progress ({objective} {better} {format_value(threshold)}). lr sensitivity = mean shortfall "
             f"from the best progress over a method's lr grid: 0 trains as well as the best at every lr, "
             f"1 makes no progress at any.")
    methods = [_method_sentence(m, r.delta) for m in r.methods.values()]
    ranked = sorted(((m.lr_sensitivity, m.method) for m in r.methods.values() if m.lr_sensitivity is not None),
                    key=lambda pair: pair[0])
    ranking = ("Ranked by lr sensitivity (least sensitive first): "
               + ", ".join(f"{name} {format_number(sens)}" for sens, name in ranked) + ".") if ranked else ""
    comparisons = [_comparison_sentence(c.a, c.b, c.p_a_less_sensitive, r.n_resamples) for c in r.comparisons]
    return Verdict(scale, methods, comparisons, ranking)


def text_table(columns: Sequence[tuple[str, str]], rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a fixed-width plain-text table (for terminals)."""
    cells = [[title for _, title in columns]] + [[str(row.get(key, "")) for key, _ in columns] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def summary_text(robustness: Robustness, study: str, objective: str) -> str:
    """``proxstudy summary --format table``: the verdict, then the per-method table."""
    v = verdict(robustness, objective)
    body = "\n".join(f"  {s}" for s in v.sentences if s)
    table = text_table(METRIC_COLUMNS, metrics_rows(robustness))
    return f"{study}: {objective} ({robustness.direction})\n{body}\n\n" + table


def trial_rows(
    records: Sequence[TrialRecord], param_names: Sequence[str] | None = None
) -> tuple[list[str], list[dict[str, Any]]]:
    """The trial table: column ids and one row per trial (JSON-able scalars only).

    ``param_names``: the parameter columns, where ``records`` are one page of a study whose
    other trials have more (default: every parameter of ``records``)."""
    param_names = sorted({k for r in records for k in r.params}) if param_names is None else list(param_names)
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

