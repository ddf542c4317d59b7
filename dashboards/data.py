"""Cached, read-only access to studies for the dashboard and the report.

Studies are read through study.reader (plain SQL where the schema is verified, else one Optuna
storage object per URL). A study written by another tool, or damaged, is shown as far as it can
be read: the reader's notes on what it could not read, and the trials this module leaves out of
the analysis (a swept parameter the figures need as a number that is not one), become
``StudyData.notes``, which the page and the report show.

The records, aggregated points and metrics of a study are cached and rebuilt only when its
fingerprint changes: the trial counts per status. Any trial that starts, finishes, diverges or
fails changes it. While trials run, their per-epoch values change without changing the counts,
so live entries also expire after ``LIVE_TTL_S``. Storage URLs are shown only redacted.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from proxstudy.dashboards import heap
from proxstudy.dashboards.metrics import DEFAULT_DELTA, Robustness, compute_robustness, direction_for
from proxstudy.errors import StudyNotFound
from proxstudy.study import reader
from proxstudy.study import records as R
from proxstudy.study.records_sql import gc_paused
from proxstudy.study.storage import redact
from proxstudy.workers.vocabulary import EPOCH_SERIES, TRAIN_LOSS

__all__ = [
    "STATUS_ORDER",
    "StudyData",
    "StudyNotFound",  # the pages catch it as D.StudyNotFound
    "StudySummary",
    "analysable",
    "build_study_data",
    "clear_cache",
    "list_studies",
    "load_study_data",
    "objective_of",
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
    notes: list[str] = field(default_factory=list)  # what could not be read or analysed, plain lines
    loaded_at: float = field(default_factory=time.monotonic)
    version: int = field(default_factory=lambda: next(_versions))  # unique per snapshot

    @property
    def live(self) -> bool:
        """Trials still running or waiting: the page keeps refreshing."""
        return bool(self.counts.get(R.STATUS_RUNNING) or self.counts.get(R.STATUS_WAITING))

    @property
    def fingerprint(self) -> tuple:
        return tuple(self.counts.get(s, 0) for s in STATUS_ORDER)


#: Swept parameters the analysis and the figures use as numbers (grid axes, log scales).
NUMERIC_PARAMS = (R.PARAM_LR, R.PARAM_TAU, R.PARAM_CG)


def _is_number(value: Any) -> bool:
    if type(value) is float:  # the common case, without the calls below: x - x is 0 iff x is finite
        return value - value == 0.0
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def analysable(records: Sequence[R.TrialRecord]) -> tuple[list[R.TrialRecord], list[str]]:
    """The records the analysis can use, and one note per parameter that kept trials out.

    A trial whose lr, tau_prox or cg_iterations is not a finite number (a study written by
    another tool: ``lr="fast"``) cannot be placed on a grid axis; it stays in the trial table
    and is left out of points, metrics and figures. The note shows the value's type, not the
    value (it may be long or hold markup).
    """
    kept: list[R.TrialRecord] = []
    bad: dict[str, list[R.TrialRecord]] = {}
    for record in records:
        params = record.params
        wrong = [name for name in NUMERIC_PARAMS if name in params and not _is_number(params[name])]
        if wrong:
            for name in wrong:
                bad.setdefault(name, []).append(record)
        else:
            kept.append(record)
    notes = []
    for name, trials in bad.items():
        kinds = sorted({type(r.params[name]).__name__ for r in trials})
        which = f"trial {trials[0].number}" if len(trials) == 1 else f"{len(trials)} trials (first: {trials[0].number})"
        notes.append(f"{which}: param {name!r} is {' or '.join(kinds)}, not a finite number; left out of the "
                     "analysis and the figures (listed in the trial table)")
    return kept, notes


def objective_of(space: dict | None) -> str:
    """The study's objective: the space's ``objective`` where it names a per-epoch series."""
    objective = (space or {}).get("objective")
    return objective if isinstance(objective, str) and objective in EPOCH_SERIES else TRAIN_LOSS


def build_study_data(
    name: str,
    records: list[R.TrialRecord],
    counts: dict[str, int] | None = None,
    space: dict | None = None,
    direction: str | None = None,
    delta: float = DEFAULT_DELTA,
    notes: Sequence[str] = (),
) -> StudyData:
    """Aggregate records into points and metrics (pure; used by the cache and by tests).

    ``notes``: what the reader could not read; the trials the analysis cannot use are noted too.
    """
    objective = objective_of(space)
    direction = direction_for(objective, direction)
    usable, left_out = analysable(records)
    points = R.aggregate_points(usable)
    if counts is None:
        counts = R.count_statuses(records)
    metrics = compute_robustness(usable, direction, delta=delta, k_max=K_MAX, aggregated=points)
    return StudyData(name, objective, direction, space, records, points, metrics, counts, [*notes, *left_out])


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
        read = reader.read_study(url, name, shared=True)  # the dashboard never changes a record
        unchanged = cached is not None and not force and cached.counts == counts
        if cached is not None and unchanged and _progress(read.records) == _progress(cached.records):
            cached.loaded_at = time.monotonic()  # live, but no running trial reported a new epoch
            return cached
        settings = read.settings
        with gc_paused():  # see records_sql.gc_paused: aggregation allocates, and forms no cycles
            data = build_study_data(name, read.records, counts, settings.space_document, settings.direction,
                                    notes=read.notes)
        _cache[key] = data
        return data


def study_summary_data(url: str, name: str, *, delta: float = DEFAULT_DELTA) -> StudyData:
    """The study's data with the robustness analysis at ``delta``, read afresh (not cached):
    what `proxstudy summary` prints. Raises StudyNotFound."""
    read = reader.read_study(url, name)
    settings = read.settings
    return build_study_data(name, read.records, None, settings.space_document, settings.direction, delta,
                            notes=read.notes)


def clear_cache() -> None:
    """Forget cached studies and storages (tests)."""
    with _cache_lock:
        _cache.clear()
        _locks.clear()
    reader.clear_cache()
    heap.release()


def warm_cache(url: str) -> None:
    """Load every study once (the dashboard does this in a background thread at start-up)."""
    for summary in list_studies(url):
        try:
            load_study_data(url, summary.name)
        except Exception:  # a broken study must not stop the others; its page shows the error
            continue
