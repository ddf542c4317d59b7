"""The one schema of what a trial records in the Optuna storage: names, records, aggregation.

Everything that writes trials (the sweep's recorder) or reads them (study.reader, and through
it status, export, dashboards, reports) uses the names and converters here, so the storage
layout is defined once. This module only describes data: reading a storage is study.reader's
job (and study.records_sql's, its fast path), which import this module, never the reverse.

Storage layout (see DESIGN.md, "What every trial records"):

* Optuna params: ``method``, ``lr``, ``seed`` and, where they apply, ``tau_prox``,
  ``cg_iterations`` and swept optimizer fields as ``optimizer.<field>``.
* value: the objective at the last epoch; intermediate values: the objective per epoch
  (step = epoch number, epoch 0 being the model before training).
* Optuna state: COMPLETE for completed trials, PRUNED for diverged ones (they stopped early and
  keep their intermediate values), FAIL for failed ones.
* user attributes, the names in ``ATTR_*`` below; per-epoch lists are indexed by epoch and hold
  ``None`` where the value was not finite or does not apply.
* study user attributes: the validated search-space document (``STUDY_ATTR_SPACE``), so every
  command needs only the storage URL and the study name.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from proxstudy.workers.vocabulary import (
    EPOCH_SECONDS,
    EPOCH_SERIES,
    FINAL_STATUSES,
    MAXIMIZE,
    MINIMIZE,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_RUNNING,
    TRAIN_ACCURACY,
    TRAIN_LOSS,
    VAL_ACCURACY,
    VAL_LOSS,
)

__all__ = [
    "ATTR_ATTEMPTS",
    "ATTR_DEVICE",
    "ATTR_DIVERGED_EPOCH",
    "ATTR_DRIVER",
    "ATTR_EPOCH_SECONDS",
    "ATTR_ERROR",
    "ATTR_POINT_KEY",
    "ATTR_STATUS",
    "ATTR_TRAIN_ACCURACY",
    "ATTR_TRAIN_LOSS",
    "ATTR_VAL_ACCURACY",
    "ATTR_VAL_LOSS",
    "ATTR_WORKER",
    "EPOCH_SERIES",
    "FINAL_STATUSES",
    "MAXIMIZE",
    "MINIMIZE",
    "OPTIMIZER_PARAM_PREFIX",
    "PARAM_CG",
    "PARAM_LR",
    "PARAM_METHOD",
    "PARAM_SEED",
    "PARAM_TAU",
    "STATE_FOR_STATUS",
    "STATUSES",
    "STATUS_COMPLETED",
    "STATUS_DIVERGED",
    "STATUS_FAILED",
    "STATUS_INTERRUPTED",
    "STATUS_OF_STATE",
    "STATUS_RUNNING",
    "STATUS_WAITING",
    "STUDY_ATTR_SOURCE",
    "STUDY_ATTR_SPACE",
    "PointSummary",
    "StudySettings",
    "TrialRecord",
    "aggregate_points",
    "best_point",
    "count_statuses",
    "finite_or_none",
    "history_to_user_attrs",
    "point_key",
    "point_value",
    "record_from_frozen_trial",
    "study_notes",
]

# Optuna param names.
PARAM_METHOD = "method"
PARAM_SEED = "seed"
PARAM_LR = "lr"
PARAM_TAU = "tau_prox"
PARAM_CG = "cg_iterations"
OPTIMIZER_PARAM_PREFIX = "optimizer."

# Trial user attributes.
ATTR_STATUS = "status"  # "completed" | "diverged" | "failed"
ATTR_POINT_KEY = "point_key"  # identifies (method, params, seed) for resume
# The per-epoch lists: named as the epoch keys of workers.training (workers.vocabulary).
ATTR_TRAIN_LOSS = TRAIN_LOSS
ATTR_TRAIN_ACCURACY = TRAIN_ACCURACY
ATTR_VAL_LOSS = VAL_LOSS
ATTR_VAL_ACCURACY = VAL_ACCURACY
ATTR_EPOCH_SECONDS = EPOCH_SECONDS
ATTR_DEVICE = "device"
ATTR_DIVERGED_EPOCH = "diverged_epoch"
ATTR_ERROR = "error"
# Written by the sweep's recorder, informational: who ran the trial and how often.
ATTR_DRIVER = "driver"  # "host:pid" of the `proxstudy run` process that created the trial
ATTR_WORKER = "worker"  # "hostname ip pid" of the Ray worker that ran (the last attempt of) it
ATTR_ATTEMPTS = "attempts"  # 1 + Ray Tune retries after a worker/node failure

# Study user attributes.
STUDY_ATTR_SPACE = "search_space"  # the validated search-space document (a dict)
STUDY_ATTR_SOURCE = "search_space_source"  # the file it was loaded from

# Statuses: the final ones (completed, diverged, failed) are a trial's outcome
# (workers.vocabulary); these are what a study shows while trials run or after a driver died.
STATUS_WAITING = "waiting"
#: A trial left RUNNING by a driver that died, closed by the next `proxstudy run` as Optuna
#: state FAIL with this status. It is NOT final: its point counts as left and is re-run, and it
#: is excluded from aggregation (the re-run is the point's record).
STATUS_INTERRUPTED = "interrupted"
#: Every status a recorded trial can have, in the order counts are shown.
STATUSES = (STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED, STATUS_RUNNING, STATUS_WAITING,
            STATUS_INTERRUPTED)

STATE_FOR_STATUS = {
    STATUS_COMPLETED: TrialState.COMPLETE,
    STATUS_DIVERGED: TrialState.PRUNED,
    STATUS_FAILED: TrialState.FAIL,
}
#: The status an Optuna state stands for where the trial records none of its own (trials made
#: by other tools) and in counts per state; interrupted trials are FAIL with their own status.
STATUS_OF_STATE = {
    TrialState.COMPLETE: STATUS_COMPLETED,
    TrialState.PRUNED: STATUS_DIVERGED,
    TrialState.FAIL: STATUS_FAILED,
    TrialState.RUNNING: STATUS_RUNNING,
    TrialState.WAITING: STATUS_WAITING,
}


def finite_or_none(value: Any) -> float | None:
    """JSON and SQL hold no NaN/inf portably: store them as None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def point_key(method: str, params: Mapping[str, Any], seed: int) -> str:
    """A stable, readable id of one (method, parameter point, seed).

    Floats are written with ``repr`` so that two points differ in their key exactly when they
    differ in value; the key is what resume uses to tell which points are finished.
    """
    parts = [method]
    for name in sorted(params):
        value = params[name]
        text = repr(float(value)) if isinstance(value, float) else str(value)  # bool, None, int, str
        parts.append(f"{name}={text}")
    parts.append(f"seed={int(seed)}")
    return "|".join(parts)


def history_to_user_attrs(history: Sequence[Mapping[str, Any]]) -> dict[str, list[float | None]]:
    """Per-epoch lists (indexed by epoch) from the epoch dicts of ``workers.training``."""
    return {
        name: [finite_or_none(epoch.get(name)) for epoch in history] for name in EPOCH_SERIES
    }


@dataclass
class TrialRecord:
    """One trial as plain data: what metrics, figures and exports are functions of."""

    number: int
    method: str
    params: dict[str, Any]  # the swept values without method and seed
    seed: int
    status: str  # one of STATUSES
    value: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    train_loss: list[float | None] = field(default_factory=list)
    train_accuracy: list[float | None] = field(default_factory=list)
    val_loss: list[float | None] = field(default_factory=list)
    val_accuracy: list[float | None] = field(default_factory=list)
    epoch_seconds: list[float | None] = field(default_factory=list)
    device: str | None = None
    diverged_epoch: int | None = None
    error: str | None = None
    point_key: str | None = None
    datetime_start: datetime | None = None
    datetime_complete: datetime | None = None
    #: What could not be read of this trial (stored by another tool, or damaged); plain lines.
    notes: list[str] = field(default_factory=list)

    @property
    def param_items(self) -> tuple[tuple[str, Any], ...]:
        """The parameter point as a hashable, ordered tuple (seeds excluded)."""
        return tuple(sorted(self.params.items()))

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


class FrozenTrialLike(Protocol):
    """What :func:`record_from_frozen_trial` reads of an Optuna FrozenTrial (study.records_sql
    builds such rows straight from the tables)."""

    number: int
    state: TrialState
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    intermediate_values: dict[int, float]
    datetime_start: datetime | None
    datetime_complete: datetime | None

    @property
    def values(self) -> list[float] | None: ...

    @property
    def value(self) -> float | None: ...


def _status_of(trial: FrozenTrialLike) -> str:
    recorded = trial.user_attrs.get(ATTR_STATUS)
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        return STATUS_OF_STATE[trial.state]
    if isinstance(recorded, str) and (recorded in FINAL_STATUSES or recorded == STATUS_INTERRUPTED):
        return recorded
    # A trial finished by something other than our runner (e.g. Optuna's own tools).
    return STATUS_OF_STATE.get(trial.state, STATUS_FAILED)


def _kind(value: Any) -> str:
    """A value's type for a note, with its article ("a str", "an int"); never the value: it
    may be huge."""
    if value is None:
        return "null"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _number_or_none(value: Any) -> tuple[float | None, bool]:
    """One per-epoch entry as a finite float or None, and whether it was readable as such."""
    if value is None:
        return None, True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, False
    try:
        return finite_or_none(value), True
    except OverflowError:  # an int too large for a float
        return None, False


#: The entry types of a well-formed per-epoch list (what ``history_to_user_attrs`` writes).
_WELL_FORMED = frozenset({float, type(None)})


def _well_formed(value: list) -> bool:
    """Whether every entry is a finite float or None, checked at C speed (no per-entry Python
    call): the types by ``map(type, ...)``, finiteness by one sum, which is finite only if
    every addend is (an inf or NaN makes it inf or NaN; an overflow to inf merely takes the
    entry-by-entry path). Zeros, dropped with the Nones by ``filter``, add nothing."""
    return set(map(type, value)) <= _WELL_FORMED and math.isfinite(sum(filter(None, value)))


def _series(attrs: Mapping[str, Any], name: str, notes: list[str]) -> list[float | None]:
    """A per-epoch list; entries that are not numbers become None, a non-list is left out."""
    value = attrs.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        notes.append(f"user attribute {name!r} is {_kind(value)}, not a list of numbers; left out")
        return []
    if _well_formed(value):  # every list our runner writes: checked entry by entry only if not
        return list(value)
    out: list[float | None] = []
    bad = 0
    for item in value:
        number, readable = _number_or_none(item)
        bad += not readable
        out.append(number)
    if bad:
        notes.append(f"user attribute {name!r} holds entries that are not numbers; shown as missing")
    return out


def _text(attrs: Mapping[str, Any], name: str, notes: list[str]) -> str | None:
    value = attrs.get(name)
    if value is None or isinstance(value, str):
        return value
    notes.append(f"user attribute {name!r} is {_kind(value)}, not text; left out")
    return None


def _integer(value: Any, what: str, notes: list[str], default: int | None) -> int | None:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    notes.append(f"{what} is {_kind(value)}, not an integer; read as {default}")
    return default


def record_from_frozen_trial(trial: FrozenTrial | FrozenTrialLike) -> TrialRecord:
    """Convert one Optuna trial into a :class:`TrialRecord`.

    Never fails on what another tool (or a damaged database) stored: a field that cannot be
    read is left out and the record's ``notes`` say which and why.
    """
    notes: list[str] = []
    params = dict(trial.params)
    method = str(params.pop(PARAM_METHOD, "unknown"))
    seed = _integer(params.pop(PARAM_SEED, None), f"param {PARAM_SEED!r}", notes, 0)
    attrs = trial.user_attrs
    value = _number_or_none(trial.value)[0] if trial.values else None
    return TrialRecord(
        number=trial.number,
        method=method,
        params=params,
        seed=seed or 0,
        status=_status_of(trial),
        value=value,
        intermediate={int(k): v for k, v in trial.intermediate_values.items()},
        train_loss=_series(attrs, ATTR_TRAIN_LOSS, notes),
        train_accuracy=_series(attrs, ATTR_TRAIN_ACCURACY, notes),
        val_loss=_series(attrs, ATTR_VAL_LOSS, notes),
        val_accuracy=_series(attrs, ATTR_VAL_ACCURACY, notes),
        epoch_seconds=_series(attrs, ATTR_EPOCH_SECONDS, notes),
        device=_text(attrs, ATTR_DEVICE, notes),
        diverged_epoch=_integer(
            attrs.get(ATTR_DIVERGED_EPOCH), f"user attribute {ATTR_DIVERGED_EPOCH!r}", notes, None
        ),
        error=_text(attrs, ATTR_ERROR, notes),
        point_key=_text(attrs, ATTR_POINT_KEY, notes),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        notes=notes,
    )


def study_notes(records: Iterable[TrialRecord]) -> list[str]:
    """The records' notes as plain lines, one per distinct problem with how many trials have it
    (a damaged study of thousands of trials gives a few lines, not thousands)."""
    trials_of: dict[str, list[int]] = {}
    for record in records:
        for note in record.notes:
            trials_of.setdefault(note, []).append(record.number)
    lines = []
    for note, numbers in trials_of.items():
        which = f"trial {numbers[0]}" if len(numbers) == 1 else f"{len(numbers)} trials (first: {numbers[0]})"
        lines.append(f"{which}: {note}")
    return lines


def count_statuses(records: Iterable[TrialRecord]) -> dict[str, int]:
    """Trials per status, every status in :data:`STATUSES` present."""
    counts = dict.fromkeys(STATUSES, 0)
    for record in records:
        counts[record.status] = counts.get(record.status, 0) + 1
    return counts


@dataclass(frozen=True)
class StudySettings:
    """What a study stores besides its trials, as Optuna's storage API returns it."""

    user_attrs: dict[str, Any]  # storage.get_study_user_attrs(study_id)
    directions: list[StudyDirection]  # storage.get_study_directions(study_id)

    @property
    def direction(self) -> str:
        """MINIMIZE or MAXIMIZE (of the first objective; our studies have one)."""
        return MAXIMIZE if self.directions and self.directions[0] == StudyDirection.MAXIMIZE else MINIMIZE

    @property
    def space_document(self) -> dict[str, Any] | None:
        """The search-space document the study stores (None: not made by ``proxstudy run``)."""
        document = self.user_attrs.get(STUDY_ATTR_SPACE)
        return document if isinstance(document, dict) else None

    @property
    def space_source(self) -> str:
        return str(self.user_attrs.get(STUDY_ATTR_SOURCE, "<stored document>"))


@dataclass
class PointSummary:
    """One parameter point of one method, its seeds aggregated.

    ``mean``/``std``/``values`` are over the seeds that completed; a point where any seed
    diverged is ``diverged`` and ranks last in every metric, whatever the other seeds did.
    """

    method: str
    params: dict[str, Any]
    values: list[float]
    seeds: list[int]
    n_diverged: int
    n_failed: int
    n_unfinished: int

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def diverged(self) -> bool:
        return self.n_diverged > 0

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        if not self.values:
            return None
        return statistics.pstdev(self.values) if len(self.values) > 1 else 0.0


def aggregate_points(records: Iterable[TrialRecord]) -> list[PointSummary]:
    """Group trials by (method, parameter point), aggregating their seeds.

    Several records of one (point, seed) can exist only if something outside our runner added
    them; the last finished one wins so that a seed is never counted twice.
    """
    latest: dict[tuple[str, tuple, int], TrialRecord] = {}
    unfinished: dict[tuple[str, tuple], int] = {}
    order: list[tuple[str, tuple]] = []
    params_of: dict[tuple[str, tuple], dict[str, Any]] = {}
    for record in records:
        if record.status == STATUS_INTERRUPTED:
            continue  # closed after a driver died; the point was (or will be) re-run
        items = record.param_items  # sorts the params: once per record (50,000 in a large study)
        point = (record.method, items)
        if point not in params_of:
            params_of[point] = dict(record.params)
            order.append(point)
            unfinished[point] = 0
        if not record.finished:
            unfinished[point] += 1
            continue
        latest[(record.method, items, record.seed)] = record
    summaries: dict[tuple[str, tuple], PointSummary] = {
        point: PointSummary(point[0], params_of[point], [], [], 0, 0, unfinished[point])
        for point in order
    }
    for (method, items, seed), record in sorted(latest.items(), key=lambda kv: kv[0][2]):
        summary = summaries[(method, items)]
        if record.status == STATUS_DIVERGED:
            summary.n_diverged += 1
        elif record.status == STATUS_FAILED:
            summary.n_failed += 1
        elif record.value is not None:
            summary.values.append(record.value)
            summary.seeds.append(seed)
        else:  # completed but non-finite objective: treat as diverged
            summary.n_diverged += 1
    return [summaries[point] for point in order]


def point_value(point: PointSummary, direction: str = MINIMIZE) -> float:
    """The point's objective for ranking: its seed mean, or the worst possible value if any seed
    diverged (or none completed), so diverged points rank last everywhere."""
    if point.diverged or point.mean is None:
        return -math.inf if direction == MAXIMIZE else math.inf
    return float(point.mean)


def best_point(points: Iterable[PointSummary], direction: str = MINIMIZE) -> PointSummary | None:
    """The best point by :func:`point_value` (the first in input order on ties), or None when no
    point has a finite value. Export, status and dashboards all rank with this one function."""
    best: PointSummary | None = None
    best_value = math.inf
    sign = -1.0 if direction == MAXIMIZE else 1.0
    for point in points:
        value = sign * point_value(point, direction)
        if math.isfinite(value) and (best is None or value < best_value):
            best, best_value = point, value
    return best
