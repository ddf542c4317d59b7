"""Plotly figures on hand-made records: traces, axis types, plotted values and marked cells."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest

from proxstudy.dashboards import figures as FG
from proxstudy.dashboards.data import build_study_data
from proxstudy.dashboards.metrics import compute_metrics
from proxstudy.dashboards.tables import table1
from proxstudy.study.records import TrialRecord, aggregate_points


def rec(number, method, params, seed, status="completed", value=None, seconds=1.0):
    losses = [2.0, 1.0, value] if value is not None else [2.0, None]
    return TrialRecord(number=number, method=method, params=dict(params), seed=seed, status=status,
                       value=value, train_loss=losses,
                       epoch_seconds=[0.0] + [seconds] * (len(losses) - 1))


@pytest.fixture()
def records():
    out, n = [], 0
    for seed in (0, 1):
        for lr, v in ((0.01, 0.4), (0.1, 0.1), (1.0, None)):
            out.append(rec(n, "bp", {"lr": lr}, seed, "diverged" if v is None else "completed",
                           None if v is None else v + 0.1 * seed, seconds=1.0))
            n += 1
        for cg in (1, 3):
            for tau in (0.05, 1.0):
                for lr in (0.01, 0.1, 1.0):
                    diverged = cg == 1 and tau == 1.0 and lr == 1.0
                    value = None if diverged else round(0.05 * cg + tau * lr + 0.01 * seed, 6)
                    out.append(rec(n, "pp", {"lr": lr, "tau_prox": tau, "cg_iterations": cg}, seed,
                                   "diverged" if diverged else "completed", value, seconds=2.0))
                    n += 1
    return out


def test_heatmap_facets_per_cg_and_marks_diverged_cells(records):
    points = aggregate_points(records)
    fig = FG.heatmap(points, "pp", "train_loss")
    heat = [t for t in fig.data if isinstance(t, go.Heatmap)]
    marks = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(heat) == 2 and len(marks) == 2  # cg1, cg3
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    assert list(heat[0].x) == ["0.01", "0.1", "1"] and list(heat[0].y) == ["0.05", "1"]
    # cg1, tau 1, lr 1 diverged: no colour, text "diverged", an x marker at that cell.
    assert heat[0].z[1][2] is None and heat[0].text[1][2] == "diverged"
    assert list(marks[0].x) == ["1"] and list(marks[0].y) == ["1"] and marks[0].marker.symbol == "x"
    assert len(marks[1].x) == 0
    # cg3, tau 0.05, lr 0.1: mean of 0.155 and 0.165 = 0.16; hover data mean/std/n.
    assert heat[1].z[0][1] == pytest.approx(0.16)
    assert list(heat[1].customdata[0][1]) == ["0.160", "5e-3", 2]
    # BackProp has no tau: one row labelled n/a, one facet.
    bp = FG.heatmap(points, "bp")
    assert len([t for t in bp.data if isinstance(t, go.Heatmap)]) == 1
    assert list(bp.data[0].y) == [FG.NO_TAU]


def test_robustness_curve_log_axis_best_row_and_band(records):
    points = aggregate_points(records)
    metrics = compute_metrics(points)
    fig = FG.robustness_curve(points, metrics, "train_loss")
    assert fig.layout.xaxis.type == "log"
    lines = {t.legendgroup: t for t in fig.data if t.mode == "lines+markers"}
    assert set(lines) == {"bp", "pp"}
    # bp: lr 0.01 -> mean 0.45, lr 0.1 -> 0.15, lr 1 diverged (gap).
    assert list(lines["bp"].x) == [0.01, 0.1, 1.0]
    assert lines["bp"].y[0] == pytest.approx(0.45) and lines["bp"].y[2] is None
    # pp's best: cg1, tau 0.05, lr 0.01 (0.05 + 0.0005 + 0.005 = 0.0555).
    assert metrics["pp"].best_params == {"lr": 0.01, "tau_prox": 0.05, "cg_iterations": 1}
    assert lines["pp"].y[0] == pytest.approx(0.0555)
    band_upper = next(t for t in fig.data if t.name == "bp seed max")
    band_lower = next(t for t in fig.data if t.name == "bp seed min")
    assert band_upper.y[0] == pytest.approx(0.5) and band_lower.y[0] == pytest.approx(0.4)
    assert fig.layout.yaxis.type == "log"  # positive losses span decades
    div = next(t for t in fig.data if t.name == "bp diverged")
    assert list(div.x) == [1.0] and div.marker.symbol == "x"


def test_table1_figure_shows_dash_for_diverged(records):
    points = aggregate_points(records)
    fig = FG.table1_figure(table1(points, records))
    t = fig.data[0]
    assert isinstance(t, go.Table)
    assert list(t.header.values) == ["method", "1", "0.1", "0.01"]
    assert next(iter(t.cells.values[0])) == "bp" and next(iter(t.cells.values[1])) == "-"


def test_training_curves_vs_epoch_and_seconds(records):
    points = aggregate_points(records)
    metrics = compute_metrics(points)
    by_epoch = FG.training_curves(records, metrics, "train_loss", "epoch")
    by_time = FG.training_curves(records, metrics, "train_loss", "seconds")
    assert len(by_epoch.data) == 2 and len(by_time.data) == 2
    bp = by_epoch.data[0]
    assert list(bp.x) == [0, 1, 2] and bp.y[2] == pytest.approx(0.15)
    assert list(by_time.data[0].x) == [0.0, 1.0, 2.0] and list(by_time.data[1].x) == [0.0, 2.0, 4.0]
    assert by_time.layout.xaxis.title.text == "wall-clock seconds"


def test_tunability_and_metrics_table_and_divergence(records):
    points = aggregate_points(records)
    metrics = compute_metrics(points, k_max=5)
    tun = FG.tunability_curve(metrics)
    assert [t.name for t in tun.data] == ["bp", "pp"]
    assert list(tun.data[0].x) == [1, 2, 3, 4, 5]
    assert list(tun.data[0].y) == pytest.approx(metrics["bp"].expected_best)
    table = FG.metrics_table_figure(metrics).data[0]
    assert list(table.cells.values[0]) == ["bp", "pp"]
    div = FG.divergence_view(points)
    bars = {t.name: t for t in div.data}
    # bp at lr 1: 2 of 2 seeds diverged; pp at lr 1: 2 of 8 seeds (cg1, tau 1, both seeds).
    assert list(bars["bp"].x) == ["0.01", "0.1", "1"] and list(bars["bp"].y) == [0, 0, 1]
    assert list(bars["pp"].y) == pytest.approx([0, 0, 0.25])
    assert div.layout.xaxis.type == "category"


def test_study_figures_cover_every_method(records):
    data = build_study_data("s", records)
    figs = FG.study_figures(data)
    assert {"heatmap:bp", "heatmap:pp", "robustness", "training_epoch", "training_seconds",
            "tunability", "divergence"} <= set(figs)
    assert all(isinstance(f, go.Figure) for f in figs.values())
    assert not math.isnan(data.metrics["bp"].expected_best[0])
