"""Cached, read-only access to studies for the dashboard and the report.

Reading a large study through Optuna's ORM is the slow part of a page (tens of seconds for
5,000 trials on a loaded 2-core machine; even opening an Optuna storage object takes seconds),
so:

* RDB storages whose schema ``study.records_sql`` verifies are read with plain SQL: trials via
  ``records.load_records(url, ...)`` (a few queries per study; a refresh re-reads only new and
  unfinished trials), trial counts per state in one ``GROUP BY`` query, the study's settings in
  two small ones; no Optuna storage object is opened;
* otherwise one Optuna storage object is kept per URL (its trial cache makes reloads cheap).
  Note that its ``get_n_trials`` loads every trial: never the cheap check it looks like;
* the records, aggregated points and metrics of a study are cached and rebuilt only when its
  fingerprint changes: the trial counts per state. Any trial that starts, finishes, diverges
  or fails changes it. While trials run, their per-epoch values change without changing the
  counts, so live entries also expire after ``LIVE_TTL_S``.

Trials are read only through ``study.records.load_records``; storage URLs are shown only
redacted (no password).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from proxstudy.dashboards.metrics import DEFAULT_DELTA, Robustness, compute_robustness, direction_for
from proxstudy.study import records as R
from proxstudy.study import records_sql
from proxstudy.study.storage import redact  # re-exported: pages and logs show only the redacted URL

LIVE_TTL_S = 4.0
_versions = itertools.count(1)
K_MAX = 20

_STATUS_OF_STATE = {
    TrialState.COMPLETE: R.STATUS_COMPLETED,
    TrialState.PRUNED: R.STATUS_DIVERGED,
    TrialState.FAIL: R.STATUS_FAILED,
    TrialState.RUNNING: R.STATUS_RUNNING,
    TrialState.WAITING: R.STATUS_WAITING,
}
STATUS_ORDER = (
    R.STATUS_COMPLETED, R.STATUS_DIVERGED, R.STATUS_FAILED, R.STATUS_RUNNING, R.STATUS_WAITING,
    R.STATUS_INTERRUPTED,
)


class StudyNotFound(LookupError):
    """The study does not exist in the storage (message safe to show)."""


_storages: dict[str, optuna.storages.BaseStorage] = {}
_storages_lock = threading.Lock()


def get_storage(url: str) -> optuna.storages.BaseStorage:
    """One Optuna storage object per URL (its trial cache makes reloads cheap).

    A SQLite URL whose file does not exist is refused instead of creating an empty database:
    the dashboard only reads.
    """
    with _storages_lock:
        storage = _storages.get(url)
        if storage is None:
            from sqlalchemy.engine import make_url

            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
                import os

                if not os.path.isfile(parsed.database):
                    raise FileNotFoundError(f"storage {redact(url)}: no database file at {parsed.database}")
            storage = optuna.storages.get_storage(url)
            _storages[url] = storage
        return storage


def status_counts(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, int]:
    """Trials per status of one study through Optuna's API (it reads every trial)."""
    return {status: storage.get_n_trials(study_id, state=state) for state, status in _STATUS_OF_STATE.items()}


def _statuses(by_state: dict[TrialState | str, int]) -> dict[str, int]:
    """Counts per status from ``records_sql``'s counts per Optuna state, where interrupted
    trials (FAIL in Optuna, work left for us) are counted apart from failed ones."""
    counts = {status: by_state.get(state, 0) for state, status in _STATUS_OF_STATE.items()}
    interrupted = by_state.get(R.STATUS_INTERRUPTED, 0)
    counts[R.STATUS_FAILED] -= interrupted
    counts[R.STATUS_INTERRUPTED] = interrupted
    return counts


@dataclass
class StudySummary:
    name: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def list_studies(url: str) -> list[StudySummary]:
    """Every study in the storage with its trial counts by status, sorted by name."""
    fast = records_sql.all_trial_state_counts(url)
    if fast is not None:
        return [StudySummary(name, _statuses(by_state)) for name, by_state in sorted(fast.items())]
    storage = get_storage(url)
    out = []
    for frozen in storage.get_all_studies():
        out.append(StudySummary(frozen.study_name, status_counts(storage, frozen._study_id)))
    return sorted(out, key=lambda s: s.name)


@dataclass
class StudyData:
    """Everything a study page or report shows, derived from the records once."""

    name: str
    objective: str
    direction: str
    space: dict | None
    records: list[R.TrialRecord]
    points: list[R.PointSummary]
    metrics: Robustness
    counts: dict[str, int]
    loaded_at: float = field(default_factory=time.monotonic)
    version: int = field(default_factory=lambda: next(_versions))  # unique per snapshot

    @property
    def live(self) -> bool:
        """Trials still running or waiting: the page keeps refreshing."""
        return bool(self.counts.get(R.STATUS_RUNNING) or self.counts.get(R.STATUS_WAITING))

    @property
    def fingerprint(self) -> tuple:
        return tuple(self.counts.get(s, 0) for s in STATUS_ORDER)


def build_study_data(
    name: str,
    records: list[R.TrialRecord],
    counts: dict[str, int] | None = None,
    space: dict | None = None,
    direction: str | None = None,
    delta: float = DEFAULT_DELTA,
) -> StudyData:
    """Aggregate records into points and metrics (pure; used by the cache and by tests)."""
    objective = str((space or {}).get("objective") or "train_loss")
    direction = direction_for(objective, direction)
    points = R.aggregate_points(records)
    if counts is None:
        counts = {s: 0 for s in STATUS_ORDER}
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
    metrics = compute_robustness(records, direction, delta=delta, k_max=K_MAX)
    return StudyData(name, objective, direction, space, records, points, metrics, counts)


_cache: dict[tuple[str, str], StudyData] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_cache_lock = threading.Lock()


def _study_id(storage: optuna.storages.BaseStorage, name: str) -> int:
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        raise StudyNotFound(f"no study named {name!r} in this storage") from None


def _progress(records: list[R.TrialRecord]) -> tuple:
    """What can change in a study without changing its counts: the epochs of unfinished trials."""
    return tuple((r.number, len(r.intermediate), len(r.train_loss)) for r in records if not r.finished)


def _counts_and_reader(url: str, name: str) -> tuple[dict[str, int], str | optuna.storages.BaseStorage]:
    """The study's trial counts by status, and what to read its trials and settings from: the
    URL where the SQL path applies, else the shared Optuna storage object."""
    try:
        by_state = records_sql.trial_state_counts(url, name)
    except KeyError:
        raise StudyNotFound(f"no study named {name!r} in this storage") from None
    if by_state is not None:
        return _statuses(by_state), url
    storage = get_storage(url)
    return status_counts(storage, _study_id(storage, name)), storage


def _settings(reader: str | optuna.storages.BaseStorage, name: str) -> tuple[dict[str, Any], list]:
    """The study's user attributes and directions."""
    if isinstance(reader, str):
        settings = records_sql.read_study_settings(reader, name)
        if settings is not None:
            return settings.user_attrs, settings.directions
        reader = get_storage(reader)
    study_id = _study_id(reader, name)
    return reader.get_study_user_attrs(study_id), reader.get_study_directions(study_id)


def load_study_data(url: str, name: str, *, force: bool = False) -> StudyData:
    """The study's data, from the cache unless its fingerprint changed (or it is live and stale)."""
    key = (url, name)
    with _cache_lock:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        counts, reader = _counts_and_reader(url, name)
        cached = _cache.get(key)
        if (
            cached is not None
            and not force
            and cached.counts == counts
            and not (cached.live and time.monotonic() - cached.loaded_at > LIVE_TTL_S)
        ):
            return cached
        records = R.load_records(reader, name)
        if cached is not None and not force and cached.counts == counts and _progress(records) == _progress(cached.records):
            cached.loaded_at = time.monotonic()  # live, but no running trial reported a new epoch
            return cached
        attrs, directions = _settings(reader, name)
        space = attrs.get(R.STUDY_ATTR_SPACE)
        direction = "maximize" if directions and directions[0].name == "MAXIMIZE" else "minimize"
        data = build_study_data(name, records, counts, space if isinstance(space, dict) else None, direction)
        _cache[key] = data
        return data


def clear_cache() -> None:
    """Forget cached studies and storages (tests)."""
    with _cache_lock:
        _cache.clear()
        _locks.clear()
    with _storages_lock:
        _storages.clear()
    records_sql.dispose()


def warm_cache(url: str) -> None:
    """Load every study once (the dashboard does this in a background thread at start-up)."""
    for summary in list_studies(url):
        try:
            load_study_data(url, summary.name)
        except Exception:  # a broken study must not stop the others; its page shows the error
            continue
