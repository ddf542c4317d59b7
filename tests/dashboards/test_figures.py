"""Plotly figures on hand-made records: traces, axis types, plotted values and marked cells."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest

from proxstudy.dashboards import figures as FG
from proxstudy.dashboards.data import build_study_data
from proxstudy.dashboards.metrics import compute_robustness
from proxstudy.dashboards.tables import table1
from proxstudy.study.records import TrialRecord, aggregate_points


def rec(number, method, params, seed, status="completed", value=None, seconds=1.0):
    losses = [2.0, 1.0, value] if value is not None else [2.0, None]
    return TrialRecord(number=number, method=method, params=dict(params), seed=seed, status=status,
                       value=value, train_loss=losses, intermediate={0: 2.0},
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


def test_heatmap_log_colour_facets_per_cg_and_marks_diverged_cells(records):
    r = compute_robustness(records)
    fig = FG.heatmap(r, "pp", "train_loss")
    heat = [t for t in fig.data if isinstance(t, go.Heatmap)]
    marks = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert len(heat) == 2 and len(marks) == 2  # cg1, cg3
    assert fig.layout.xaxis.type == "category" and fig.layout.yaxis.type == "category"
    assert list(heat[0].x) == ["0.01", "0.1", "1"] and list(heat[0].y) == ["0.05", "1"]
    # cg1, tau 1, lr 1 diverged in both seeds: coloured as l0 = 2 (log10 2), text 2.000, an x marker.
    assert heat[0].z[1][2] == pytest.approx(math.log10(2.0)) and heat[0].text[1][2] == "2.000"
    assert list(marks[0].x) == ["1"] and list(marks[0].y) == ["1"] and marks[0].marker.symbol == "x"
    assert len(marks[1].x) == 0
    # cg3, tau 0.05, lr 0.1: mean of 0.155 and 0.165 = 0.16, on the log colour scale.
    assert heat[1].z[0][1] == pytest.approx(math.log10(0.16))
    assert list(heat[1].customdata[0][1])[:5] == ["0.160", "0.160", "0.155 to 0.165", 2, 0]
    # One colour range for the study, l* to l0, with tick labels in real units.
    assert heat[0].zmin == pytest.approx(math.log10(r.best_value)) and heat[0].zmax == pytest.approx(math.log10(2.0))
    bar = heat[0].colorbar
    # l* = 0.0555 (pp, cg1, tau 0.05, lr 0.01): ticks 0.0555 (the end), 0.1, 0.2, 0.5, 1, 2.
    assert [10 ** v for v in bar.tickvals] == pytest.approx([r.best_value, 0.1, 0.2, 0.5, 1.0, 2.0])
    assert list(bar.ticktext) == ["0.056", "0.100", "0.200", "0.500", "1.000", "2.000"]
    # BackProp has no tau: one row labelled n/a, one facet.
    bp = FG.heatmap(r, "bp")
    assert len([t for t in bp.data if isinstance(t, go.Heatmap)]) == 1
    assert list(bp.data[0].y) == [FG.NO_TAU]


def test_one_blown_up_cell_does_not_saturate_the_colour_scale():
    recs = [rec(i, "m", {"lr": lr}, 0, value=v) for i, (lr, v) in enumerate(((0.01, 0.5), (0.1, 0.05), (1.0, 73.0)))]
    heat = FG.heatmap(compute_robustness(recs), "m").data[0]
    assert heat.z[0][2] == pytest.approx(math.log10(2.0))  # 73 is capped at the value before training
    assert heat.z[0][1] - heat.zmin == pytest.approx(0.0) and heat.zmax == pytest.approx(math.log10(2.0))


def test_lr_curves_at_the_most_robust_setting_with_seed_bands(records):
    r = compute_robustness(records)
    fig = FG.lr_curves(r, "train_loss")
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    lines = {t.legendgroup: t for t in fig.data if t.mode == "lines+markers"}
    assert set(lines) == {"bp", "pp"}
    # bp: lr 0.01 -> seeds 0.4, 0.5 (median 0.45), lr 0.1 -> 0.15, lr 1 diverged -> capped at l0 = 2.
    assert list(lines["bp"].x) == [0.01, 0.1, 1.0]
    assert list(lines["bp"].y) == pytest.approx([0.45, 0.15, 2.0])
    band_upper = next(t for t in fig.data if t.name == "bp seed max")
    band_lower = next(t for t in fig.data if t.name == "bp seed min")
    assert band_upper.y[0] == pytest.approx(0.5) and band_lower.y[0] == pytest.approx(0.4)
    div = next(t for t in fig.data if t.name == "bp diverged")
    assert list(div.x) == [1.0] and div.marker.symbol == "x"
    # pp is drawn at its most robust setting, named in the legend.
    pp = r.methods["pp"].sensitivity_params
    assert lines["pp"].name == f"pp ({FG.params_label(pp)})"
    # Reference lines: before training (2.0) and the trained threshold.
    before = next(t for t in fig.data if t.name == "before training (no progress)")
    trained = next(t for t in fig.data if t.name.startswith("trained: 90%"))
    assert list(before.y) == [2.0, 2.0] and list(before.x) == [0.01, 1.0]
    assert list(trained.y) == pytest.approx([r.progress_threshold] * 2) and trained.line.dash == "dash"


def test_sensitivity_bars_with_interval_error_bars(records):
    r = compute_robustness(records)
    fig = FG.sensitivity_bars(r)
    bars = {t.name: t for t in fig.data}
    assert set(bars) == {"bp", "pp"}
    for name, bar in bars.items():
        m = r.methods[name]
        assert bar.y[0] == pytest.approx(m.lr_sensitivity)
        assert bar.error_y.array[0] == pytest.approx(m.lr_sensitivity_ci[1] - m.lr_sensitivity)
        assert bar.error_y.arrayminus[0] == pytest.approx(m.lr_sensitivity - m.lr_sensitivity_ci[0])
    assert list(fig.layout.yaxis.range) == [0, 1.05]


def test_table1_figure_shows_dash_for_diverged(records):
    points = aggregate_points(records)
    fig = FG.table1_figure(table1(points, records))
    t = fig.data[0]
    assert isinstance(t, go.Table)
    assert list(t.header.values) == ["method", "1", "0.1", "0.01"]
    assert next(iter(t.cells.values[0])) == "bp" and next(iter(t.cells.values[1])) == "-"


def test_training_curves_vs_epoch_and_seconds(records):
    r = compute_robustness(records)
    by_epoch = FG.training_curves(records, r, "train_loss", "epoch")
    by_time = FG.training_curves(records, r, "train_loss", "seconds")
    assert len(by_epoch.data) == 2 and len(by_time.data) == 2
    bp = by_epoch.data[0]
    assert list(bp.x) == [0, 1, 2] and bp.y[2] == pytest.approx(0.15)
    assert list(by_time.data[0].x) == [0.0, 1.0, 2.0] and list(by_time.data[1].x) == [0.0, 2.0, 4.0]
    assert by_time.layout.xaxis.title.text == "wall-clock seconds"


def test_tunability_on_log_axes_and_metrics_table_and_divergence(records):
    points = aggregate_points(records)
    r = compute_robustness(records, k_max=5)
    tun = FG.tunability_curve(r)
    assert [t.name for t in tun.data] == ["bp", "pp"]
    assert list(tun.data[0].x) == [1, 2, 3, 4, 5]
    assert list(tun.data[0].y) == pytest.approx(r.methods["bp"].expected_best)
    assert tun.layout.xaxis.type == "log" and tun.layout.yaxis.type == "log"
    table = FG.metrics_table_figure(r).data[0]
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
    assert {"heatmap:bp", "heatmap:pp", "sensitivity", "robustness", "training_epoch", "training_seconds",
            "tunability", "divergence"} <= set(figs)
    assert all(isinstance(f, go.Figure) for f in figs.values())
    assert not math.isnan(data.metrics.methods["bp"].expected_best[0])


def test_colour_bar_ticks_thin_out_over_many_decades():
    vals, text = FG._log_ticks(math.log10(2e-4), math.log10(2.3))
    # one tick per decade (1e-3 ... 1) plus the two ends, labelled in real units
    assert text == ["2e-4", "1e-3", "0.010", "0.100", "1.000", "2.300"]
    assert vals == sorted(vals)


def _texts_in(fig: go.Figure) -> list[str]:
    """Every text Plotly renders from a figure: trace names, x categories, hover data, titles."""
    out = []
    for trace in fig.data:
        out.append(str(getattr(trace, "name", "") or ""))
        if isinstance(trace, go.Bar):
            out += [str(x) for x in trace.x]
    out.append(str(fig.layout.title.text or ""))
    out += [str(a.text) for a in fig.layout.annotations]
    return out


def test_method_names_with_markup_are_escaped_in_every_figure(records):
    markup = "<b>X</b><br>"
    renamed = [TrialRecord(**{**r.__dict__, "method": markup if r.method == "pp" else r.method}) for r in records]
    figs = FG.study_figures(build_study_data("s", renamed))
    texts = [t for fig in figs.values() for t in _texts_in(fig)]
    assert any("&lt;b&gt;X&lt;/b&gt;&lt;br&gt;" in t for t in texts)
    assert not any("<b>X" in t for t in texts)  # nothing from the study reaches Plotly as markup
    assert FG.plot_text("a & <i>b</i>") == "a &amp; &lt;i&gt;b&lt;/i&gt;"


def test_a_view_that_cannot_be_drawn_says_so_and_the_others_are_drawn(records, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("no <b>such</b> data")

    monkeypatch.setattr(FG, "tunability_curve", broken)
    figs = FG.study_figures(build_study_data("s", records))
    title = figs["tunability"].layout.title.text
    assert title.startswith("tunability: cannot be drawn") and "&lt;b&gt;such" in title
    assert len(figs["sensitivity"].data) == 2  # the other views are unaffected
