"""Plotly figures of a robustness study: functions of records, points and the robustness analysis.

No Dash here, so the web app and the static report draw exactly the same figures. Text that
comes from the study (method names, parameter values) goes into trace names, titles, tick
labels and hover text, where Plotly reads a subset of HTML (``<b>``, ``<br>``, ``<a>``); every
such text passes through :func:`plot_text` first, so it shows literally.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Callable, Sequence
from typing import Any

import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from proxstudy.dashboards.metrics import MINIMIZE, PointRobustness, Robustness, params_label
from proxstudy.dashboards.tables import METRIC_COLUMNS, Table1, format_lr, format_value, metrics_rows
from proxstudy.study.records import (
    EPOCH_SERIES,
    PARAM_CG,
    PARAM_LR,
    PARAM_TAU,
    STATUS_COMPLETED,
    PointSummary,
    TrialRecord,
)

DIVERGED_COLOR = "#d62728"
METHOD_COLORS = plotly.colors.qualitative.Plotly
NO_TAU = "n/a"


def plot_text(text: object) -> str:
    """Text from the study as Plotly shows it literally: ``<``, ``>`` and ``&`` as entities
    (Plotly turns entities back into the characters, and reads tags only before that)."""
    return html.escape(str(text), quote=False)


def _methods(points: Sequence[PointSummary]) -> list[str]:
    seen: dict[str, None] = {}
    for p in points:
        seen.setdefault(p.method, None)
    return list(seen)


def _tau_label(tau) -> str:
    return NO_TAU if tau is None else f"{tau:.3g}"


def _log_scale(robustness: Robustness) -> bool:
    """Capped values go on log axes when they are positive losses (they span decades)."""
    values = [p.value for p in robustness.points]
    return robustness.direction == MINIMIZE and bool(values) and min(values) > 0


def _log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Colour-bar ticks for log10 values (1-2-5 steps per decade over at most two decades, one
    per decade beyond), labelled in real units; the range's ends are labelled too."""
    vals, text = [], []
    mantissas = (1, 2, 5) if hi - lo <= 2 else (1,)  # at most about a dozen labels
    for exponent in range(math.floor(lo) - 1, math.ceil(hi) + 1):
        for mantissa in mantissas:
            v = mantissa * 10.0**exponent
            if lo - 1e-9 <= math.log10(v) <= hi + 1e-9:
                vals.append(math.log10(v))
                text.append(format_value(v))
    for end in (lo, hi):  # the ends: the best point of the study and the value before training
        if all(abs(end - v) > 0.15 for v in vals):
            vals.append(end)
            text.append(format_value(10**end))
    order = sorted(range(len(vals)), key=vals.__getitem__)
    return [vals[i] for i in order], [text[i] for i in order]


def heatmap(robustness: Robustness, method: str, objective: str = "objective") -> go.Figure:
    """Capped values over lr (x) x tau_prox (y) for one method, one facet per CG-iteration count.

    Colour: the point's value v (mean of its seeds' capped values) on a log scale for positive
    losses (log10 values, colour-bar ticks in real units), one range for every method of the
    study (from the best point of all methods to the value before training), so one blown-up
    run cannot wash out the rest and methods compare by colour. A cell where any seed diverged
    keeps its colour (diverged seeds count as the value before training) and carries a red
    "x". Hover: v, median and range over seeds, completed/diverged seeds, progress q. Where
    other swept parameters exist, a cell shows the best point sharing its lr, tau and cg.
    """
    r = robustness
    with_lr = [(lr, p) for p in r.method_points(method) if (lr := p.lr) is not None]
    pts = [p for _, p in with_lr]
    log = _log_scale(r)
    cgs = sorted({p.params.get(PARAM_CG) for p in pts}, key=lambda c: (c is None, c or 0)) or [None]
    titles = [f"cg_iterations={c}" if c is not None else plot_text(method) for c in cgs]
    fig = make_subplots(rows=1, cols=len(cgs), subplot_titles=titles, shared_yaxes=True)
    lrs = sorted({lr for lr, _ in with_lr})
    taus = sorted({p.params.get(PARAM_TAU) for p in pts}, key=lambda t: (t is None, t or 0))
    xs = [format_lr(lr) for lr in lrs]
    ys = [_tau_label(t) for t in taus]
    sign = 1.0 if r.direction == MINIMIZE else -1.0
    ends = [v for v in (r.initial_value, r.best_value) if v is not None]
    zmin: float | None
    zmax: float | None
    if log and ends:
        zmin, zmax = math.log10(min(ends)), math.log10(max(ends))
        tickvals, ticktext = _log_ticks(zmin, zmax)
        colorbar = {"title": {"text": f"{objective} (log)"}, "tickvals": tickvals, "ticktext": ticktext}
    else:
        zmin, zmax = (min(ends), max(ends)) if ends else (None, None)
        colorbar = {"title": {"text": objective}}
    if zmin is not None and zmin == zmax:
        zmin, zmax = None, None
    for col, cg in enumerate(cgs, start=1):
        cell: dict[tuple[float, object], PointRobustness] = {}
        for point_lr, p in with_lr:
            if p.params.get(PARAM_CG) != cg:
                continue
            key = (point_lr, p.params.get(PARAM_TAU))
            if key not in cell or sign * p.value < sign * cell[key].value:
                cell[key] = p
        z, text, custom, div_x, div_y = [], [], [], [], []
        for tau in taus:
            zr: list[float | None] = []
            tr: list[str] = []
            cr: list[list[Any]] = []
            for lr in lrs:
                here = cell.get((lr, tau))
                if here is None:
                    zr.append(None)
                    tr.append("")
                    cr.append(["no data", "", "", 0, 0, ""])
                    continue
                zr.append(math.log10(here.value) if log else here.value)
                tr.append(format_value(here.value))
                cr.append([format_value(here.value), format_value(here.seed_median),
                           f"{format_value(min(here.capped))} to {format_value(max(here.capped))}",
                           here.n_completed, here.n_diverged, f"{here.progress:.2f}"])
                if here.diverged:
                    div_x.append(format_lr(lr))
                    div_y.append(_tau_label(tau))
            z.append(zr)
            text.append(tr)
            custom.append(cr)
        fig.add_trace(
            go.Heatmap(
                x=xs, y=ys, z=z, text=text, customdata=custom, zmin=zmin, zmax=zmax,
                texttemplate="%{text}" if len(xs) <= 10 and len(ys) <= 12 else None,  # readable grids only
                colorscale="Viridis", reversescale=r.direction != MINIMIZE,
                colorbar=colorbar, showscale=col == 1,
                name=plot_text(f"{method} cg{cg}" if cg is not None else method),
                hovertemplate="lr=%{x}<br>tau_prox=%{y}<br>capped mean=%{customdata[0]}"
                "<br>seed median=%{customdata[1]}<br>seed range=%{customdata[2]}"
                "<br>completed=%{customdata[3]}, diverged=%{customdata[4]}<br>progress q=%{customdata[5]}"
                "<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=div_x, y=div_y, mode="markers", name="a seed diverged", showlegend=col == 1 and bool(div_x),
                marker={"symbol": "x", "size": 14, "color": DIVERGED_COLOR},
                hovertemplate="lr=%{x}<br>tau_prox=%{y}<br>a seed diverged<extra></extra>",
            ),
            row=1, col=col,
        )
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=xs, title_text="lr", row=1, col=col)
        fig.update_yaxes(type="category", categoryorder="array", categoryarray=ys, row=1, col=col)
    fig.update_yaxes(title_text="tau_prox", row=1, col=1)
    fig.update_layout(title={"text": f"{plot_text(method)}: capped {objective} over lr x tau_prox (mean over seeds)"},
                      height=400, margin={"t": 80}, legend={"orientation": "h", "x": 0, "y": -0.3})
    return fig


def lr_curves(robustness: Robustness, objective: str = "objective") -> go.Figure:
    """Capped values vs lr (log axis), one line per method at its most robust setting.

    The line is the median over seeds, the band their range (min to max), both of capped
    values, so a blown-up seed cannot leave the plot. A red "x" marks lrs where a seed
    diverged. Dotted: the value before training (no progress); dashed: the trained threshold
    (the best progress of all methods times 1 - delta).
    """
    r = robustness
    fig = go.Figure()
    for index, (method, m) in enumerate(r.methods.items()):
        if m.sensitivity_params is None:
            continue
        at_theta = sorted(((lr, p) for p in r.method_points(method)
                           if (lr := p.lr) is not None and p.theta == m.sensitivity_params), key=lambda pair: pair[0])
        if not at_theta:
            continue
        row = [p for _, p in at_theta]
        color = METHOD_COLORS[index % len(METHOD_COLORS)]
        x = [lr for lr, _ in at_theta]
        label = method
        extra = params_label(m.sensitivity_params)
        if extra:
            label += f" ({extra})"
        label = plot_text(label)
        fig.add_trace(go.Scatter(x=x, y=[max(p.capped) for p in row], mode="lines", line={"width": 0},
                                 showlegend=False, hoverinfo="skip", legendgroup=method,
                                 name=plot_text(f"{method} seed max")))
        fig.add_trace(go.Scatter(x=x, y=[min(p.capped) for p in row], mode="lines", line={"width": 0},
                                 fill="tonexty", fillcolor=_rgba(color, 0.18), showlegend=False,
                                 hoverinfo="skip", legendgroup=method, name=plot_text(f"{method} seed min")))
        fig.add_trace(go.Scatter(
            x=x, y=[p.seed_median for p in row], mode="lines+markers", name=label, legendgroup=method,
            line={"color": color},
            customdata=[[format_value(p.value), f"{p.progress:.2f}", p.n_completed, p.n_diverged] for p in row],
            hovertemplate="lr=%{x}<br>seed median=%{y:.4g}<br>capped mean=%{customdata[0]}"
            "<br>progress q=%{customdata[1]}<br>completed=%{customdata[2]}, diverged=%{customdata[3]}"
            "<extra>%{fullData.name}</extra>",
        ))
        dx = [p for p in row if p.diverged]
        if dx:
            fig.add_trace(go.Scatter(
                x=[p.lr for p in dx], y=[p.seed_median for p in dx], mode="markers",
                name=plot_text(f"{method} diverged"),
                legendgroup=method, marker={"symbol": "x", "size": 12, "color": DIVERGED_COLOR},
                hovertemplate="lr=%{x}<br>%{customdata} seed(s) diverged<extra></extra>",
                customdata=[p.n_diverged for p in dx],
            ))
    log = _log_scale(r)
    lrs = [p.lr for p in r.points if p.lr is not None]
    trained_text = f"trained: {100 * (1 - r.delta):.0f}% of the best progress"
    for value, dash, text in ((r.initial_value, "dot", "before training (no progress)"),
                              (r.progress_threshold, "dash", trained_text)):
        if lrs and value is not None and (value > 0 or not log):
            fig.add_trace(go.Scatter(x=[min(lrs), max(lrs)], y=[value, value], mode="lines", name=text,
                                     line={"dash": dash, "color": "#555", "width": 1.5},
                                     hovertemplate=f"{text}: {format_value(value)}<extra></extra>"))
    fig.update_xaxes(type="log", title_text="lr", exponentformat="power")
    fig.update_yaxes(type="log" if log else "linear",
                     title_text=f"capped {objective} (line: seed median; band: seed range)")
    fig.update_layout(title={"text": "Capped objective vs learning rate at each method's most robust setting"})
    return fig


def sensitivity_bars(robustness: Robustness) -> go.Figure:
    """lr sensitivity per method (0 = as good as the best everywhere, 1 = no progress) with its
    95% bootstrap interval as error bars."""
    methods = [(m.lr_sensitivity, m) for m in robustness.methods.values() if m.lr_sensitivity is not None]
    fig = go.Figure()
    for index, (sens, m) in enumerate(methods):
        lo, hi = m.lr_sensitivity_ci or (sens, sens)
        fig.add_trace(go.Bar(
            x=[plot_text(m.method)], y=[sens], name=plot_text(m.method),
            marker={"color": METHOD_COLORS[index % len(METHOD_COLORS)]},
            error_y={"type": "data", "symmetric": False, "array": [hi - sens],
                     "arrayminus": [sens - lo], "thickness": 2, "width": 10},
            text=[f"{sens:.2f}"], textposition="inside", insidetextanchor="middle",
            customdata=[[f"{lo:.2f}", f"{hi:.2f}",
                         plot_text(params_label(m.sensitivity_params) or "(no other parameter)")]],
            hovertemplate="%{x}<br>lr sensitivity %{y:.3f}<br>95% CI [%{customdata[0]}, %{customdata[1]}]"
            "<br>at %{customdata[2]}<extra></extra>",
        ))
    fig.update_yaxes(title_text="lr sensitivity (mean shortfall from the best progress)", range=[0, 1.05])
    fig.update_layout(showlegend=False, title={"text": "lr sensitivity per method (95% bootstrap interval over seeds)"})
    return fig


def _rgba(color: str, alpha: float) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(color)
    return f"rgba({red},{green},{blue},{alpha})"


def table1_figure(table: Table1, title: str = "Final training loss (Table 1 view)") -> go.Figure:
    """The paper's Table 1 as a go.Table ("-" marks diverged runs)."""
    header = ["method"] + [format_lr(lr) for lr in table.lrs]
    columns = [[plot_text(row) for row in table.rows]]
    columns += [[row[j] for row in table.cells] for j in range(len(table.lrs))]
    fig = go.Figure(go.Table(header={"values": header, "align": "center"},
                             cells={"values": columns, "align": ["left"] + ["center"] * len(table.lrs)}))
    fig.update_layout(title={"text": title}, height=120 + 30 * len(table.rows))
    return fig


def _series_of(record: TrialRecord, objective: str) -> list:
    series = getattr(record, objective, None) if objective in EPOCH_SERIES else None
    if isinstance(series, list) and series:
        return series
    return record.train_loss


def training_curves(
    records: Sequence[TrialRecord],
    robustness: Robustness,
    objective: str = "train_loss",
    x: str = "epoch",
) -> go.Figure:
    """Each method's best point: the per-epoch objective (mean over its seeds) vs epoch or seconds.

    ``x="seconds"`` uses cumulative epoch wall-clock seconds (mean over the seeds).
    """
    fig = go.Figure()
    for method, m in robustness.methods.items():
        if m.best_params is None:
            continue
        target = m.best_params  # dict equality: the same point as equal param_items, without a sort per trial
        runs = [r for r in records if r.method == method and r.status == STATUS_COMPLETED and r.params == target]
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
                                 name=plot_text(f"{method} ({params_label(m.best_params)}, n={len(runs)})")))
    fig.update_xaxes(title_text="epoch" if x == "epoch" else "wall-clock seconds")
    fig.update_yaxes(title_text=objective)
    axis = "epoch" if x == "epoch" else "seconds"
    fig.update_layout(title={"text": f"Training curves of each method's best point vs {axis}"})
    return fig


def metrics_table_figure(robustness: Robustness) -> go.Figure:
    """The metrics table as a go.Table (the app shows the same rows in a DataTable)."""
    rows = metrics_rows(robustness)
    fig = go.Figure(go.Table(
        header={"values": [title for _, title in METRIC_COLUMNS]},
        cells={"values": [[r[key] for r in rows] for key, _ in METRIC_COLUMNS], "align": "left"},
    ))
    fig.update_layout(title={"text": "Robustness metrics"}, height=140 + 30 * len(rows))
    return fig


def tunability_curve(robustness: Robustness, objective: str = "objective") -> go.Figure:
    """Expected best capped value after k random draws from each method's grid (Dodge et al.
    2019), on log axes: the differences that matter sit in the first decade of k and, for
    losses, in the decades of the objective."""
    fig = go.Figure()
    k_max = 0
    for index, (method, m) in enumerate(robustness.methods.items()):
        ks = list(range(1, len(m.expected_best) + 1))
        k_max = max(k_max, len(ks))
        fig.add_trace(go.Scatter(
            x=ks, y=m.expected_best, mode="lines+markers", name=plot_text(method),
            line={"color": METHOD_COLORS[index % len(METHOD_COLORS)]},
            hovertemplate="k=%{x}<br>expected best=%{y:.4g}<extra>%{fullData.name}</extra>",
        ))
    fig.update_xaxes(type="log", title_text="k random draws from the method's grid")
    fig.update_yaxes(type="log" if _log_scale(robustness) else "linear",
                     title_text=f"expected best capped {objective}")
    fig.update_layout(title={"text": "Tunability: expected best after k random draws "
                                     "(diverged runs count as untrained)"})
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
        fig.add_trace(go.Bar(x=xs, y=ys, name=plot_text(method),
                             customdata=[[div[lr], tot[lr]] for lr in lrs if tot.get(lr)],
                             hovertemplate="lr=%{x}<br>%{customdata[0]} of %{customdata[1]} seeds diverged"
                             "<extra></extra>"))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[format_lr(lr) for lr in lrs],
                     title_text="lr")
    fig.update_yaxes(title_text="share of seeds diverged", range=[0, 1.05], tickformat=".0%")
    fig.update_layout(barmode="group", title={"text": "Divergence: share of diverged seeds per learning rate"})
    return fig


def study_figures(data) -> dict[str, go.Figure]:
    """Every figure of a study page, by id (``data``: dashboards.data.StudyData)."""
    r: Robustness = data.metrics
    builders: dict[str, Callable[[], go.Figure]] = {
        "sensitivity": lambda: sensitivity_bars(r),
        "robustness": lambda: lr_curves(r, data.objective),
    }
    for method in _methods(data.points):
        builders[f"heatmap:{method}"] = functools.partial(heatmap, r, method, data.objective)
    builders["training_epoch"] = lambda: training_curves(data.records, r, data.objective, "epoch")
    builders["training_seconds"] = lambda: training_curves(data.records, r, data.objective, "seconds")
    builders["tunability"] = lambda: tunability_curve(r, data.objective)
    builders["divergence"] = lambda: divergence_view(data.points)
    return {key: _drawn(key, build) for key, build in builders.items()}


def _drawn(key: str, build: Callable[[], go.Figure]) -> go.Figure:
    """The figure, or an empty one whose title says it could not be drawn: a study written by
    another tool can hold data no view expects, and the other views must still be shown."""
    try:
        return build()
    except Exception as exc:  # shown in the figure's place, never an error page
        fig = go.Figure()
        fig.update_layout(title={"text": plot_text(f"{key}: cannot be drawn from this study's data "
                                                   f"({type(exc).__name__}: {str(exc)[:200]})")})
        return fig
