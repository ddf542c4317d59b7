"""Robustness metrics on hand-made records, against values worked out by hand in the comments."""

from __future__ import annotations

import itertools
import math

import pytest

from proxstudy.dashboards.metrics import (
    MAXIMIZE,
    GoodRegion,
    compute_metrics,
    expected_best_of_k,
    median,
)
from proxstudy.dashboards.tables import format_lr, format_value, table1
from proxstudy.study.records import TrialRecord, aggregate_points


def rec(number, method, params, seed, status="completed", value=None, train_loss=None):
    return TrialRecord(number=number, method=method, params=dict(params), seed=seed, status=status,
                       value=value, train_loss=train_loss or ([2.0, value] if value is not None else []))


def hand_records():
    """Method A over lr (no tau), method B over lr at tau_prox=1 (see the test for the numbers)."""
    n = itertools.count()
    return [
        rec(next(n), "A", {"lr": 0.001}, 0, value=1.0), rec(next(n), "A", {"lr": 0.001}, 1, value=1.2),
        rec(next(n), "A", {"lr": 0.01}, 0, value=0.3), rec(next(n), "A", {"lr": 0.01}, 1, value=0.45),
        rec(next(n), "A", {"lr": 0.1}, 0, value=0.2), rec(next(n), "A", {"lr": 0.1}, 1, value=0.2),
        rec(next(n), "A", {"lr": 1.0}, 0, status="diverged"), rec(next(n), "A", {"lr": 1.0}, 1, value=0.1),
        rec(next(n), "B", {"lr": 0.01, "tau_prox": 1.0}, 0, value=0.35),
        rec(next(n), "B", {"lr": 0.1, "tau_prox": 1.0}, 0, value=0.25),
        rec(next(n), "B", {"lr": 1.0, "tau_prox": 1.0}, 0, value=0.3),
        rec(next(n), "B", {"lr": 10.0, "tau_prox": 1.0}, 0, status="failed"),
        rec(next(n), "B", {"lr": 100.0, "tau_prox": 1.0}, 0, status="running"),
    ]


def test_metrics_by_hand():
    m = compute_metrics(aggregate_points(hand_records()), k_max=3)
    a, b = m["A"], m["B"]
    # A: point means 1.1 (lr 1e-3), 0.375, 0.2, diverged (lr 1: a seed diverged, 0.1 ignored).
    assert a.n_points == 4 and a.n_diverged == 1
    assert a.best == pytest.approx(0.2) and a.best_params == {"lr": 0.1}
    assert a.median == pytest.approx((0.375 + 1.1) / 2)  # sorted 0.2, 0.375, 1.1, inf
    assert a.worst == math.inf and a.worst_finite == pytest.approx(1.1)
    assert a.divergence_rate == pytest.approx(0.25)
    # best of all methods = 0.2 -> good iff mean <= 0.4: A has 0.2 and 0.375.
    assert a.good_threshold == pytest.approx(0.4)
    assert a.good_share == pytest.approx(0.5)
    # good lrs around 0.1: 0.01 and 0.1 (1e-3 is bad, 1.0 diverged) -> one decade.
    assert a.lr_tolerance_decades == pytest.approx(1.0) and a.lr_good_range == (0.01, 0.1)
    # B: 0.35, 0.25, 0.3 (lr 10 failed and lr 100 running: not evaluated), all good -> 2 decades.
    assert b.n_points == 3 and b.divergence_rate == 0
    assert b.best == pytest.approx(0.25) and b.best_params == {"lr": 0.1, "tau_prox": 1.0}
    assert b.median == pytest.approx(0.3) and b.worst == pytest.approx(0.35)
    assert b.good_share == pytest.approx(1.0)
    assert b.lr_tolerance_decades == pytest.approx(2.0)
    # Tunability of A, diverged -> penalty = worst finite of all methods = 1.1:
    # values 0.2, 0.375, 1.1, 1.1; k=1 mean = 0.69375;
    # k=2: 0.2*(1-9/16) + 0.375*(9/16-4/16) + 1.1*(4/16-1/16) + 1.1*(1/16) = 0.4796875.
    assert a.expected_best[:2] == pytest.approx([0.69375, 0.4796875])
    assert a.p_all_diverged[:2] == pytest.approx([0.25, 0.0625])
    assert b.expected_best[0] == pytest.approx(0.3)


def test_good_region_factor_is_configurable():
    m = compute_metrics(aggregate_points(hand_records()), good=GoodRegion(factor=1.5))
    # threshold 0.3: A keeps only 0.2; B keeps 0.25 and 0.3 (lr 0.1, 1.0) -> one decade.
    assert m["A"].good_share == pytest.approx(0.25) and m["A"].lr_tolerance_decades == 0.0
    assert m["B"].good_share == pytest.approx(2 / 3) and m["B"].lr_tolerance_decades == pytest.approx(1.0)


def test_maximised_objective_uses_absolute_tolerance():
    recs = [
        rec(0, "A", {"lr": 0.01}, 0, value=0.90), rec(1, "A", {"lr": 0.1}, 0, value=0.895),
        rec(2, "A", {"lr": 1.0}, 0, value=0.88), rec(3, "B", {"lr": 0.1}, 0, status="diverged"),
        rec(4, "B", {"lr": 0.01}, 0, value=0.5),
    ]
    m = compute_metrics(aggregate_points(recs), direction=MAXIMIZE, k_max=2)
    assert m["A"].best == pytest.approx(0.90) and m["A"].good_threshold == pytest.approx(0.89)
    assert m["A"].good_share == pytest.approx(2 / 3)
    assert m["A"].lr_tolerance_decades == pytest.approx(1.0)
    assert m["B"].best == pytest.approx(0.5) and m["B"].worst == -math.inf
    # B: values 0.5 and diverged -> penalty = the worst finite of all = 0.5: E = 0.5 for any k.
    assert m["B"].expected_best == pytest.approx([0.5, 0.5])
    assert m["B"].divergence_rate == pytest.approx(0.5)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_expected_best_matches_enumeration(direction):
    values = [0.7, 0.1, 0.4, 0.4, 2.5]
    exact, _ = expected_best_of_k(values, 3, direction)
    pick = min if direction == "minimize" else max
    for k in (1, 2, 3):
        draws = list(itertools.product(values, repeat=k))
        assert exact[k - 1] == pytest.approx(sum(pick(d) for d in draws) / len(draws), rel=1e-12)


def test_expected_best_without_penalty_is_infinite_when_a_point_diverged():
    exp, p_all = expected_best_of_k([0.1, math.inf], 2)
    assert exp == [math.inf, math.inf] and p_all == pytest.approx([0.5, 0.25])


def test_median_with_infinities():
    assert median([1.0, math.inf, math.inf]) == math.inf
    assert median([1.0, 3.0]) == 2.0


@pytest.mark.parametrize(
    "value, text",
    [(77.9, "77.9"), (94.71, "94.7"), (0.079, "0.079"), (1.481, "1.481"), (0.031, "0.031"),
     (0.002, "2e-3"), (0.0003, "3e-4"), (None, "-"), (math.inf, "-"), (math.nan, "-"), (0.0, "0")],
)
def test_format_value_like_the_paper(value, text):
    assert format_value(value) == text


def test_format_lr():
    assert [format_lr(x) for x in (50, 0.5, 0.05, 5e-3, 5e-4)] == ["50", "0.5", "0.05", "5e-3", "5e-4"]


def test_table1_rows_per_cg_variant_with_diverged_marks():
    recs = [
        rec(0, "bp", {"lr": 0.1}, 0, value=0.5, train_loss=[2.0, 0.524]),
        rec(1, "bp", {"lr": 1.0}, 0, status="diverged", train_loss=[2.0, None]),
        rec(2, "pp", {"lr": 0.1, "tau_prox": 0.05, "cg_iterations": 3}, 0, value=1.0, train_loss=[2.0, 1.029]),
        rec(3, "pp", {"lr": 1.0, "tau_prox": 0.05, "cg_iterations": 3}, 0, value=0.002, train_loss=[2.0, 0.002]),
        rec(4, "pp", {"lr": 1.0, "tau_prox": 0.05, "cg_iterations": 3}, 1, value=0.004, train_loss=[2.0, 0.004]),
        # a worse tau for cg3: not the row's tau, so not shown
        rec(5, "pp", {"lr": 1.0, "tau_prox": 5.0, "cg_iterations": 3}, 0, value=0.9, train_loss=[2.0, 0.9]),
        rec(6, "pp", {"lr": 1.0, "tau_prox": 0.05, "cg_iterations": 1}, 0, value=0.667, train_loss=[2.0, 0.667]),
    ]
    t = table1(aggregate_points(recs), recs)
    assert t.lrs == [1.0, 0.1]
    assert t.rows == ["bp", "pp cg1 (tau_prox=0.05)", "pp cg3 (tau_prox=0.05)"]
    assert t.cells == [["-", "0.524"], ["0.667", ""], ["3e-3", "1.029"]]
