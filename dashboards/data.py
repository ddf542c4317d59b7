"""Cached, read-only access to studies for the dashboard and the report.

Studies are read through study.reader (plain SQL where the schema is verified, else one Optuna
storage object per URL). The records, aggregated points and metrics of a study are cached and
rebuilt only when its fingerprint changes: the trial counts per status. Any trial that starts,
finishes, diverges or fails changes it. While trials run, their per-epoch values change without
changing the counts, so live entries also expire after ``LIVE_TTL_S``. Storage URLs are shown
only redacted (no password).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

from proxstudy.dashboards.metrics import DEFAULT_DELTA, Robustness, compute_robustness, direction_for
from proxstudy.errors import StudyNotFound
from proxstudy.study import reader
from proxstudy.study import records as R
from proxstudy.study.storage import redact
from proxstudy.workers.vocabulary import TRAIN_LOSS

__all__ = [
    "STATUS_ORDER",
    "StudyData",
    "StudyNotFound",  # the pages catch it as D.StudyNotFound
    "StudySummary",
    "build_study_data",
    "clear_cache",
    "list_studies",
    "load_study_data",
    "redact",
    "study_summary_data",  # pages and logs show only the redacted URL
    "warm_cache",
]

LIVE_TTL_S = 4.0
_versions = itertools.count(1)
K_MAX = 20

#: The statuses in the order pages show their counts.
STATUS_ORDER = R.STATUSES


@dataclass
class StudySummary:
    name: str
    counts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def list_studies(url: str) -> list[StudySummary]:
    """Every study in the storage with its trial counts by status, sorted by name."""
    return [StudySummary(name, counts) for name, counts in reader.all_trial_counts(url).items()]


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
    objective = str((space or {}).get("objective") or TRAIN_LOSS)
    direction = direction_for(objective, direction)
    points = R.aggregate_points(records)
    if counts is None:
        counts = R.count_statuses(records)
    metrics = compute_robustness(records, direction, delta=delta, k_max=K_MAX)
    return StudyData(name, objective, direction, space, records, points, metrics, counts)


_cache: dict[tuple[str, str], StudyData] = {}
_locks: dict[tuple[str, str], threading.Lock] = {}
_cache_lock = threading.Lock()


def _progress(records: list[R.TrialRecord]) -> tuple:
    """What can change in a study without changing its counts: the epochs of unfinished trials."""
    return tuple((r.number, len(r.intermediate), len(r.train_loss)) for r in records if not r.finished)


def load_study_data(url: str, name: str, *, force: bool = False) -> StudyData:
    """The study's data, from the cache unless its fingerprint changed (or it is live and stale)."""
    key = (url, name)
    with _cache_lock:
        lock = _locks.setdefault(key, threading.Lock())
    with lock:
        counts = reader.trial_counts(url, name)
        cached = _cache.get(key)
        if (
            cached is not None
            and not force
            and cached.counts == counts
            and not (cached.live and time.monotonic() - cached.loaded_at > LIVE_TTL_S)
        ):
            return cached
        records = reader.load_records(url, name)
        unchanged = cached is not None and not force and cached.counts == counts
        if cached is not None and unchanged and _progress(records) == _progress(cached.records):
            cached.loaded_at = time.monotonic()  # live, but no running trial reported a new epoch
            return cached
        settings = reader.study_settings(url, name)
        data = build_study_data(name, records, counts, settings.space_document, settings.direction)
        _cache[key] = data
        return data


def study_summary_data(url: str, name: str, *, delta: float = DEFAULT_DELTA) -> StudyData:
    """The study's data with the robustness analysis at ``delta``, read afresh (not cached):
    what `proxstudy summary` prints. Raises StudyNotFound."""
    settings = reader.study_settings(url, name)
    records = reader.load_records(url, name)
    return build_study_data(name, records, None, settings.space_document, settings.direction, delta)


def clear_cache() -> None:
    """Forget cached studies and storages (tests)."""
    with _cache_lock:
        _cache.clear()
        _locks.clear()
    reader.clear_cache()


def warm_cache(url: str) -> None:
    """Load every study once (the dashboard does this in a background thread at start-up)."""
    for summary in list_studies(url):
        try:
            load_study_data(url, summary.name)
        except Exception:  # a broken study must not stop the others; its page shows the error
            continue
