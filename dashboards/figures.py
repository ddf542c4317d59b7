"""Plotly figures of a robustness study: functions of records, points and metrics.

No Dash here, so the web app and the static report draw exactly the same figures. Text that
comes from the study (method names, parameter values) only ever goes into trace names, titles
and hover text, which Plotly renders as text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from proxstudy.dashboards.metrics import MINIMIZE, MethodMetrics, params_label, point_value
from proxstudy.dashboards.tables import Table1, format_lr, format_value, metrics_rows, METRIC_COLUMNS
from proxstudy.study.records import PARAM_CG, PARAM_LR, PARAM_TAU, PointSummary, TrialRecord

DIVERGED_COLOR = "#d62728"
METHOD_COLORS = plotly.colors.qualitative.Plotly
NO_TAU = "n/a"


def _methods(points: Sequence[PointSummary]) -> list[str]:
    seen: dict[str, None] = {}
    for p in points:
        seen.setdefault(p.method, None)
    return list(seen)


def _tau_label(tau) -> str:
    return NO_TAU if tau is None else f"{tau:.3g}"


def heatmap(
    points: Sequence[PointSummary], method: str, objective: str = "objective", direction: str = MINIMIZE
) -> go.Figure:
    """The objective over lr (x) x tau_prox (y) for one method, one facet per CG-iteration count.

    Cells are categorical (lr and tau labels in grid order). Diverged cells have no colour and
    carry a red "x" marker and the text "diverged"; hover shows mean, spread (population std
    over seeds) and n. Where other swept parameters exist, a cell shows the best point among
    those sharing its lr, tau_prox and cg_iterations.
    """
    pts = [p for p in points if p.method == method and (p.diverged or p.n > 0)]
    cgs = sorted({p.params.get(PARAM_CG) for p in pts}, key=lambda c: (c is None, c or 0))
    cgs = cgs or [None]
    titles = [f"cg_iterations={c}" if c is not None else method for c in cgs]
    fig = make_subplots(rows=1, cols=len(cgs), subplot_titles=titles, shared_yaxes=True)
    lrs = sorted({float(p.params[PARAM_LR]) for p in pts if PARAM_LR in p.params})
    taus = sorted({p.params.get(PARAM_TAU) for p in pts}, key=lambda t: (t is None, t or 0))
    xs = [format_lr(lr) for lr in lrs]
    ys = [_tau_label(t) for t in taus]
    better = (lambda a, b: a < b) if direction == MINIMIZE else (lambda a, b: a > b)
    for col, cg in enumerate(cgs, start=1):
        cell: dict[tuple[float, object], PointSummary] = {}
        for p in pts:
            if p.params.get(PARAM_CG) != cg or PARAM_LR not in p.params:
                continue
            key = (float(p.params[PARAM_LR]), p.params.get(PARAM_TAU))
            old = cell.get(key)
            if old is None or better(point_value(p, direction), point_value(old, direction)):
                cell[key] = p
        z, text, custom = [], [], []
        div_x, div_y = [], []
        for tau in taus:
            zr, tr, cr = [], [], []
            for lr in lrs:
                p = cell.get((lr, tau))
                if p is None:
                    value, label, hover = None, "", ["no data", "", 0]
                elif p.diverged:
                    value, label = None, "diverged"
                    hover = ["diverged", f"{p.n_diverged} of {p.n_diverged + p.n} seeds", p.n + p.n_diverged]
                    div_x.append(format_lr(lr))
                    div_y.append(_tau_label(tau))
                else:
                    value, label = p.mean, format_value(p.mean)
                    hover = [format_value(p.mean), format_value(p.std), p.n]
                zr.append(value)
                tr.append(label)
                cr.append(hover)
            z.append(zr)
            text.append(tr)
            custom.append(cr)
        fig.add_trace(
            go.Heatmap(
                x=xs, y=ys, z=z, text=text, customdata=custom,
                texttemplate="%{text}" if len(xs) <= 10 and len(ys) <= 12 else None,  # readable grids only
                colorscale="Viridis", reversescale=direction != MINIMIZE,
                colorbar={"title": {"text": objective}}, showscale=col == 1,
                name=f"{method} cg{cg}" if cg is not None else method,
                hovertemplate="lr=%{x}<br>tau_prox=%{y}<br>mean=%{customdata[0]}"
                "<br>spread (std)=%{customdata[1]}<br>n=%{customdata[2]}<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=div_x, y=div_y, mode="markers", name="diverged", showlegend=col == 1 and bool(div_x),
                marker={"symbol": "x", "size": 14, "color": DIVERGED_COLOR},
                hovertemplate="lr=%{x}<br>tau_prox=%{y}<br>diverged<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs, title_text="lr", row=1, col=col)
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=ys, row=1, col=col)
    fig.update_yaxes(title_text="tau_prox", row=1, col=1)
    fig.update_layout(title={"text": f"{method}: {objective} over lr x tau_prox"}, height=400,
                      margin={"t": 80}, legend={"orientation": "h", "x": 0, "y": -0.3})
    return fig


def best_row(points: Sequence[PointSummary], best_params: Mapping | None) -> list[PointSummary]:
    """A method's points sharing every parameter but lr with its best point, sorted by lr."""
    if not best_params:
        return []
    others = {k: v for k, v in best_params.items() if k != PARAM_LR}
    row = [
        p for p in points
        if PARAM_LR in p.params and {k: v for k, v in p.params.items() if k != PARAM_LR} == others
        and (p.diverged or p.n > 0)
    ]
    return sorted(row, key=lambda p: float(p.params[PARAM_LR]))


def robustness_curve(
    points: Sequence[PointSummary],
    metrics: Mapping[str, MethodMetrics],
    objective: str = "objective",
    direction: str = MINIMIZE,
) -> go.Figure:
    """Objective vs lr (log axis), one line per method at its best other parameters.

    The band spans the seeds (their min to max), which stays honest on the log y axis used for
    positive losses (losses span decades, as in the paper's Table 1; mean - std could be
    negative there). Diverged lrs break the line and show a red "x" at the top of the range.
    """
    fig = go.Figure()
    finite_all = [p.mean for p in points if not p.diverged and p.mean is not None]
    top = max(finite_all) if finite_all else 1.0
    for index, (method, m) in enumerate(metrics.items()):
        row = best_row([p for p in points if p.method == method], m.best_params)
        if not row:
            continue
        # One colour per method (as in the other figures); the invisible band traces would
        # otherwise consume colours of the cycle.
        color = METHOD_COLORS[index % len(METHOD_COLORS)]
        x = [float(p.params[PARAM_LR]) for p in row]
        y = [None if p.diverged or p.mean is None else p.mean for p in row]
        sd = [0.0 if p.std is None else p.std for p in row]
        label = method
        extra = params_label({k: v for k, v in (m.best_params or {}).items() if k != PARAM_LR})
        if extra:
            label += f" ({extra})"
        upper = [None if v is None else max(p.values) for v, p in zip(y, row)]
        lower = [None if v is None else min(p.values) for v, p in zip(y, row)]
        fig.add_trace(go.Scatter(x=x, y=upper, mode="lines", line={"width": 0}, showlegend=False,
                                 hoverinfo="skip", legendgroup=method, name=f"{method} seed max"))
        fig.add_trace(go.Scatter(x=x, y=lower, mode="lines", line={"width": 0}, fill="tonexty",
                                 fillcolor="rgba(100,100,100,0.15)", showlegend=False,
                                 hoverinfo="skip", legendgroup=method, name=f"{method} seed min"))
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines+markers", name=label, legendgroup=method, line={"color": color},
            customdata=[[format_value(v), format_value(s), p.n] for v, s, p in zip(y, sd, row)],
            hovertemplate="lr=%{x}<br>mean=%{customdata[0]}<br>std=%{customdata[1]}<br>n=%{customdata[2]}"
            "<extra>%{fullData.name}</extra>",
        ))
        dx = [float(p.params[PARAM_LR]) for p in row if p.diverged]
        if dx:
            fig.add_trace(go.Scatter(
                x=dx, y=[top] * len(dx), mode="markers", name=f"{method} diverged", legendgroup=method,
                marker={"symbol": "x", "size": 12, "color": DIVERGED_COLOR},
                hovertemplate="lr=%{x}<br>diverged<extra></extra>",
            ))
    fig.update_xaxes(type="log", title_text="lr", exponentformat="power")
    log_y = direction == MINIMIZE and bool(finite_all) and min(finite_all) > 0
    fig.update_yaxes(type="log" if log_y else "linear",
                     title_text=f"{objective} (mean over seeds; band: min-max)")
    fig.update_layout(title={"text": "Robustness: objective vs learning rate at each method's best other parameters"})
    return fig


def table1_figure(table: Table1, title: str = "Final training loss (Table 1 view)") -> go.Figure:
    """The paper's Table 1 as a go.Table ("-" marks diverged runs)."""
    header = ["method"] + [format_lr(lr) for lr in table.lrs]
    columns = [table.rows] + [[row[j] for row in table.cells] for j in range(len(table.lrs))]
    fig = go.Figure(go.Table(header={"values": header, "align": "center"},
                             cells={"values": columns, "align": ["left"] + ["center"] * len(table.lrs)}))
    fig.update_layout(title={"text": title}, height=120 + 30 * len(table.rows))
    return fig


def _series_of(record: TrialRecord, objective: str) -> list:
    series = getattr(record, objective, None)
    if isinstance(series, list) and series:
        return series
    return record.train_loss


def training_curves(
    records: Sequence[TrialRecord],
    metrics: Mapping[str, MethodMetrics],
    objective: str = "train_loss",
    x: str = "epoch",
) -> go.Figure:
    """Each method's best point: the per-epoch objective (mean over its seeds) vs epoch or seconds.

    ``x="seconds"`` uses cumulative epoch wall-clock seconds (mean over the seeds).
    """
    fig = go.Figure()
    for method, m in metrics.items():
        if m.best_params is None:
            continue
        target = tuple(sorted(m.best_params.items()))
        runs = [r for r in records if r.method == method and r.param_items == target and r.status == "completed"]
        if not runs:
            continue
        length = min(len(_series_of(r, objective)) for r in runs)
        ys, secs = [], []
        for e in range(length):
            vals = [_series_of(r, objective)[e] for r in runs]
            vals = [v for v in vals if v is not None]
            ys.append(sum(vals) / len(vals) if vals else None)
            ts = [sum(s or 0.0 for s in r.epoch_seconds[: e + 1]) for r in runs]
            secs.append(sum(ts) / len(ts))
        xs = list(range(length)) if x == "epoch" else secs
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers",
                                 name=f"{method} ({params_label(m.best_params)}, n={len(runs)})"))
    fig.update_xaxes(title_text="epoch" if x == "epoch" else "wall-clock seconds")
    fig.update_yaxes(title_text=objective)
    fig.update_layout(title={"text": f"Training curves of each method's best point vs {'epoch' if x == 'epoch' else 'seconds'}"})
    return fig


def metrics_table_figure(metrics: Mapping[str, MethodMetrics]) -> go.Figure:
    """The metrics table as a go.Table (the report's view; the app uses a DataTable)."""
    rows = metrics_rows(metrics)
    fig = go.Figure(go.Table(
        header={"values": [title for _, title in METRIC_COLUMNS]},
        cells={"values": [[r[key] for r in rows] for key, _ in METRIC_COLUMNS], "align": "left"},
    ))
    fig.update_layout(title={"text": "Robustness metrics"}, height=140 + 30 * len(rows))
    return fig


def tunability_curve(metrics: Mapping[str, MethodMetrics], objective: str = "objective") -> go.Figure:
    """Expected best objective after k random draws from each method's grid, k = 1..K."""
    fig = go.Figure()
    for method, m in metrics.items():
        ks = list(range(1, len(m.expected_best) + 1))
        fig.add_trace(go.Scatter(
            x=ks, y=m.expected_best, mode="lines+markers", name=method,
            customdata=m.p_all_diverged,
            hovertemplate="k=%{x}<br>expected best=%{y:.4g}<br>P(all k diverged)=%{customdata:.3g}<extra></extra>",
        ))
    fig.update_xaxes(title_text="k random draws from the method's grid", dtick=1 if any(len(m.expected_best) <= 20 for m in metrics.values()) else None)
    fig.update_yaxes(title_text=f"expected best {objective}")
    fig.update_layout(title={"text": "Tunability: expected best after k random draws (diverged = worst finite value)"})
    return fig


def divergence_view(points: Sequence[PointSummary]) -> go.Figure:
    """Share of diverged seeds per lr per method (over all of the method's other parameters)."""
    fig = go.Figure()
    lrs = sorted({float(p.params[PARAM_LR]) for p in points if PARAM_LR in p.params})
    for method in _methods(points):
        div: dict[float, int] = {}
        tot: dict[float, int] = {}
        for p in points:
            if p.method != method or PARAM_LR not in p.params:
                continue
            lr = float(p.params[PARAM_LR])
            div[lr] = div.get(lr, 0) + p.n_diverged
            tot[lr] = tot.get(lr, 0) + p.n_diverged + p.n
        xs = [format_lr(lr) for lr in lrs if tot.get(lr)]
        ys = [div[lr] / tot[lr] for lr in lrs if tot.get(lr)]
        fig.add_trace(go.Bar(x=xs, y=ys, name=method,
                             customdata=[[div[lr], tot[lr]] for lr in lrs if tot.get(lr)],
                             hovertemplate="lr=%{x}<br>%{customdata[0]} of %{customdata[1]} seeds diverged<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[format_lr(lr) for lr in lrs], title_text="lr")
    fig.update_yaxes(title_text="share of seeds diverged", range=[0, 1.05], tickformat=".0%")
    fig.update_layout(barmode="group", title={"text": "Divergence: share of diverged seeds per learning rate"})
    return fig


def study_figures(data) -> dict[str, go.Figure]:
    """Every figure of a study page, by id (``data``: dashboards.data.StudyData)."""
    figs: dict[str, go.Figure] = {}
    for method in _methods(data.points):
        figs[f"heatmap:{method}"] = heatmap(data.points, method, data.objective, data.direction)
    figs["robustness"] = robustness_curve(data.points, data.metrics, data.objective, data.direction)
    figs["training_epoch"] = training_curves(data.records, data.metrics, data.objective, "epoch")
    figs["training_seconds"] = training_curves(data.records, data.metrics, data.objective, "seconds")
    figs["tunability"] = tunability_curve(data.metrics, data.objective)
    figs["divergence"] = divergence_view(data.points)
    return figs

