"""The one schema of what a trial records in the Optuna storage, and how to read it back.

Everything that writes trials (the sweep runner) or reads them (status, export, dashboards,
reports) goes through the names and converters here, so the storage layout is defined once.

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
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

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
ATTR_TRAIN_LOSS = "train_loss"
ATTR_TRAIN_ACCURACY = "train_accuracy"
ATTR_VAL_LOSS = "val_loss"
ATTR_VAL_ACCURACY = "val_accuracy"
ATTR_EPOCH_SECONDS = "epoch_seconds"
ATTR_DEVICE = "device"
ATTR_DIVERGED_EPOCH = "diverged_epoch"
ATTR_ERROR = "error"
# Written by the sweep runner (study.runner), informational: who ran the trial and how often.
ATTR_DRIVER = "driver"  # "host:pid" of the `proxstudy run` process that created the trial
ATTR_WORKER = "worker"  # "hostname ip pid" of the Ray worker that ran (the last attempt of) it
ATTR_ATTEMPTS = "attempts"  # 1 + Ray Tune retries after a worker/node failure
#: The epoch-dict keys (workers.training) stored as per-epoch lists.
EPOCH_SERIES = (
    ATTR_TRAIN_LOSS,
    ATTR_TRAIN_ACCURACY,
    ATTR_VAL_LOSS,
    ATTR_VAL_ACCURACY,
    ATTR_EPOCH_SECONDS,
)

# Study user attributes.
STUDY_ATTR_SPACE = "search_space"  # the validated search-space document (a dict)
STUDY_ATTR_SOURCE = "search_space_source"  # the file it was loaded from

STATUS_COMPLETED = "completed"
STATUS_DIVERGED = "diverged"
STATUS_FAILED = "failed"
STATUS_RUNNING = "running"
STATUS_WAITING = "waiting"
#: A trial left RUNNING by a driver that died, closed by the next `proxstudy run` as Optuna
#: state FAIL with this status. It is NOT final: its point counts as left and is re-run, and it
#: is excluded from aggregation (the re-run is the point's record).
STATUS_INTERRUPTED = "interrupted"
FINAL_STATUSES = (STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED)

STATE_FOR_STATUS = {
    STATUS_COMPLETED: TrialState.COMPLETE,
    STATUS_DIVERGED: TrialState.PRUNED,
    STATUS_FAILED: TrialState.FAIL,
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
        if isinstance(value, bool) or value is None:
            text = str(value)
        elif isinstance(value, int):
            text = str(value)
        elif isinstance(value, float):
            text = repr(float(value))
        else:
            text = str(value)
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
    status: str  # completed | diverged | failed | running | waiting | interrupted
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

    @property
    def param_items(self) -> tuple[tuple[str, Any], ...]:
        """The parameter point as a hashable, ordered tuple (seeds excluded)."""
        return tuple(sorted(self.params.items()))

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


def _status_of(trial: FrozenTrial) -> str:
    recorded = trial.user_attrs.get(ATTR_STATUS)
    if trial.state == TrialState.RUNNING:
        return STATUS_RUNNING
    if trial.state == TrialState.WAITING:
        return STATUS_WAITING
    if recorded in FINAL_STATUSES:
        return recorded
    if recorded == STATUS_INTERRUPTED:
        return STATUS_INTERRUPTED
    # A trial finished by something other than our runner (e.g. Optuna's own tools).
    return {
        TrialState.COMPLETE: STATUS_COMPLETED,
        TrialState.PRUNED: STATUS_DIVERGED,
    }.get(trial.state, STATUS_FAILED)


def record_from_frozen_trial(trial: FrozenTrial) -> TrialRecord:
    """Convert one Optuna trial into a :class:`TrialRecord`."""
    params = dict(trial.params)
    method = str(params.pop(PARAM_METHOD, "unknown"))
    seed = int(params.pop(PARAM_SEED, 0))
    attrs = trial.user_attrs
    value = finite_or_none(trial.value) if trial.values else None
    diverged_epoch = attrs.get(ATTR_DIVERGED_EPOCH)
    return TrialRecord(
        number=trial.number,
        method=method,
        params=params,
        seed=seed,
        status=_status_of(trial),
        value=value,
        intermediate={int(k): v for k, v in trial.intermediate_values.items()},
        train_loss=list(attrs.get(ATTR_TRAIN_LOSS) or []),
        train_accuracy=list(attrs.get(ATTR_TRAIN_ACCURACY) or []),
        val_loss=list(attrs.get(ATTR_VAL_LOSS) or []),
        val_accuracy=list(attrs.get(ATTR_VAL_ACCURACY) or []),
        epoch_seconds=list(attrs.get(ATTR_EPOCH_SECONDS) or []),
        device=attrs.get(ATTR_DEVICE),
        diverged_epoch=int(diverged_epoch) if diverged_epoch is not None else None,
        error=attrs.get(ATTR_ERROR),
        point_key=attrs.get(ATTR_POINT_KEY),
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
    )


def load_records(
    storage: str | optuna.storages.BaseStorage, study_name: str, *, fast: bool = True
) -> list[TrialRecord]:
    """All trials of a study as records, in trial-number order.

    A storage URL is read with a few SQL queries (``study.records_sql``: seconds instead of tens
    of seconds for thousands of trials) wherever its schema is the one verified there; otherwise,
    for storage objects, and with ``fast=False``, through the Optuna API. Both give equal records.
    """
    if fast and isinstance(storage, str):
        from proxstudy.study import records_sql  # imports this module

        records = records_sql.read_records(storage, study_name)
        if records is not None:
            return records
    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    return [record_from_frozen_trial(t) for t in sorted(trials, key=lambda t: t.number)]


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
        point = (record.method, record.param_items)
        if point not in params_of:
            params_of[point] = dict(record.params)
            order.append(point)
            unfinished[point] = 0
        if not record.finished:
            unfinished[point] += 1
            continue
        latest[(record.method, record.param_items, record.seed)] = record
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


MINIMIZE = "minimize"
MAXIMIZE = "maximize"


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
