"""Robustness metrics on hand-made records, against values worked out by hand in the comments."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from proxstudy.dashboards.metrics import (
    MAXIMIZE,
    SOURCE_WORST_FINAL,
    compute_robustness,
    expected_best_of_k,
    median,
    picks,
    summary_document,
)
from proxstudy.dashboards.tables import format_lr, format_value, summary_text, table1, verdict
from proxstudy.study.records import TrialRecord, aggregate_points
from tests.support import study_fixtures as F

_numbers = itertools.count()


def rec(method, params, seed, value=None, status="completed", l0=2.0, train_loss=None):
    """A trial record; epoch 0 (before training) has objective ``l0`` unless it is None."""
    return TrialRecord(number=next(_numbers), method=method, params=dict(params), seed=seed, status=status,
                       value=value, intermediate={} if l0 is None else {0: l0},
                       train_loss=train_loss or ([l0, value] if value is not None else []))


def hand_records():
    """l0 = 2. A: 2 seeds per lr, no other parameter. B: 1 seed, tau_prox 0.5 (complete) and
    tau_prox 5 (its lr 10 failed, so incomplete).

        A   lr 0.01: 1.0, 1.4 -> v 1.2     B tau 0.5: lr 0.01 0.6, 0.1 0.2, 1 0.15, 10 0.5
            lr 0.1 : 0.2, 0.4 -> v 0.3       tau 5  : lr 0.01 0.12, 0.1 0.11, 1 0.13, 10 failed
            lr 1   : 0.1, 0.1 -> v 0.1
            lr 10  : diverged, 3.0 -> capped 2, 2 -> v 2.0
    """
    out = [
        rec("A", {"lr": 0.01}, 0, 1.0), rec("A", {"lr": 0.01}, 1, 1.4),
        rec("A", {"lr": 0.1}, 0, 0.2), rec("A", {"lr": 0.1}, 1, 0.4),
        rec("A", {"lr": 1.0}, 0, 0.1), rec("A", {"lr": 1.0}, 1, 0.1),
        rec("A", {"lr": 10.0}, 0, status="diverged"), rec("A", {"lr": 10.0}, 1, 3.0),
        rec("A", {"lr": 100.0}, 0, status="running"),  # unfinished: left out
    ]
    for tau, values in ((0.5, (0.6, 0.2, 0.15, 0.5)), (5.0, (0.12, 0.11, 0.13, None))):
        for lr, v in zip((0.01, 0.1, 1.0, 10.0), values, strict=True):
            out.append(rec("B", {"lr": lr, "tau_prox": tau}, 0, v, status="completed" if v is not None else "failed"))
    return out


def test_hand_computed_numbers():
    r = compute_robustness(hand_records(), k_max=2)
    assert r.initial_value == pytest.approx(2.0) and r.best_value == pytest.approx(0.1)  # l0, l* (A at lr 1)
    # Trained: q = (2 - v) / 1.9 >= 0.9  <=>  v <= 0.29.
    assert r.progress_threshold == pytest.approx(0.29)
    a, b = r.methods["A"], r.methods["B"]
    # A: 1 - q = (v - 0.1) / 1.9 = 1.1, 0.2, 0, 1.9 (/1.9); mean = 3.2 / 7.6.
    assert a.lr_sensitivity == pytest.approx(3.2 / 7.6) and a.sensitivity_params == {}
    assert a.points == 4 and a.diverged_points == 1 and a.divergence_rate == pytest.approx(0.25)
    # v 0.3 at lr 0.1 has q = 1.7 / 1.9 = 0.895 < 0.9: only lr 1 is trained -> 0 decades.
    assert a.trained_lr == (1.0, 1.0) and a.trained_decades == 0.0 and a.trained_points == 1
    assert a.robust_params == {"lr": 1.0} and a.best_params == {"lr": 1.0} and a.best_value == pytest.approx(0.1)
    assert a.median == pytest.approx(0.75) and a.worst == pytest.approx(2.0)  # of 0.1, 0.3, 1.2, 2.0
    # B at tau 0.5: (0.5 + 0.1 + 0.05 + 0.4) / 1.9 / 4 = 1.05 / 7.6. tau 5 would be 0.06 / 5.7 but is
    # incomplete (lr 10 failed), so it cannot be the most robust setting.
    assert b.lr_sensitivity == pytest.approx(1.05 / 7.6) and b.sensitivity_params == {"tau_prox": 0.5}
    # trained at tau 0.5: 0.2 (lr 0.1) and 0.15 (lr 1) -> one decade; centre sqrt(0.1 * 1) lies
    # halfway between 0.1 and 1 in log distance -> the lower one.
    assert b.trained_lr == (0.1, 1.0) and b.trained_decades == pytest.approx(1.0)
    assert b.robust_params == {"tau_prox": 0.5, "lr": 0.1}
    # best over all of B's points (also the incomplete theta): 0.11 at tau 5, lr 0.1.
    assert b.best_value == pytest.approx(0.11) and b.best_params == {"lr": 0.1, "tau_prox": 5.0}
    assert b.points == 7 and b.divergence_rate == 0.0 and b.median == pytest.approx(0.15)
    # Expected best of A (v sorted 0.1, 0.3, 1.2, 2.0): k=1 mean 0.9; k=2 (0.1*7 + 0.3*5 + 1.2*3 + 2*1)/16.
    assert a.expected_best == pytest.approx([0.9, 7.8 / 16])


def test_hand_computed_intervals_and_comparison():
    r = compute_robustness(hand_records())
    a, b = r.methods["A"], r.methods["B"]
    # l* stays 0.1 in every resample (A at lr 1 has seeds 0.1, 0.1). A's sensitivity moves with
    # its lr 0.01 point (means 1.0/1.2/1.4) and lr 0.1 point (0.2/0.3/0.4): from 2.9/7.6 to 3.5/7.6.
    lo, hi = a.lr_sensitivity_ci
    assert 2.9 / 7.6 - 1e-12 <= lo <= a.lr_sensitivity <= hi <= 3.5 / 7.6 + 1e-12 and hi - lo > 0.02
    # B has one seed per point and l* is fixed: nothing moves.
    assert b.lr_sensitivity_ci == pytest.approx((1.05 / 7.6, 1.05 / 7.6))
    # lr 0.1 resamples to (0.2, 0.2) with chance 1/4 -> trained -> A's range spans a decade.
    assert a.trained_decades_ci == pytest.approx((0.0, 1.0))
    # lr 10 keeps a diverged seed with chance 3/4 -> divergence rate 0.25 or 0.
    assert a.divergence_rate_ci == pytest.approx((0.0, 0.25))
    assert r.comparison("A", "B") == 0.0 and r.comparison("B", "A") == 1.0
    # Fixed RNG seed: the same numbers every time.
    again = compute_robustness(hand_records())
    assert again.methods["A"].lr_sensitivity_ci == a.lr_sensitivity_ci


def test_all_seeds_diverged_and_method_without_trained_point():
    recs = [rec("good", {"lr": lr}, s, v + 0.01 * s) for lr, v in ((0.1, 0.5), (1.0, 0.1)) for s in (0, 1)]
    recs += [rec("bad", {"lr": lr}, s, status="diverged") for lr in (0.1, 1.0) for s in (0, 1)]
    recs += [rec("slow", {"lr": lr}, s, 1.5) for lr in (0.1, 1.0) for s in (0, 1)]
    r = compute_robustness(recs)
    bad, slow = r.methods["bad"], r.methods["slow"]
    # Every 'bad' seed counts as l0: q = 0 everywhere -> sensitivity 1, nothing trained, no best.
    assert bad.lr_sensitivity == 1.0 and bad.lr_sensitivity_ci == (1.0, 1.0)
    assert bad.trained_lr is None and bad.trained_decades is None and bad.robust_params is None
    assert bad.best_params is None and bad.best_value is None
    assert bad.divergence_rate == 1.0 and bad.diverged_points == 2 and bad.worst == pytest.approx(2.0)
    # 'slow' trains a little (l* = 0.105): q = 0.5 / 1.895 at both lrs, never trained.
    assert slow.lr_sensitivity == pytest.approx(1 - 0.5 / 1.895)
    assert slow.trained_lr is None and slow.trained_decades is None and slow.trained_decades_ci == (0.0, 0.0)
    assert slow.best_params == {"lr": 0.1}  # tie between lrs: the first in parameter order
    assert r.comparison("good", "bad") == 1.0 and r.comparison("slow", "bad") == 1.0
    assert picks(r) == {"good": {"best": r.point("good", {"lr": 1.0}), "robust": r.point("good", {"lr": 1.0})},
                        "slow": {"best": r.point("slow", {"lr": 0.1})}}


def test_no_progress_anywhere_and_ties():
    # Nothing gets below l0 = 2: l* == l0, q = 0 everywhere; equal sensitivities count one half.
    recs = [rec(m, {"lr": lr}, 0, 2.5) for m in ("x", "y") for lr in (0.1, 1.0)]
    r = compute_robustness(recs)
    assert r.best_value == pytest.approx(2.0) and r.initial_value == pytest.approx(2.0)
    assert all(p.progress == 0.0 and not p.trained for p in r.points)
    assert r.methods["x"].lr_sensitivity == 1.0 and r.comparison("x", "y") == 0.5
    assert r.methods["x"].trained_lr is None
    assert "x vs y" not in " ".join(verdict(r).comparisons)  # comparable, just undecided
    assert "do not separate x and y" in verdict(r).comparisons[0]


def test_equal_thetas_tie_to_the_first_in_parameter_order():
    recs = [rec("m", {"lr": lr, "tau_prox": tau, "cg_iterations": cg}, 0, v)
            for tau in (1.0, 0.05) for cg in (3, 1) for lr, v in ((0.1, 0.5), (1.0, 0.2))]
    r = compute_robustness(recs)
    assert r.methods["m"].sensitivity_params == {"tau_prox": 0.05, "cg_iterations": 1}


def test_grid_with_one_lr():
    recs = [rec("one", {"lr": 0.5}, s, 0.2 + 0.1 * s) for s in (0, 1)] + [rec("ref", {"lr": 0.5}, 0, 0.1)]
    r = compute_robustness(recs)
    one = r.methods["one"]
    # v = 0.25, l* = 0.1: q = 1.75 / 1.9 = 0.921 -> trained at its only lr: range of one point.
    assert one.lr_sensitivity == pytest.approx(0.15 / 1.9)
    assert one.trained_lr == (0.5, 0.5) and one.trained_decades == 0.0 and one.robust_params == {"lr": 0.5}
    assert "at a single learning rate (0.5)" in verdict(r).methods[0]


def test_maximised_objective_is_mirrored():
    # Accuracy from l0 = 0.1. A: 0.5, 0.9, diverged; B: 0.95, 0.05 (worse than untrained: 0.1).
    recs = [rec("A", {"lr": 0.01}, 0, 0.5, l0=0.1), rec("A", {"lr": 0.1}, 0, 0.9, l0=0.1),
            rec("A", {"lr": 1.0}, 0, status="diverged", l0=0.1),
            rec("B", {"lr": 0.1}, 0, 0.95, l0=0.1), rec("B", {"lr": 1.0}, 0, 0.05, l0=0.1)]
    r = compute_robustness(recs, MAXIMIZE)
    assert r.best_value == pytest.approx(0.95) and r.initial_value == pytest.approx(0.1)
    a, b = r.methods["A"], r.methods["B"]
    # 1 - q = (0.95 - v) / 0.85: A 0.45, 0.05, 0.85 -> 1.35 / 2.55; B 0, 0.85 -> 0.5.
    assert a.lr_sensitivity == pytest.approx(1.35 / 2.55) and b.lr_sensitivity == pytest.approx(0.5)
    assert a.best_value == pytest.approx(0.9) and a.worst == pytest.approx(0.1) and b.worst == pytest.approx(0.1)
    assert a.trained_lr == (0.1, 0.1)  # q = 0.8 / 0.85 = 0.94
    assert r.point("B", {"lr": 1.0}).capped == (0.1,)  # max(0.05, l0)
    assert a.best_value_ci == pytest.approx((0.9, 0.9))
    assert r.progress_threshold == pytest.approx(0.1 + 0.9 * 0.85)
    assert "val_accuracy >= 0.865" in verdict(r, "val_accuracy").scale


def test_missing_seeds_and_non_finite_finals():
    recs = [rec("m", {"lr": 0.1}, s, v) for s, v in ((0, 0.2), (1, 0.4), (2, 0.6))]
    recs += [rec("m", {"lr": 1.0}, 0, 0.3)]  # the other seeds of this point are missing
    recs += [rec("m", {"lr": 10.0}, 0, None), rec("m", {"lr": 10.0}, 1, 0.5)]  # completed, no finite value
    r = compute_robustness(recs)
    p01, p1, p10 = (r.point("m", {"lr": lr}) for lr in (0.1, 1.0, 10.0))
    assert p01.value == pytest.approx(0.4) and p01.n_completed == 3
    assert p1.value == pytest.approx(0.3) and p1.capped == (0.3,)
    assert p10.n_diverged == 1 and p10.capped == (0.5, 2.0)  # a missing final counts as diverged
    m = r.methods["m"]
    assert (m.seeds_min, m.seeds_max) == (1, 3) and m.divergence_rate == pytest.approx(1 / 3)
    # l* moves only with the lr 0.1 point's resamples (from 0.2 to 0.6); lr 1 never changes.
    lo, hi = m.lr_sensitivity_ci
    assert lo <= m.lr_sensitivity <= hi


def test_l0_without_epoch0_values_is_the_worst_final():
    recs = [rec("m", {"lr": 0.1}, 0, 0.5, l0=None), rec("m", {"lr": 1.0}, 0, 1.5, l0=None),
            rec("m", {"lr": 10.0}, 0, status="diverged", l0=None)]
    r = compute_robustness(recs)
    assert r.initial_value == 1.5 and r.initial_value_source == SOURCE_WORST_FINAL
    assert r.methods["m"].lr_sensitivity == pytest.approx(2 / 3)  # q = 1, 0, 0
    assert SOURCE_WORST_FINAL in verdict(r).scale


def test_nothing_informative():
    r = compute_robustness([rec("m", {"lr": 0.1}, 0, status="failed"), rec("m", {"lr": 1.0}, 0, status="running")])
    assert r.initial_value is None and r.methods == {} and r.points == []
    assert verdict(r).methods == [] and "nothing to judge" in verdict(r).scale
    assert summary_document(r, "s", "train_loss")["methods"] == {}


def test_delta_is_checked_and_changes_what_counts_as_trained():
    with pytest.raises(ValueError, match="delta"):
        compute_robustness(hand_records(), delta=1.0)
    # delta 0.2: trained iff v <= 2 - 0.8 * 1.9 = 0.48 -> A at lr 0.1 (0.3) and 1 -> a decade.
    a = compute_robustness(hand_records(), delta=0.2).methods["A"]
    assert a.trained_lr == (0.1, 1.0)


def _noisy_records(n_seeds: int) -> list[TrialRecord]:
    rng = np.random.default_rng(5)
    out = []
    for method, best_lr in (("narrow", 0.1), ("wide", 1.0)):
        width = 0.5 if method == "narrow" else 1.5
        for lr in (0.001, 0.01, 0.1, 1.0, 10.0):
            base = 0.05 + 2.0 * min(1.0, (abs(math.log10(lr / best_lr)) / (2 * width)) ** 2)
            for seed in range(n_seeds):
                out.append(rec(method, {"lr": lr}, seed, float(base * math.exp(0.3 * rng.standard_normal()))))
    return out


def test_intervals_contain_the_estimate_and_shrink_with_more_seeds():
    few, many = compute_robustness(_noisy_records(3)), compute_robustness(_noisy_records(24))
    for r in (few, many):
        for m in r.methods.values():
            for value, (lo, hi) in ((m.lr_sensitivity, m.lr_sensitivity_ci),
                                    (m.trained_decades or 0.0, m.trained_decades_ci),
                                    (m.divergence_rate, m.divergence_rate_ci), (m.best_value, m.best_value_ci)):
                assert lo <= value <= hi
    def width(r, name):
        lo, hi = r.methods[name].lr_sensitivity_ci
        return hi - lo

    for name in ("narrow", "wide"):
        assert width(many, name) < 0.6 * width(few, name)
    assert many.comparison("wide", "narrow") > 0.95


def test_bootstrap_covers_a_5000_trial_study():
    # Speed is not a unit test: the study page load that includes this analysis is timed in
    # benchmarks/dashboard_load.py.
    space = F.benchmark_space(5000)
    recs = []
    for method, params, seed in space.points():
        final = F.final_loss(method, params, seed, space)
        recs.append(rec(method, params, seed, final, "completed" if final is not None else "diverged", l0=2.3))
    assert len(recs) >= 5000
    r = compute_robustness(recs)
    assert r.n_resamples == 1000 and len(r.points) == 660


def test_picks_and_their_validation():
    r = compute_robustness(hand_records())
    both = picks(r)
    assert both["B"]["best"].params == {"lr": 0.1, "tau_prox": 5.0}
    assert both["B"]["robust"].params == {"lr": 0.1, "tau_prox": 0.5} and both["B"]["robust"].seeds == (0,)
    assert set(picks(r, "robust")["A"]) == {"robust"} and set(picks(r, "best")["A"]) == {"best"}
    with pytest.raises(ValueError, match="pick"):
        picks(r, "worst")


def test_summary_document_keys_and_text():
    r = compute_robustness(hand_records())
    doc = summary_document(r, "hand", "train_loss")
    assert {"study", "objective", "direction", "initial_value", "best_value", "delta", "methods",
            "comparisons"} <= set(doc)
    a = doc["methods"]["A"]
    assert {"points", "diverged_points", "divergence_rate", "best", "lr_sensitivity", "lr_sensitivity_ci",
            "sensitivity_params", "trained_lr", "trained_decades", "trained_decades_ci", "robust_params"} <= set(a)
    assert a["best"]["params"] == {"lr": 1.0} and a["trained_lr"] == [1.0, 1.0]
    assert doc["comparisons"] == [{"a": "A", "b": "B", "p_a_less_sensitive": 0.0}]
    text = summary_text(r, "hand", "train_loss")
    assert "A: lr sensitivity 0.42 [" in text and "B is less lr-sensitive than A: P = 1.00" in text
    assert "B: lr sensitivity 0.14 [0.14, 0.14] at its most robust setting tau_prox=0.5" in text
    assert "one seed per point" in text  # B's intervals are not evidence, and the verdict says so


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_expected_best_matches_enumeration(direction):
    values = [0.7, 0.1, 0.4, 0.4, 2.5]
    exact = expected_best_of_k(values, 3, direction)
    pick = min if direction == "minimize" else max
    for k in (1, 2, 3):
        draws = list(itertools.product(values, repeat=k))
        assert exact[k - 1] == pytest.approx(sum(pick(d) for d in draws) / len(draws), rel=1e-12)


def test_median():
    assert median([1.0, 5.0, 2.0]) == 2.0
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
        rec("bp", {"lr": 0.1}, 0, value=0.5, train_loss=[2.0, 0.524]),
        rec("bp", {"lr": 1.0}, 0, status="diverged", train_loss=[2.0, None]),
        rec("pp", {"lr": 0.1, "tau_prox": 0.05, "cg_iterations": 3}, 0, value=1.0, train_loss=[2.0, 1.029]),
        rec("pp", {"lr": 1.0, "tau_prox": 0.05, "cg_iterations": 3}, 0, value=0.002, train_loss=[2.0, 0.002]),
        rec("pp", {"lr": 1.0, "tau_prox": 0.05, "cg_iterations": 3}, 1, value=0.004, train_loss=[2.0, 0.004]),
        # a worse tau for cg3: not the row's tau, so not shown
        rec("pp", {"lr": 1.0, "tau_prox": 5.0, "cg_iterations": 3}, 0, value=0.9, train_loss=[2.0, 0.9]),
        rec("pp", {"lr": 1.0, "tau_prox": 0.05, "cg_iterations": 1}, 0, value=0.667, train_loss=[2.0, 0.667]),
    ]
    t = table1(aggregate_points(recs), recs)
    assert t.lrs == [1.0, 0.1]
    assert t.rows == ["bp", "pp cg1 (tau_prox=0.05)", "pp cg3 (tau_prox=0.05)"]
    assert t.cells == [["-", "0.524"], ["0.667", ""], ["3e-3", "1.029"]]
