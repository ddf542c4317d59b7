"""The trial-record schema: written through Optuna's real RDB storage, read back as records."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from proxstudy.study import records as R
from proxstudy.study.reader import load_records


def test_point_key_is_stable_and_distinguishes_values():
    a = R.point_key("cg3", {"tau_prox": 0.05, "lr": 0.1, "cg_iterations": 3}, 0)
    b = R.point_key("cg3", {"lr": 0.1, "cg_iterations": 3, "tau_prox": 0.05}, 0)
    assert a == b == "cg3|cg_iterations=3|lr=0.1|tau_prox=0.05|seed=0"
    # Floats that print alike at low precision must still get different keys.
    assert R.point_key("m", {"lr": 0.1}, 0) != R.point_key("m", {"lr": 0.1 + 1e-12}, 0)
    assert R.point_key("m", {"lr": 0.1}, 0) != R.point_key("m", {"lr": 0.1}, 1)


def test_history_to_user_attrs_replaces_non_finite_by_none():
    history = [
        {"epoch": 0, "train_loss": 2.3, "train_accuracy": 0.1, "val_loss": 2.3,
         "val_accuracy": 0.1, "epoch_seconds": 0.0},
        {"epoch": 1, "train_loss": float("nan"), "train_accuracy": None, "val_loss": float("inf"),
         "val_accuracy": 0.2, "epoch_seconds": 0.5},
    ]
    attrs = R.history_to_user_attrs(history)
    assert attrs["train_loss"] == [2.3, None]
    assert attrs["val_loss"] == [2.3, None]
    assert attrs["val_accuracy"] == [0.1, 0.2]
    assert attrs["epoch_seconds"] == [0.0, 0.5]


DISTRIBUTIONS = {
    "method": CategoricalDistribution(["bp", "cg3"]),
    "lr": FloatDistribution(1e-3, 10.0, log=True),
    "seed": IntDistribution(0, 2),
}


def _add(study, method, lr, seed, status, value=None, epochs=None):
    attrs = {R.ATTR_STATUS: status, R.ATTR_POINT_KEY: R.point_key(method, {"lr": lr}, seed)}
    if epochs:
        attrs.update(R.history_to_user_attrs([{"train_loss": v} for v in epochs]))
    state = R.STATE_FOR_STATUS[status]
    study.add_trial(
        create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params={"method": method, "lr": lr, "seed": seed},
            distributions=DISTRIBUTIONS,
            user_attrs=attrs,
            intermediate_values={i: v for i, v in enumerate(epochs or []) if math.isfinite(v)},
        )
    )


@pytest.fixture()
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'records.db'}"


def test_load_records_round_trip_through_sqlite(sqlite_url):
    study = optuna.create_study(study_name="s", storage=sqlite_url)
    _add(study, "bp", 0.1, 0, "completed", 0.5, [2.0, 1.0, 0.5])
    _add(study, "bp", 10.0, 0, "diverged", None, [2.0, float("nan")])
    _add(study, "cg3", 0.1, 1, "failed")
    recs = load_records(sqlite_url, "s")
    assert [r.status for r in recs] == ["completed", "diverged", "failed"]
    first = recs[0]
    assert (first.method, first.seed, first.params, first.value) == ("bp", 0, {"lr": 0.1}, 0.5)
    assert first.train_loss == [2.0, 1.0, 0.5]
    assert first.intermediate == {0: 2.0, 1: 1.0, 2: 0.5}
    assert recs[1].train_loss == [2.0, None]
    assert recs[1].value is None
    assert first.point_key == "bp|lr=0.1|seed=0"


def test_aggregate_points_means_seeds_and_flags_divergence(sqlite_url):
    study = optuna.create_study(study_name="agg", storage=sqlite_url)
    _add(study, "bp", 0.1, 0, "completed", 1.0)
    _add(study, "bp", 0.1, 1, "completed", 3.0)
    _add(study, "bp", 1.0, 0, "completed", 0.2)
    _add(study, "bp", 1.0, 1, "diverged")
    _add(study, "cg3", 0.1, 0, "failed")
    summaries = R.aggregate_points(load_records(sqlite_url, "agg"))
    by_point = {(s.method, s.params["lr"]): s for s in summaries}
    low = by_point[("bp", 0.1)]
    assert low.mean == pytest.approx(2.0)
    assert low.std == pytest.approx(1.0)  # population std of {1, 3}
    assert (low.n, low.diverged) == (2, False)
    high = by_point[("bp", 1.0)]
    assert high.diverged and high.n == 1 and high.n_diverged == 1
    failed = by_point[("cg3", 0.1)]
    assert (failed.n, failed.n_failed, failed.mean) == (0, 1, None)


def test_running_trials_are_not_aggregated(sqlite_url):
    study = optuna.create_study(study_name="run", storage=sqlite_url)
    trial = study.ask()
    trial.suggest_categorical("method", ["bp", "cg3"])
    rec = load_records(sqlite_url, "run")[0]
    assert rec.status == R.STATUS_RUNNING and not rec.finished
    (summary,) = R.aggregate_points([rec])
    assert summary.n == 0 and summary.n_unfinished == 1


def test_best_point_ranks_diverged_last_in_both_directions():
    def point(mean_values, n_diverged=0, lr=0.1):
        return R.PointSummary("m", {"lr": lr}, list(mean_values), list(range(len(mean_values))), n_diverged, 0, 0)

    low_but_diverged = point([0.001], n_diverged=1, lr=1.0)
    a, b, tie = point([0.5, 0.7], lr=0.01), point([0.2], lr=0.1), point([0.2], lr=0.2)
    assert R.best_point([low_but_diverged, a, b, tie]) is b  # diverged never wins; ties: first
    assert R.best_point([low_but_diverged, a, b], R.MAXIMIZE) is a
    assert R.best_point([low_but_diverged]) is None
    assert R.point_value(low_but_diverged) == math.inf
    assert R.point_value(low_but_diverged, R.MAXIMIZE) == -math.inf


def _entry_by_entry(value: list) -> tuple[list, bool]:
    """The reference reading of a per-epoch list: every entry through the one-entry check."""
    read = [R._number_or_none(item) for item in value]
    return [number for number, _ in read], all(ok for _, ok in read)


@pytest.mark.parametrize("value", [
    [2.3, None, 0.1, -0.0, 0.0, 5e-324], [], [None, None], [1.7976931348623157e308, 1.7976931348623157e308],
    [1.0, math.inf], [math.nan, 2.0], [-math.inf, math.inf], [1, 2.5], [True, 1.0], [1.0, "2.0"],
    [1.0, [2.0]], [2**1100, 1.0], [1.0, {"a": 1}],
])
def test_series_fast_path_reads_lists_as_entry_by_entry(value):
    """The C-speed check for well-formed lists gives what the per-entry checks give, including
    lists whose sum overflows, non-finite floats, ints, bools and text."""
    notes: list[str] = []
    got = R._series({R.ATTR_TRAIN_LOSS: value}, R.ATTR_TRAIN_LOSS, notes)
    expected, readable = _entry_by_entry(value)
    assert repr(got) == repr(expected)  # repr: -0.0 and 0.0 apart, 1 and 1.0 apart
    assert [type(x) for x in got] == [type(x) for x in expected]
    assert bool(notes) == (not readable)
    assert got is not value  # the record never shares the stored list
