"""A fast read of a study's trials straight from Optuna's RDB tables (SQLAlchemy Core).

Why: ``optuna.load_study(...).get_trials()`` builds ORM objects and then ``FrozenTrial`` objects
for every row of six tables; for 5,000 trials of 20 epochs that takes 8-15 s on a loaded 2-core
machine, far over the dashboard's 2 s budget for a study page. The same rows read with one Core
query per table (filtered by study, no per-trial round trips) and converted straight into
:class:`study.records.TrialRecord` take about 1 s of CPU (benchmarks/dashboard_load.py).
This is study.reader's fast path; it imports the record schema (study.records), never the
reverse.

Like Optuna's own cached storage, finished trials already read are kept per (URL, study) and
reused while their row in ``trials`` is unchanged (Optuna never changes a finished trial; the
row's id, number, state and times also tell a study deleted and recreated under its name), so
refreshing a live study re-reads only its new and unfinished trials. Callers get copies
(unless they ask for the shared, read-only records: ``read_records(..., shared=True)``).

Contract: :func:`read_records` returns exactly what the Optuna API path of
``reader.load_records`` returns, or ``None`` when this path does not apply - not an SQL URL,
a SQLite file that does not exist (reading must never create one), a schema that is not the one
verified here (tables, columns, Optuna's alembic revision), a study that does not exist, a
multi-objective study, or any database error. The caller then takes the Optuna API path, which
gives the same records or the error users already know. Each trial is converted by the one
converter, ``records.record_from_frozen_trial``, so the record schema stays defined once.

The schema checked (Optuna 3.2 - 5.0, alembic revision ``v3.2.0.a``; see
``optuna/storages/_rdb/models.py``):

* ``trials``: trial_id, number, study_id, state (the ``TrialState`` name), datetime_start and
  datetime_complete (naive UTC; Optuna shows them as naive local time, and so do we);
* ``trial_params``: param_value in the distribution's internal representation (a float; the
  choice index for categorical params) plus distribution_json;
* ``trial_values`` / ``trial_intermediate_values``: a nullable float plus a type column
  (FINITE, INF_POS, INF_NEG and, for intermediate values, NAN);
* ``trial_user_attributes``: value_json.

Log messages name the reason and never the URL (it may carry a password).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from proxstudy.study import records as R

_log = logging.getLogger(__name__)

#: Optuna alembic revisions whose tables are laid out as read here. Optuna 5.0 refuses to open a
#: storage that is not at its head revision, so supporting more would read what Optuna cannot.
SUPPORTED_ALEMBIC_REVISIONS = frozenset({"v3.2.0.a"})
#: ``version_info.schema_version`` that Optuna has written since it moved to alembic.
SUPPORTED_SCHEMA_VERSION = 12

_META = sa.MetaData()
_STUDIES = sa.Table(
    "studies", _META, sa.Column("study_id", sa.Integer), sa.Column("study_name", sa.String)
)
_TRIALS = sa.Table(
    "trials",
    _META,
    sa.Column("trial_id", sa.Integer),
    sa.Column("number", sa.Integer),
    sa.Column("study_id", sa.Integer),
    sa.Column("state", sa.String),  # SQLAlchemy Enum(TrialState) stores the member's name
    sa.Column("datetime_start", sa.DateTime),
    sa.Column("datetime_complete", sa.DateTime),
)
_PARAMS = sa.Table(
    "trial_params",
    _META,
    sa.Column("param_id", sa.Integer),
    sa.Column("trial_id", sa.Integer),
    sa.Column("param_name", sa.String),
    sa.Column("param_value", sa.Float),
    sa.Column("distribution_json", sa.Text),
)
_VALUES = sa.Table(
    "trial_values",
    _META,
    sa.Column("trial_id", sa.Integer),
    sa.Column("objective", sa.Integer),
    sa.Column("value", sa.Float),
    sa.Column("value_type", sa.String),
)
_INTERMEDIATE = sa.Table(
    "trial_intermediate_values",
    _META,
    sa.Column("trial_id", sa.Integer),
    sa.Column("step", sa.Integer),
    sa.Column("intermediate_value", sa.Float),
    sa.Column("intermediate_value_type", sa.String),
)
_USER_ATTRS = sa.Table(
    "trial_user_attributes",
    _META,
    sa.Column("trial_id", sa.Integer),
    sa.Column("key", sa.String),
    sa.Column("value_json", sa.Text),
)
_STUDY_USER_ATTRS = sa.Table(
    "study_user_attributes",
    _META,
    sa.Column("study_id", sa.Integer),
    sa.Column("key", sa.String),
    sa.Column("value_json", sa.Text),
)
_STUDY_DIRECTIONS = sa.Table(
    "study_directions",
    _META,
    sa.Column("study_id", sa.Integer),
    sa.Column("objective", sa.Integer),
    sa.Column("direction", sa.String),  # the StudyDirection member's name
)
_ALEMBIC = sa.Table("alembic_version", _META, sa.Column("version_num", sa.String))
_VERSION_INFO = sa.Table("version_info", _META, sa.Column("schema_version", sa.Integer))
_READ_TABLES = (
    _STUDIES, _TRIALS, _PARAMS, _VALUES, _INTERMEDIATE, _USER_ATTRS,
    _STUDY_USER_ATTRS, _STUDY_DIRECTIONS, _ALEMBIC,
)

_FLOAT_OF_TYPE = {"INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


class _NotApplicable(Exception):
    """This storage or study is not for the fast path; the message says why (no secrets)."""


_engines: dict[str, sa.engine.Engine] = {}
_verified: set[str] = set()  # URLs whose schema passed the check (it is not re-checked)
_lock = threading.Lock()


def _engine_for(url: str) -> sa.engine.Engine:
    """One engine (connection pool) per URL; refuses URLs this path must not open."""
    with _lock:
        engine = _engines.get(url)
        if engine is not None:
            return engine
        try:
            parsed = sa.engine.make_url(url)
        except Exception:
            raise _NotApplicable("not an SQLAlchemy URL") from None
        if parsed.get_backend_name() == "sqlite" and (
            parsed.database in (None, "", ":memory:") or not os.path.isfile(str(parsed.database))
        ):
            raise _NotApplicable("no SQLite database file to read")
        try:
            engine = sa.create_engine(parsed, pool_pre_ping=True)  # survives a database restart
        except Exception as exc:  # unknown dialect or driver not installed
            raise _NotApplicable(f"no engine for this URL ({type(exc).__name__})") from None
        _engines[url] = engine
        return engine


def schema_problem(conn: sa.engine.Connection) -> str | None:
    """Why the database's layout is not the one read here, or None when it is."""
    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names())
    for table in _READ_TABLES:
        if table.name not in tables:
            return f"table {table.name} missing"
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing = sorted({c.name for c in table.columns} - present)
        if missing:
            return f"table {table.name} lacks column(s) {', '.join(missing)}"
    revisions = set(conn.execute(sa.select(_ALEMBIC.c.version_num)).scalars())
    if not revisions or not revisions <= SUPPORTED_ALEMBIC_REVISIONS:
        return f"Optuna schema revision {sorted(revisions)} is not one this reader supports"
    if "version_info" in tables:
        versions = set(conn.execute(sa.select(_VERSION_INFO.c.schema_version)).scalars())
        if versions - {SUPPORTED_SCHEMA_VERSION}:
            return f"Optuna version_info.schema_version {sorted(versions)} is not supported"
    return None


def _connect(url: str) -> sa.engine.Connection:
    """A connection whose schema is verified; one consistent snapshot on PostgreSQL."""
    conn = _engine_for(url).connect()
    try:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        if url not in _verified:
            problem = schema_problem(conn)
            if problem is not None:
                raise _NotApplicable(problem)
            with _lock:
                _verified.add(url)
        return conn
    except BaseException:
        conn.close()
        raise


def _fallback(what: str, exc: BaseException) -> None:
    reason = str(exc) if isinstance(exc, _NotApplicable) else type(exc).__name__
    _log.info("%s: fast SQL read not used (%s); reading through the Optuna API", what, reason)


_gc_pauses = 0  # reads in progress that paused the cyclic garbage collector (under _lock)
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while trials are read (or, in the dashboard, a
    study's analysis is built from them), and restored after the last concurrent pause ends.
    Reading 50,000 trials allocates millions of acyclic objects (rows, floats, lists); each
    allocation burst starts collections that walk the whole heap, the dashboard's cached
    studies included, which doubled the read's CPU time (benchmarks/dashboard_load.py).
    Nothing read here forms a cycle, so nothing is left for it to free; what a pause's other
    work leaves in cycles is collected after it."""
    global _gc_pauses, _gc_was_enabled
    with _lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def read_records(url: str, study_name: str, *, shared: bool = False) -> list[R.TrialRecord] | None:
    """All trials of ``study_name`` as records in trial-number order, or None (see module doc).

    ``shared``: finished trials' records may be the very objects kept for reuse (not copies),
    for callers that never change a record (the dashboard: copying 50,000 records took a
    quarter of a refresh and doubled what the study holds in memory)."""
    try:
        with _connect(url) as conn, gc_paused():
            return _read_records(conn, study_name, (url, study_name), shared)
    except (_NotApplicable, sa.exc.SQLAlchemyError) as exc:
        _fallback("reading trials", exc)
        return None


def trial_state_counts(url: str, study_name: str) -> dict[TrialState | str, int] | None:
    """The study's trials per Optuna state in one ``GROUP BY`` query (states without trials
    are absent; key "interrupted": how many of the FAIL ones are interrupted trials), or None
    when the fast path does not apply.

    Raises KeyError when the study does not exist, as Optuna's ``get_study_id_from_name``.
    """
    try:
        with _connect(url) as conn:
            counts = _state_counts(conn, study_name)
    except (_NotApplicable, sa.exc.SQLAlchemyError) as exc:
        _fallback("counting trials", exc)
        return None
    if study_name not in counts:
        raise KeyError(f"no study named {study_name!r}")
    return counts[study_name]


def read_study_settings(url: str, study_name: str) -> R.StudySettings | None:
    """The study's user attributes and directions in two small queries, or None when the
    fast path does not apply (or the study does not exist)."""
    try:
        with _connect(url) as conn:
            study_id = _study_id(conn, study_name)
            attrs = conn.execute(
                sa.select(_STUDY_USER_ATTRS.c.key, _STUDY_USER_ATTRS.c.value_json)
                .where(_STUDY_USER_ATTRS.c.study_id == study_id)
            ).all()
            directions = conn.execute(
                sa.select(_STUDY_DIRECTIONS.c.direction)
                .where(_STUDY_DIRECTIONS.c.study_id == study_id)
                .order_by(_STUDY_DIRECTIONS.c.objective)
            ).scalars().all()
    except (_NotApplicable, sa.exc.SQLAlchemyError) as exc:
        _fallback("reading study settings", exc)
        return None
    return R.StudySettings(
        {key: json.loads(value_json) for key, value_json in attrs},
        [StudyDirection[name] for name in directions],
    )


def all_trial_state_counts(url: str) -> dict[str, dict[TrialState | str, int]] | None:
    """Every study's name -> trials per Optuna state, in one query; None if not applicable."""
    try:
        with _connect(url) as conn:
            return _state_counts(conn, None)
    except (_NotApplicable, sa.exc.SQLAlchemyError) as exc:
        _fallback("counting trials", exc)
        return None


def _state_counts(conn: sa.engine.Connection, study_name: str | None) -> dict[str, dict[TrialState | str, int]]:
    joined = _STUDIES.outerjoin(_TRIALS, _TRIALS.c.study_id == _STUDIES.c.study_id)
    query = (
        sa.select(_STUDIES.c.study_name, _TRIALS.c.state, sa.func.count(_TRIALS.c.trial_id))
        .select_from(joined)
        .group_by(_STUDIES.c.study_name, _TRIALS.c.state)
    )
    if study_name is not None:
        query = query.where(_STUDIES.c.study_name == study_name)
    out: dict[str, dict[TrialState | str, int]] = {}
    for name, state, count in conn.execute(query):
        per_state = out.setdefault(name, {})
        if state is not None:
            per_state[TrialState[state]] = int(count)
    # FAIL trials closed after their driver died are not failures but work left (records.py);
    # they are counted under the key "interrupted", and are included in the FAIL count.
    interrupted = (
        sa.select(_STUDIES.c.study_name, sa.func.count(_TRIALS.c.trial_id))
        .select_from(
            _STUDIES.join(_TRIALS, _TRIALS.c.study_id == _STUDIES.c.study_id).join(
                _USER_ATTRS, _USER_ATTRS.c.trial_id == _TRIALS.c.trial_id
            )
        )
        .where(
            sa.cast(_TRIALS.c.state, sa.String) == TrialState.FAIL.name,  # an ENUM on PostgreSQL
            _USER_ATTRS.c.key == R.ATTR_STATUS,
            _USER_ATTRS.c.value_json == json.dumps(R.STATUS_INTERRUPTED),
        )
        .group_by(_STUDIES.c.study_name)
    )
    if study_name is not None:
        interrupted = interrupted.where(_STUDIES.c.study_name == study_name)
    for name, count in conn.execute(interrupted):
        out.setdefault(name, {})[R.STATUS_INTERRUPTED] = int(count)
    return out


#: orjson decodes integers beyond 64 bits as floats where json gives ints; such floats (and any
#: float this large) are at least 2**63 in magnitude, so results holding one are re-decoded.
_HUGE = 9.2e18
#: The entry types of a per-epoch list, the commonest user attribute by far.
_FLOATS_OR_NONE = frozenset({float, type(None)})


def _has_huge_float(value: Any) -> bool:
    """Whether a decoded value holds a float of magnitude >= _HUGE (iterative: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is float:
            if not -_HUGE < item < _HUGE:
                return True
        elif kind is list:
            try:  # the common case, a per-epoch list of numbers and None, at C speed
                numbers = [v for v in item if v is not None]
                if numbers and max(map(abs, numbers)) >= _HUGE:
                    return True
            except TypeError:  # strings, lists or dicts inside
                stack.extend(item)
        elif kind is dict:
            stack.extend(item.values())
    return False


def json_loads(text: str) -> Any:
    """Exactly ``json.loads(text)`` (what Optuna decodes user attributes with), faster.

    orjson's result is kept only where it must equal json's: it refuses NaN/Infinity,
    out-of-range floats, lone surrogates and deep nesting (json accepts them), and turns huge
    integers into floats; those texts are decoded by json instead.
    """
    try:
        value = orjson.loads(text)  # decodes the per-epoch lists several times faster than json
    except orjson.JSONDecodeError:
        return json.loads(text)
    # A per-epoch list is checked at C speed: no entry is huge if the sum of magnitudes is not.
    if type(value) is list and set(map(type, value)) <= _FLOATS_OR_NONE and (
        sum(map(abs, filter(None, value))) < _HUGE
    ):
        return value
    if not _has_huge_float(value):
        return value
    return json.loads(text)


@functools.lru_cache(maxsize=4096)
def _distribution(distribution_json: str) -> BaseDistribution:
    """A study holds few distinct distributions: parse each JSON text once."""
    return json_to_distribution(distribution_json)


def _local_naive(utc: datetime | None) -> datetime | None:
    """Optuna stores naive UTC and shows naive local time (models.TrialModel.datetime_start)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)


class _RowTrial:
    """The FrozenTrial attributes ``records.record_from_frozen_trial`` reads, and nothing more."""

    __slots__ = (
        "datetime_complete",
        "datetime_start",
        "intermediate_values",
        "number",
        "params",
        "state",
        "user_attrs",
        "values",
    )

    def __init__(self, number: int, state: TrialState, start: datetime | None, complete: datetime | None):
        self.number = number
        self.state = state
        self.params: dict[str, Any] = {}
        self.values: list[float] | None = None
        self.user_attrs: dict[str, Any] = {}
        self.intermediate_values: dict[int, float] = {}
        self.datetime_start = _local_naive(start)
        self.datetime_complete = _local_naive(complete)

    @property
    def value(self) -> float | None:
        return self.values[0] if self.values else None


def _study_id(conn: sa.engine.Connection, study_name: str) -> int:
    study_id = conn.execute(
        sa.select(_STUDIES.c.study_id).where(_STUDIES.c.study_name == study_name)
    ).scalar_one_or_none()
    if study_id is None:
        raise _NotApplicable("no such study")  # the Optuna path raises the error users know
    return study_id


#: A finished trial as the trials table shows it; Optuna never changes a finished trial, so a
#: record whose row is unchanged (same id, number, state and times) can be reused.
_RowKey = tuple[int, int, str, Any, Any]
#: (url, study name) -> trial_id -> (row key, record) of finished trials read before: what
#: Optuna's own cached storage does, so that refreshing a live study re-reads only new and
#: unfinished trials.
_finished: dict[tuple[str, str], dict[int, tuple[_RowKey, R.TrialRecord]]] = {}
_FINISHED_STATES = frozenset(s.name for s in TrialState if s.is_finished())
#: Re-read at most this many trials by id (chunks of _CHUNK bound parameters); more: whole study.
_MAX_BY_ID = 2000
_CHUNK = 500


#: The record's fields that are containers: a copy gets its own of each.
_CONTAINERS = ("params", "intermediate", "notes", *R.EPOCH_SERIES)


def _copy(record: R.TrialRecord) -> R.TrialRecord:
    """A record sharing no container with the cached one (callers may change theirs).

    Field by field through ``__dict__`` rather than ``copy.copy`` (which goes through
    ``__reduce_ex__``): a refresh of a 50,000-trial study copies every record."""
    out = object.__new__(R.TrialRecord)
    fields = out.__dict__
    fields.update(record.__dict__)
    for name in _CONTAINERS:
        fields[name] = fields[name].copy()
    return out


def _trial_rows(study_id: int) -> sa.Select:
    """The study's trial rows (id, number, state, start, completion) in record order:
    load_records sorts Optuna's trial-id order stably by number, which is this order."""
    return (
        sa.select(
            _TRIALS.c.trial_id, _TRIALS.c.number, _TRIALS.c.state,
            _TRIALS.c.datetime_start, _TRIALS.c.datetime_complete,
        )
        .where(_TRIALS.c.study_id == study_id)
        .order_by(_TRIALS.c.number, _TRIALS.c.trial_id)
    )


def _read_records(conn: sa.engine.Connection, study_name: str, cache_key: tuple[str, str],
                  shared: bool) -> list[R.TrialRecord]:
    study_id = _study_id(conn, study_name)
    rows = conn.execute(_trial_rows(study_id)).all()
    with _lock:
        known = _finished.get(cache_key, {})
    out: dict[int, R.TrialRecord | None] = {}
    handed = (lambda record: record) if shared else _copy
    trials: dict[int, _RowTrial] = {}
    keys: dict[int, _RowKey] = {}
    for row in rows:
        trial_id, number, state, start, complete = key = tuple(row)
        entry = known.get(trial_id)
        if entry is not None and entry[0] == key:
            out[trial_id] = handed(entry[1])
        else:
            out[trial_id] = None
            keys[trial_id] = key
            trials[trial_id] = _RowTrial(number, TrialState[state], start, complete)
    if trials:
        if len(trials) < len(rows) and len(trials) <= _MAX_BY_ID:
            ids = sorted(trials)
            chunks = [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
            selects: list[Callable[..., sa.Select]] = [
                lambda *columns, c=chunk: sa.select(*columns).where(columns[0].in_(c)) for chunk in chunks
            ]
        else:
            def of_study(*columns: sa.Column) -> sa.Select:
                table = columns[0].table
                return (
                    sa.select(*columns)
                    .join(_TRIALS, _TRIALS.c.trial_id == table.c.trial_id)
                    .where(_TRIALS.c.study_id == study_id)
                )

            selects = [of_study]
        _fill_trials(conn, trials, selects)
        convert = R.record_from_frozen_trial
        fresh: dict[int, tuple[_RowKey, R.TrialRecord]] = {}
        for trial_id, trial in trials.items():
            record = out[trial_id] = convert(trial)
            if keys[trial_id][2] in _FINISHED_STATES:
                fresh[trial_id] = (keys[trial_id], handed(record))
        with _lock:
            _finished[cache_key] = {
                **{tid: known[tid] for tid in out if tid not in trials},
                **fresh,
            }
    return [record for record in out.values() if record is not None]  # every row was filled above


def read_trials_page(
    url: str, study_name: str, offset: int, limit: int
) -> tuple[list[R.TrialRecord], list[str], int] | None:
    """One page of the study's trials without reading the rest: the records of the trials at
    positions ``offset`` .. ``offset + limit - 1`` in trial-number order (what
    :func:`read_records` would give there), the names of every parameter any trial of the study
    has, and how many trials it has; or None where the fast path does not apply (module doc).

    For a study page that must show before the whole study is read (a study of 50,000 trials
    takes seconds); three small indexed queries plus the page's rows."""
    try:
        with _connect(url) as conn:
            study_id = _study_id(conn, study_name)
            total = conn.execute(
                sa.select(sa.func.count(_TRIALS.c.trial_id)).where(_TRIALS.c.study_id == study_id)
            ).scalar_one()
            rows = conn.execute(_trial_rows(study_id).offset(max(0, offset)).limit(max(0, limit))).all()
            names = conn.execute(
                sa.select(_PARAMS.c.param_name).distinct()
                .join(_TRIALS, _TRIALS.c.trial_id == _PARAMS.c.trial_id)
                .where(_TRIALS.c.study_id == study_id)
            ).scalars().all()
            trials = {
                trial_id: _RowTrial(number, TrialState[state], start, complete)
                for trial_id, number, state, start, complete in rows
            }
            if trials:
                ids = list(trials)
                _fill_trials(conn, trials, [lambda *columns: sa.select(*columns).where(columns[0].in_(ids))])
    except (_NotApplicable, sa.exc.SQLAlchemyError) as exc:
        _fallback("reading a page of trials", exc)
        return None
    records = [R.record_from_frozen_trial(trial) for trial in trials.values()]
    return records, sorted(set(names) - {R.PARAM_METHOD, R.PARAM_SEED}), int(total)


def _plain_rows(conn: sa.engine.Connection, query: sa.Select) -> Sequence[Any]:
    """The query's rows as the database driver returns them, without SQLAlchemy's Row objects
    and result processing (a million intermediate values at 50,000 trials). Only for columns
    whose driver values are already what SQLAlchemy would return: integers, floats and text;
    not date-times (SQLite stores them as text)."""
    result = conn.execute(query)
    try:
        return result.cursor.fetchall()
    finally:
        result.close()


def _fill_trials(conn: sa.engine.Connection, trials: dict[int, _RowTrial], selects: list) -> None:
    """Params, values, intermediate values and user attributes of ``trials``; each select
    callable turns columns (trial_id first) into a query for some of the trials. Rows of trials
    not in ``trials`` (created after the trials query, or reused) are skipped."""

    def rows(*columns: sa.Column) -> list:
        return [row for select in selects for row in _plain_rows(conn, select(*columns))]

    params = rows(_PARAMS.c.trial_id, _PARAMS.c.param_id, _PARAMS.c.param_name,
                  _PARAMS.c.param_value, _PARAMS.c.distribution_json)
    params.sort(key=lambda row: row[1])  # Optuna orders a trial's params by param_id
    for trial_id, _, name, internal, distribution_json in params:
        trial = trials.get(trial_id)
        if trial is not None:
            trial.params[name] = _distribution(distribution_json).to_external_repr(internal)
    for trial_id, objective, value, value_type in rows(
        _VALUES.c.trial_id, _VALUES.c.objective, _VALUES.c.value, _VALUES.c.value_type
    ):
        trial = trials.get(trial_id)
        if trial is None:
            continue
        if objective != 0:
            raise _NotApplicable("multi-objective study")  # records hold one value
        trial.values = [value if value_type == "FINITE" else _FLOAT_OF_TYPE[value_type]]
    for trial_id, step, value, value_type in rows(
        _INTERMEDIATE.c.trial_id, _INTERMEDIATE.c.step,
        _INTERMEDIATE.c.intermediate_value, _INTERMEDIATE.c.intermediate_value_type,
    ):
        trial = trials.get(trial_id)
        if trial is not None:
            trial.intermediate_values[step] = value if value_type == "FINITE" else _FLOAT_OF_TYPE[value_type]
    loads = json_loads
    for trial_id, key, value_json in rows(_USER_ATTRS.c.trial_id, _USER_ATTRS.c.key, _USER_ATTRS.c.value_json):
        trial = trials.get(trial_id)
        if trial is not None:
            trial.user_attrs[key] = loads(value_json)


def dispose() -> None:
    """Close pooled connections, forget verified schemas and cached finished trials."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _verified.clear()
        _finished.clear()


__all__ = [
    "SUPPORTED_ALEMBIC_REVISIONS",
    "all_trial_state_counts",
    "dispose",
    "gc_paused",
    "json_loads",
    "read_records",
    "read_study_settings",
    "read_trials_page",
    "schema_problem",
    "trial_state_counts",
]
