"""The sweep runner's pure parts (no Ray): which points run, counting, redaction, progress."""

from __future__ import annotations

import io
import os
import socket

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

from proxstudy.errors import SweepError
from proxstudy.study import records as R
from proxstudy.study import storage_writer
from proxstudy.study.opening import close_interrupted
from proxstudy.study.points import StaticPoints, TpePoints, expected_per_method, random_points
from proxstudy.study.progress import Progress
from proxstudy.study.space import grid_points, parse_space
from proxstudy.study.status import counts_from_records
from proxstudy.study.storage import redact, resolve_storage_url
from tests.support.cli import synthetic_space

# ------------------------------------------------------------------------------------------


def test_random_points_are_reproducible_inside_the_distributions_and_cover_every_seed():
    space = parse_space(synthetic_space(sampler={"name": "random", "n_trials": 4, "seed": 7}))
    first, again = random_points(space), random_points(space)
    assert [p.key for p in first] == [p.key for p in again]  # resume redraws the same points
    assert len(first) == 2 * 4 * 2  # methods x n_trials x seeds
    assert sum(expected_per_method(space).values()) == len(first)
    for p in first:
        assert 0.01 <= p.params["lr"] <= 1.0
        if p.method == "cg":
            assert p.params["cg_iterations"] in (1, 2) and p.params["tau_prox"] == 1.0
    per_point = {}
    for p in first:
        per_point.setdefault((p.method, tuple(sorted(p.params.items()))), set()).add(p.seed)
    assert all(seeds == {0, 1} for seeds in per_point.values())
    other = parse_space(synthetic_space(sampler={"name": "random", "n_trials": 4, "seed": 8}))
    assert [p.key for p in random_points(other)] != [p.key for p in first]


def test_static_points_hand_out_each_point_once_then_finish():
    space = parse_space(synthetic_space())
    points = grid_points(space)
    source = StaticPoints(points)
    got = []
    while (p := source.next_point()) is not None:
        got.append(p.key)
    assert got == [p.key for p in points] and len(set(got)) == len(got) == 2 * (3 + 2 * 2)


def _record(method, params, seed, status, value=None, number=0):
    return R.TrialRecord(number=number, method=method, params=dict(params), seed=seed, status=status,
                         value=value, point_key=R.point_key(method, params, seed))


def test_tpe_asks_one_point_per_free_slot_and_learns_from_seed_averages():
    space = parse_space(synthetic_space(sampler={"name": "tpe", "n_trials": 3, "seed": 0}))
    source = TpePoints(space, records=[])
    assert source.planned == 2 * 3 * 2
    handed = []
    while (p := source.next_point()) is not None:
        handed.append(p)
        source.point_finished(p, R.STATUS_COMPLETED, p.params["lr"])  # objective = lr
    assert len(handed) == 12 and len({p.key for p in handed}) == 12
    told = source._studies["backprop"].trials
    assert [t.state for t in told] == [TrialState.COMPLETE] * 3
    assert all(t.value == pytest.approx(t.params["lr"]) for t in told)  # mean over the 2 seeds


def test_tpe_resume_tells_finished_points_and_finishes_partial_ones_first():
    space = parse_space(synthetic_space(sampler={"name": "tpe", "n_trials": 2, "seed": 0}))
    records = [
        _record("backprop", {"lr": 0.1}, 0, R.STATUS_COMPLETED, 0.5),
        _record("backprop", {"lr": 0.1}, 1, R.STATUS_DIVERGED),
        _record("backprop", {"lr": 0.2}, 0, R.STATUS_COMPLETED, 0.4),  # seed 1 missing
        _record("cg", {"lr": 0.3, "tau_prox": 1.0, "cg_iterations": 1}, 0, R.STATUS_INTERRUPTED),
    ]
    source = TpePoints(space, records)
    first = source.next_point()
    assert (first.method, first.params, first.seed) == ("backprop", {"lr": 0.2}, 1)
    [told] = source._studies["backprop"].trials
    assert told.state == TrialState.PRUNED and told.params == {"lr": 0.1}  # diverged ranks last
    assert source.planned == 1 + 2 * 2  # the missing seed + cg's two points x two seeds
    rest = []
    while (p := source.next_point()) is not None:
        rest.append(p)
    assert {p.method for p in rest} == {"cg"} and len(rest) == 4


def test_counts_count_each_point_once_and_interrupted_as_left():
    space = parse_space(synthetic_space())
    expected = expected_per_method(space)
    lr = grid_points(space)[0].params
    records = [
        _record("backprop", lr, 0, R.STATUS_INTERRUPTED, number=0),
        _record("backprop", lr, 0, R.STATUS_COMPLETED, 1.0, number=1),
        _record("backprop", {"lr": 1.0}, 0, R.STATUS_DIVERGED, number=2),
        _record("backprop", {"lr": 1.0}, 1, R.STATUS_RUNNING, number=3),
        _record("cg", {"lr": 1.0, "tau_prox": 1.0, "cg_iterations": 1}, 0, R.STATUS_FAILED, number=4),
    ]
    counts = counts_from_records(records, expected)
    bp, cg = counts["backprop"], counts["cg"]
    assert (bp.completed, bp.diverged, bp.failed, bp.running, bp.total, bp.left) == (1, 1, 0, 1, 6, 3)
    assert (cg.completed, cg.failed, cg.total, cg.left) == (0, 1, 8, 7)
    # the interrupted record is not part of the point's aggregate
    [point] = [s for s in R.aggregate_points(records) if s.params == lr]
    assert point.values == [1.0] and point.n_unfinished == 0


def test_close_interrupted_fails_running_trials_of_a_dead_driver_and_refuses_a_live_one():
    storage = optuna.storages.RDBStorage("sqlite:///:memory:")
    study = optuna.create_study(storage=storage, study_name="s")
    dead = study.ask()
    dead.set_user_attr(R.ATTR_DRIVER, "elsewhere:1")
    n = close_interrupted(storage, study._study_id)
    frozen = storage.get_trial(dead._trial_id)
    assert n == 1 and frozen.state == TrialState.FAIL
    assert frozen.user_attrs[R.ATTR_STATUS] == R.STATUS_INTERRUPTED
    assert R.record_from_frozen_trial(frozen).status == R.STATUS_INTERRUPTED
    live = study.ask()
    live.set_user_attr(R.ATTR_DRIVER, f"{socket.gethostname()}:{os.getppid()}")  # pytest's parent: alive
    with pytest.raises(SweepError, match="is being run by process"):
        close_interrupted(storage, study._study_id)
    assert storage.get_trial(live._trial_id).state == TrialState.RUNNING


def test_redaction_and_default_storage(monkeypatch, tmp_path):
    assert redact("postgresql+psycopg://u:s3cret@db:5432/x") == "postgresql+psycopg://u:***@db:5432/x"
    assert "s3cret" not in redact("weird://u:s3cret@host")
    monkeypatch.delenv("PROXSTUDY_STORAGE", raising=False)
    assert resolve_storage_url(None, cwd=tmp_path) == f"sqlite:///{tmp_path.resolve()}/proxstudy.db"
    monkeypatch.setenv("PROXSTUDY_STORAGE", "sqlite:////x/y.db")
    assert resolve_storage_url(None) == "sqlite:////x/y.db"
    assert resolve_storage_url("sqlite:////a.db") == "sqlite:////a.db"


def test_progress_line_counts_and_eta():
    stream = io.StringIO()
    bar = Progress("s", total=10, completed=2, diverged=1, failed=1, enabled=True, stream=stream)
    bar.running, bar.max_running, bar.durations = 2, 2, [4.0, 6.0]
    line = bar.line()
    assert line.startswith("[s] 4/10 done (2 completed, 1 diverged, 1 failed), 2 running, 4 left")
    assert line.endswith("ETA 12s")  # (4 left + 2 running / 2) x 5 s / 2 at once = 12.5 s
    bar.close()
    assert stream.getvalue().count("\n") == 1  # not a tty: plain lines, no carriage returns


def test_storage_writer_retries_connection_errors_and_stops_on_other_errors(monkeypatch):
    monkeypatch.setattr(storage_writer, "STORAGE_RETRY_S", 5.0)
    writer = storage_writer.StorageWriter()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:  # Optuna wraps SQLAlchemy's error, as RDBStorage does
            try:
                raise OperationalError("SELECT 1", {}, Exception("connection refused"))
            except OperationalError as exc:
                raise optuna.exceptions.StorageInternalError("db down") from exc

    writer.submit(flaky)
    writer.flush()
    assert len(calls) == 3 and writer.failure is None

    def bad():
        raise ValueError("not a connection problem")

    writer.submit(bad)
    writer.submit(lambda: calls.append("skipped after a failure"))
    with pytest.raises(SweepError, match="writing to the storage failed: ValueError"):
        writer.flush()
    assert "skipped after a failure" not in calls
    with pytest.raises(SweepError):  # stays failed: Tune is stopped by every callback
        writer.submit(lambda: None)
    writer.close()
