"""The SQL read path (study.records_sql) gives exactly the records of the Optuna API path.

Studies are written through Optuna's real API into real SQLite and PostgreSQL storages, with
trials of every state, awkward values (inf, NaN, huge integers, None inside lists, lone
surrogates) and every kind of distribution; then both read paths are compared field by field.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import sqlite3
import time
import uuid

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from proxstudy.errors import StudyNotFound
from proxstudy.study import records as R
from proxstudy.study import records_sql as S
from proxstudy.study.reader import load_records
from tests.support.postgres import PG_URL, needs_pg

DISTRIBUTIONS = {
    R.PARAM_METHOD: CategoricalDistribution(["backprop", "proxprop-cg"]),
    R.PARAM_SEED: IntDistribution(0, 10),
    R.PARAM_LR: FloatDistribution(1e-4, 10.0, log=True),
    R.PARAM_TAU: FloatDistribution(0.0, 2.0, step=0.25),
    R.PARAM_CG: IntDistribution(1, 9, step=2),
    "optimizer.nesterov": CategoricalDistribution([None, True, 1.5, "x"]),
    "optimizer.momentum": FloatDistribution(0.0, 1.0),
}


def _fill(storage: str, name: str) -> None:
    """One study with trials of every state and a second study whose trials must not leak."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(R.STUDY_ATTR_SPACE, {"objective": "val_accuracy", "nested": [1, None, 2.5]})
    series = R.history_to_user_attrs([{"train_loss": 2.3, "val_accuracy": 0.1},
                                      {"train_loss": float("nan"), "val_accuracy": 1e30}])

    def add(state, params, value=None, attrs=None, intermediate=None):
        study.add_trial(create_trial(
            state=state, value=value, params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            user_attrs=attrs or {}, intermediate_values=intermediate or {},
        ))

    full = {R.PARAM_METHOD: "proxprop-cg", R.PARAM_SEED: 3, R.PARAM_LR: 0.012345678901234567,
            R.PARAM_TAU: 1.25, R.PARAM_CG: 5, "optimizer.nesterov": None, "optimizer.momentum": 0.9}
    add(TrialState.COMPLETE, full, 0.25, {**series, R.ATTR_STATUS: R.STATUS_COMPLETED,
        R.ATTR_POINT_KEY: "k|1", R.ATTR_DEVICE: "cpu", R.ATTR_ATTEMPTS: 2},
        {0: 2.3, 1: 1.0, 2: 0.25})
    add(TrialState.COMPLETE, {**full, "optimizer.nesterov": True, R.PARAM_LR: 1e-4}, float("inf"),
        {R.ATTR_STATUS: R.STATUS_COMPLETED, "big": 2**70, "neg_big": -(2**64) - 1, "huge": 1e300,
         "nan": float("nan"), "surrogate": "\ud800", "text": "héllo \u2603", "deep": {"a": [[1, None]]}})
    add(TrialState.COMPLETE, {R.PARAM_METHOD: "backprop", R.PARAM_SEED: 0, R.PARAM_LR: 10.0,
                              "optimizer.nesterov": "x"}, -5.0)  # written by another tool: no attrs
    add(TrialState.PRUNED, {**full, "optimizer.nesterov": 1.5},
        attrs={**series, R.ATTR_STATUS: R.STATUS_DIVERGED, R.ATTR_DIVERGED_EPOCH: 2},
        intermediate={0: 2.3, 1: float("inf"), 2: float("-inf"), 3: float("nan")})
    add(TrialState.FAIL, {R.PARAM_METHOD: "backprop", R.PARAM_SEED: 1, R.PARAM_LR: 0.5},
        attrs={R.ATTR_STATUS: R.STATUS_FAILED, R.ATTR_ERROR: "RuntimeError: <b>boom</b>"})
    add(TrialState.FAIL, {R.PARAM_METHOD: "backprop", R.PARAM_SEED: 2, R.PARAM_LR: 0.5},
        attrs={R.ATTR_STATUS: R.STATUS_INTERRUPTED})
    running = study.ask({k: DISTRIBUTIONS[k] for k in (R.PARAM_METHOD, R.PARAM_SEED, R.PARAM_LR)})
    running.report(1.5, 0)
    running.set_user_attr(R.ATTR_TRAIN_LOSS, [1.5, None])
    study.enqueue_trial({R.PARAM_METHOD: "backprop", R.PARAM_SEED: 4, R.PARAM_LR: 0.1})  # WAITING

    other = optuna.create_study(study_name=name + "-other", storage=storage)
    other.add_trial(create_trial(state=TrialState.COMPLETE, value=1.0, params={R.PARAM_SEED: 9},
                                 distributions={R.PARAM_SEED: DISTRIBUTIONS[R.PARAM_SEED]}))


def _comparable(value):
    """NaN equals NaN here (it never equals itself), everything else as it is."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _assert_same_records(fast: list[R.TrialRecord], slow: list[R.TrialRecord]) -> None:
    assert [r.number for r in fast] == [r.number for r in slow]
    for a, b in zip(fast, slow, strict=True):
        for f in dataclasses.fields(R.TrialRecord):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert _comparable(x) == _comparable(y), (a.number, f.name, x, y)
            assert type(x) is type(y), (a.number, f.name)
        assert list(a.params) == list(b.params)  # same order too
        for name in a.params:
            assert type(a.params[name]) is type(b.params[name]), (a.number, name)


def _check_storage(url: str, name: str) -> None:
    fast = S.read_records(url, name)
    assert fast is not None, "the SQL path must apply to a storage written by this Optuna"
    slow = load_records(url, name, fast=False)
    assert len(fast) == 8 and {r.status for r in fast} == {
        R.STATUS_COMPLETED, R.STATUS_DIVERGED, R.STATUS_FAILED, R.STATUS_INTERRUPTED,
        R.STATUS_RUNNING, R.STATUS_WAITING}
    _assert_same_records(fast, slow)
    _assert_same_records(load_records(url, name), slow)  # the default path is the SQL one
    # Spot checks that would expose a shared mistake in the converter inputs.
    first = fast[0]
    assert first.params == {R.PARAM_LR: 0.012345678901234567, R.PARAM_TAU: 1.25, R.PARAM_CG: 5,
                            "optimizer.nesterov": None, "optimizer.momentum": 0.9}
    assert (first.method, first.seed, first.value, first.train_loss) == ("proxprop-cg", 3, 0.25, [2.3, None])
    assert fast[1].value is None and fast[2].value == -5.0 and fast[3].intermediate[1] == math.inf

    storage = optuna.storages.get_storage(url)
    study_id = storage.get_study_id_from_name(name)
    counts = S.trial_state_counts(url, name)
    assert counts.pop(R.STATUS_INTERRUPTED) == sum(r.status == R.STATUS_INTERRUPTED for r in slow) == 1
    assert counts == {s: n for s in TrialState if (n := storage.get_n_trials(study_id, state=s))}
    assert S.all_trial_state_counts(url)[name + "-other"] == {TrialState.COMPLETE: 1}
    with pytest.raises(KeyError):
        S.trial_state_counts(url, name + "-absent")
    settings = S.read_study_settings(url, name)
    assert settings.user_attrs == storage.get_study_user_attrs(study_id)
    assert settings.directions == storage.get_study_directions(study_id)
    assert S.read_study_settings(url, name + "-absent") is None


@pytest.fixture()
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'fast.db'}"
    _fill(url, "s")
    S.dispose()
    yield url
    S.dispose()


def test_sql_path_equals_optuna_api_on_sqlite(sqlite_url):
    _check_storage(sqlite_url, "s")


def test_datetimes_are_local_time_like_optunas(sqlite_url, monkeypatch):
    """Optuna stores naive UTC and shows naive local time; so must the SQL path."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        fast = S.read_records(sqlite_url, "s")
        slow = load_records(sqlite_url, "s", fast=False)
        assert [(r.datetime_start, r.datetime_complete) for r in fast] == [
            (r.datetime_start, r.datetime_complete) for r in slow]
        assert fast[0].datetime_start is not None and fast[-1].datetime_start is None  # WAITING
    finally:
        monkeypatch.undo()
        time.tzset()


@needs_pg
def test_sql_path_equals_optuna_api_on_postgresql():
    name = f"records-sql-{uuid.uuid4().hex[:10]}"
    try:
        _fill(PG_URL, name)
        _check_storage(PG_URL, name)
    finally:
        for study in (name, name + "-other"):
            with contextlib.suppress(KeyError):
                optuna.delete_study(study_name=study, storage=PG_URL)
        S.dispose()


def test_unsupported_schema_falls_back_to_the_optuna_api(sqlite_url, monkeypatch, caplog):
    slow = load_records(sqlite_url, "s", fast=False)
    monkeypatch.setattr(S, "SUPPORTED_ALEMBIC_REVISIONS", frozenset({"v0.0.0.future"}))
    with caplog.at_level("INFO", logger=S.__name__):
        assert S.read_records(sqlite_url, "s") is None
    assert "schema revision" in caplog.text and sqlite_url not in caplog.text
    assert S.trial_state_counts(sqlite_url, "s") is None
    _assert_same_records(load_records(sqlite_url, "s"), slow)  # correct through the fallback


def test_schema_check_names_what_is_missing(tmp_path):
    path = tmp_path / "broken.db"
    url = f"sqlite:///{path}"
    optuna.create_study(study_name="x", storage=url)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE trial_intermediate_values")
        conn.execute("ALTER TABLE trial_params RENAME COLUMN distribution_json TO dist")
    S.dispose()
    assert S.read_records(url, "x") is None
    engine = S._engine_for(url)
    with engine.connect() as conn:
        assert S.schema_problem(conn) == "table trial_params lacks column(s) distribution_json"
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE trial_params RENAME COLUMN dist TO distribution_json")
    with engine.connect() as conn:
        assert S.schema_problem(conn) == "table trial_intermediate_values missing"
    S.dispose()


def test_what_the_sql_path_never_opens(tmp_path, sqlite_url):
    absent = tmp_path / "absent.db"
    assert S.read_records(f"sqlite:///{absent}", "s") is None
    assert not absent.exists()  # reading never creates a database
    assert S.read_records("sqlite:///:memory:", "s") is None
    assert S.read_records("not a url", "s") is None
    assert S.read_records(sqlite_url, "no-such-study") is None
    with pytest.raises(StudyNotFound, match="no study 'no-such-study' in the storage"):
        load_records(sqlite_url, "no-such-study")  # through the Optuna path, as every reader
    memory = optuna.storages.InMemoryStorage()
    _fill(memory, "m")
    records = load_records(memory, "m")  # storage objects take the Optuna API path
    assert [r.status for r in records][:3] == [R.STATUS_COMPLETED] * 3


def test_rereading_reuses_only_unchanged_finished_trials(sqlite_url, monkeypatch):
    """A refresh re-reads new and unfinished trials (by id, in chunks) and nothing else, and a
    study deleted and recreated under the same name (SQLite reuses ids) is read afresh."""
    monkeypatch.setattr(S, "_CHUNK", 1)
    first = S.read_records(sqlite_url, "s")
    first[0].train_loss.append(99.0)  # a caller changing its records changes nothing cached
    study = optuna.load_study(study_name="s", storage=sqlite_url)
    running = next(t for t in study.get_trials() if t.state == TrialState.RUNNING)
    study._storage.set_trial_intermediate_value(running._trial_id, 1, 0.75)
    assert [r.intermediate for r in S.read_records(sqlite_url, "s") if r.status == R.STATUS_RUNNING] == [
        {0: 1.5, 1: 0.75}]  # still RUNNING, same row in the trials table: re-read all the same
    study._storage.set_trial_user_attr(running._trial_id, R.ATTR_STATUS, R.STATUS_COMPLETED)
    waiting = study.ask()  # the WAITING trial starts
    study.tell(running.number, 0.5)
    study.tell(waiting, state=TrialState.FAIL)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=3.0, params={R.PARAM_SEED: 7},
                                 distributions={R.PARAM_SEED: DISTRIBUTIONS[R.PARAM_SEED]}))
    second = S.read_records(sqlite_url, "s")
    _assert_same_records(second, load_records(sqlite_url, "s", fast=False))
    assert second[6].intermediate == {0: 1.5, 1: 0.75} and second[6].status == R.STATUS_COMPLETED
    assert len(second) == 9 and second[0].train_loss == [2.3, None]

    for name in ("s", "s-other"):
        optuna.delete_study(study_name=name, storage=sqlite_url)
    again = optuna.create_study(study_name="s", storage=sqlite_url)
    for seed in range(3):
        again.add_trial(create_trial(state=TrialState.COMPLETE, value=float(seed), params={R.PARAM_SEED: seed},
                                     distributions={R.PARAM_SEED: DISTRIBUTIONS[R.PARAM_SEED]},
                                     user_attrs={R.ATTR_STATUS: R.STATUS_COMPLETED}))
    third = S.read_records(sqlite_url, "s")
    _assert_same_records(third, load_records(sqlite_url, "s", fast=False))
    assert [r.seed for r in third] == [0, 1, 2]


def test_shared_records_are_the_kept_ones(sqlite_url):
    """``shared=True`` hands out the records kept for reuse (no copy) for finished trials, equal
    to the copies every other read gets; unfinished trials are read afresh either way."""
    copies = S.read_records(sqlite_url, "s")
    shared = S.read_records(sqlite_url, "s", shared=True)
    again = S.read_records(sqlite_url, "s", shared=True)
    _assert_same_records(shared, copies)
    _assert_same_records(again, load_records(sqlite_url, "s", fast=False))
    done = [i for i, r in enumerate(shared) if r.status == R.STATUS_COMPLETED]
    live = [i for i, r in enumerate(shared) if r.status in (R.STATUS_RUNNING, R.STATUS_WAITING)]
    assert done and live
    assert all(again[i] is shared[i] for i in done)
    assert not any(again[i] is shared[i] for i in live)
    fresh = S.read_records(sqlite_url, "s")
    assert not any(fresh[i] is shared[i] or copies[i] is shared[i] for i in done)  # copies stay copies


def test_multi_objective_study_takes_the_optuna_path(tmp_path):
    url = f"sqlite:///{tmp_path / 'multi.db'}"
    study = optuna.create_study(study_name="mo", storage=url, directions=["minimize", "maximize"])
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[1.0, 2.0], params={}, distributions={}))
    assert S.read_records(url, "mo") is None  # records hold one value; Optuna's path decides
    S.dispose()


@pytest.mark.parametrize("text", [
    "[2.3, null, 0.1, 1e-05, 5e-324, 1.7976931348623157e+308]", "12345678901234567890123",
    "[1, -18446744073709551617, 9223372036854775807]", "NaN", "[Infinity, -Infinity]", "1e400",
    '"\\ud800"', '{"a": [1, {"b": null}], "c": "\\u2603"}', "[1e19, 2.0]", "-0.0", "true",
    "[" * 500 + "]" * 500, "[1.5, null, 12345678901234567890123]", "[1e308, 1e308, 123456789012345678901234]",
    "[9.3e18, null, -0.0]",
])
def test_json_loads_is_exactly_json(text):
    expected = json.loads(text)
    got = S.json_loads(text)
    assert json.dumps(got) == json.dumps(expected)
    assert repr(got) == repr(expected)


@pytest.mark.parametrize("enabled", [True, False])
def test_reading_restores_the_garbage_collectors_state(sqlite_url, enabled):
    """The read pauses the cyclic GC and leaves it as it found it, enabled or not."""
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        assert S.read_records(sqlite_url, "s") is not None
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
