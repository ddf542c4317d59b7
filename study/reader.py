"""The one way to read a study: names, not-found, settings, trial counts and records.

The commands (status, list, export, report), the dashboards and the sweep's resume all read
studies through these functions, so "does it exist", "what does it store" and "how many trials
are in each status" have one answer and one error (:class:`~proxstudy.errors.StudyNotFound`).

``storage`` is a storage URL or an Optuna storage object. URLs of SQL databases whose schema
``study.records_sql`` verifies are read with a few plain SQL queries (no Optuna storage object
is opened: that alone takes seconds); otherwise, and for storage objects, through Optuna's
API, with one Optuna storage object kept per URL (its trial cache makes reloads cheap). Both
paths give equal results.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from proxstudy.errors import ConfigError, StudyNotFound
from proxstudy.study import records_sql
from proxstudy.study.records import (
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_OF_STATE,
    STUDY_ATTR_SPACE,
    StudySettings,
    TrialRecord,
    count_statuses,
    record_from_frozen_trial,
    study_notes,
)
from proxstudy.study.space import SearchSpace, parse_space
from proxstudy.study.storage import redact

__all__ = [
    "StorageLike",
    "StudyRead",
    "TrialsPage",
    "all_trial_counts",
    "clear_cache",
    "load_records",
    "load_trials_page",
    "read_storage",
    "read_study",
    "require_study",
    "stored_space",
    "study_names",
    "study_not_found",
    "study_settings",
    "trial_counts",
]

StorageLike = str | BaseStorage

_storages: dict[str, BaseStorage] = {}
_storages_lock = threading.Lock()


def read_storage(url: str) -> BaseStorage:
    """One Optuna storage object per URL, for reading (its trial cache makes reloads cheap).

    A SQLite URL whose file does not exist is refused instead of creating an empty database.
    """
    with _storages_lock:
        storage = _storages.get(url)
        if storage is None:
            parsed = make_url(url)
            database = parsed.database
            if parsed.get_backend_name() == "sqlite" and database not in (None, "", ":memory:") and (
                not os.path.isfile(str(database))
            ):
                raise FileNotFoundError(f"storage {redact(url)}: no database file at {database}")
            storage = optuna.storages.get_storage(url)
            _storages[url] = storage
        return storage


def _api(storage: StorageLike, *, cached: bool = True) -> BaseStorage:
    if isinstance(storage, BaseStorage):
        return storage
    return read_storage(storage) if cached else optuna.storages.get_storage(storage)


def clear_cache() -> None:
    """Forget the storage objects and the SQL reader's connections and cached trials."""
    with _storages_lock:
        _storages.clear()
    records_sql.dispose()


# -- which studies there are


def study_names(storage: StorageLike) -> list[str]:
    """The names of the studies in the storage, sorted."""
    if isinstance(storage, str):
        counts = records_sql.all_trial_state_counts(storage)
        if counts is not None:
            return sorted(counts)
    return sorted(s.study_name for s in _api(storage).get_all_studies())


def study_not_found(storage: StorageLike, study_name: str) -> StudyNotFound:
    """The error for a study that is not in the storage; it names the studies that are."""
    names = ", ".join(study_names(storage)) or "none"
    return StudyNotFound(f"no study {study_name!r} in the storage (studies there: {names})")


def require_study(storage: StorageLike, study_name: str) -> None:
    """Raise :class:`StudyNotFound` unless the study exists."""
    if study_name not in study_names(storage):
        raise study_not_found(storage, study_name)


def _study_id(storage: BaseStorage, study_name: str) -> int:
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        raise study_not_found(storage, study_name) from None


# -- what a study stores besides its trials


def study_settings(storage: StorageLike, study_name: str) -> StudySettings:
    """The study's user attributes and directions (raises :class:`StudyNotFound`)."""
    if isinstance(storage, str):
        settings = records_sql.read_study_settings(storage, study_name)
        if settings is not None:
            return settings
    api = _api(storage)
    study_id = _study_id(api, study_name)
    return StudySettings(api.get_study_user_attrs(study_id), list(api.get_study_directions(study_id)))


def stored_space(settings: StudySettings) -> SearchSpace | None:
    """The search space the study stores (every study ``proxstudy run`` made does), or None.

    Raises ConfigError when the stored document is not valid for this version of proxstudy.
    """
    document = settings.space_document
    if document is None:
        return None
    return parse_space(document, settings.space_source)


def stored_space_or_none(settings: StudySettings) -> SearchSpace | None:
    """:func:`stored_space`, or None also where the document is from another proxstudy version."""
    try:
        return stored_space(settings)
    except ConfigError:
        return None


# -- how many trials are in each status


def _counts_of_states(by_state: dict[TrialState | str, int]) -> dict[str, int]:
    """Counts per status from ``records_sql``'s counts per Optuna state, where interrupted
    trials (FAIL in Optuna, work left for us) are counted apart from failed ones."""
    counts = {status: by_state.get(state, 0) for state, status in STATUS_OF_STATE.items()}
    interrupted = by_state.get(STATUS_INTERRUPTED, 0)
    counts[STATUS_FAILED] -= interrupted
    counts[STATUS_INTERRUPTED] = interrupted
    return counts


def trial_counts(storage: StorageLike, study_name: str) -> dict[str, int]:
    """The study's trials per status (every status in ``records.STATUSES``), in one SQL query
    where it applies (raises :class:`StudyNotFound`)."""
    if isinstance(storage, str):
        try:
            by_state = records_sql.trial_state_counts(storage, study_name)
        except KeyError:
            raise study_not_found(storage, study_name) from None
        if by_state is not None:
            return _counts_of_states(by_state)
    return count_statuses(load_records(storage, study_name, fast=False))


def all_trial_counts(storage: StorageLike) -> dict[str, dict[str, int]]:
    """Every study's name -> its trials per status, sorted by name."""
    if isinstance(storage, str):
        fast = records_sql.all_trial_state_counts(storage)
        if fast is not None:
            return {name: _counts_of_states(by_state) for name, by_state in sorted(fast.items())}
    return {name: trial_counts(storage, name) for name in study_names(storage)}


# -- the trials


def load_records(storage: StorageLike, study_name: str, *, fast: bool = True,
                 shared: bool = False) -> list[TrialRecord]:
    """All trials of a study as records, in trial-number order (raises :class:`StudyNotFound`).

    A storage URL is read with a few SQL queries (``study.records_sql``: seconds instead of tens
    of seconds for thousands of trials) wherever its schema is the one verified there; otherwise,
    for storage objects, and with ``fast=False``, through the Optuna API (``fast=False`` with a
    URL: a fresh storage object, the reference reading). Both give equal records.

    ``shared=True``: the records must not be changed; the SQL path may hand out the records it
    keeps for reuse instead of copies (``records_sql.read_records``).
    """
    if fast and isinstance(storage, str):
        records = records_sql.read_records(storage, study_name, shared=shared)
        if records is not None:
            return records
    api = _api(storage, cached=fast)
    trials = api.get_all_trials(_study_id(api, study_name), deepcopy=False)
    return [record_from_frozen_trial(t) for t in sorted(trials, key=lambda t: t.number)]


@dataclass(frozen=True)
class TrialsPage:
    """One page of a study's trials in trial-number order, read without the rest of them."""

    records: list[TrialRecord]
    param_names: list[str]  # every swept parameter of the study (method and seed excluded)
    total: int  # trials in the study


def load_trials_page(storage: StorageLike, study_name: str, offset: int, limit: int) -> TrialsPage:
    """The trials at positions ``offset`` .. ``offset + limit - 1`` of :func:`load_records`,
    with the study's parameter names and trial count (raises :class:`StudyNotFound`). A few
    small SQL queries where the fast path applies; otherwise every trial is read and sliced."""
    if isinstance(storage, str):
        page = records_sql.read_trials_page(storage, study_name, offset, limit)
        if page is not None:
            return TrialsPage(*page)
        require_study(storage, study_name)
    records = load_records(storage, study_name)
    names = sorted({name for record in records for name in record.params})
    start = max(0, offset)
    return TrialsPage(records[start:start + max(0, limit)], names, len(records))


@dataclass
class StudyRead:
    """Everything that could be read of one study, and what could not.

    ``notes`` are plain lines, safe to show, on what could not be read (a study written by
    another tool, or damaged: a ``train_loss`` that is text, a search space from another
    version); the rest is read as far as it goes. Empty for studies ``proxstudy run`` wrote.
    """

    records: list[TrialRecord]
    settings: StudySettings
    space: SearchSpace | None
    notes: list[str] = field(default_factory=list)


def read_study(storage: StorageLike, study_name: str, *, shared: bool = False) -> StudyRead:
    """The study's records, settings and search space, with notes on what cannot be read
    instead of an error (raises only :class:`StudyNotFound` and storage errors); ``shared``:
    read-only records, as in :func:`load_records`."""
    settings = study_settings(storage, study_name)
    records = load_records(storage, study_name, shared=shared)
    notes: list[str] = []
    space = None
    if settings.space_document is not None:
        try:
            space = stored_space(settings)
        except ConfigError as exc:
            where = f"{exc.field}: " if exc.field else ""
            notes.append(f"the stored search space cannot be read by this version ({_clip(where + exc.message)})")
    elif STUDY_ATTR_SPACE in settings.user_attrs:
        notes.append("the stored search space is not a mapping; it is left out")
    else:
        notes.append("the study stores no search space (not made by `proxstudy run`)")
    notes.extend(study_notes(records))
    return StudyRead(records, settings, space, notes)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
