"""The Optuna recorder of a sweep: a Tune callback on the driver, the only writer of the storage.

One Ray Tune trial is one Optuna trial: created RUNNING when the trial starts (params from
``recorded_distributions``, user attr ``point_key``), intermediate values and per-epoch user
attrs written as epochs arrive (live dashboards), and told COMPLETE / PRUNED (diverged) / FAIL
(failed) at the end. A Tune retry after a worker or node failure reuses the same Optuna trial,
so a point is never duplicated. Being the only writer, it makes SQLite work with any
concurrency. Counting and bookkeeping happen in Tune's callbacks; the writes themselves go
through a :class:`StorageWriter` so that they never hold up Tune's event loop.

A fused Tune trial (``--fuse K``, workers.fused_trainable) holds several points: each member is
its own Optuna trial as above, created when the fused trial starts, given its epochs from the
member reports and finished as soon as its own report is final. Its per-epoch lists are
rewritten every K x ATTR_FLUSH_S (K members of the fused trial): a fused trial's lists cost the
storage as many writes per second as one trial's (each list is a commit, and K members' epochs
arrive K times as fast), which the single writer can keep up with; intermediate values are still
written for every epoch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from ray.tune import Callback
from ray.tune.experiment import Trial

from proxstudy.errors import SweepError
from proxstudy.study.driver_state import DriverState
from proxstudy.study.opening import INTERRUPTED_ERROR
from proxstudy.study.records import (
    ATTR_ATTEMPTS,
    ATTR_DEVICE,
    ATTR_DIVERGED_EPOCH,
    ATTR_DRIVER,
    ATTR_ERROR,
    ATTR_POINT_KEY,
    ATTR_STATUS,
    ATTR_WORKER,
    EPOCH_SERIES,
    FINAL_STATUSES,
    PARAM_METHOD,
    PARAM_SEED,
    STATE_FOR_STATUS,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_RUNNING,
    finite_or_none,
    history_to_user_attrs,
)
from proxstudy.study.space import Point
from proxstudy.study.storage_writer import StorageWriter
from proxstudy.workers.fused_trainable import FUSED_MEMBERS_KEY, member_reports
from proxstudy.workers.trainable import POINT_KEY
from proxstudy.workers.vocabulary import (
    EPOCH,
    EPOCH_SECONDS,
    OBJECTIVE,
    REPORT_DEVICE,
    REPORT_DIVERGED_EPOCH,
    REPORT_ERROR,
    REPORT_STATUS,
)

__all__ = ["ATTR_FLUSH_S", "OptunaRecorder"]

#: Per-epoch user attrs are rewritten at most this often per trial (the final write is always
#: made); intermediate values are written for every epoch.
ATTR_FLUSH_S = 1.0


class _OpenTrial:
    """A trial between its start and its end, as the recorder keeps it."""

    def __init__(self, point: Point, flush_every: float = ATTR_FLUSH_S) -> None:
        self.optuna_id: int | None = None  # set by the writer thread when the trial is created
        self.point = point
        self.flush_every = flush_every  # seconds between two rewrites of the per-epoch lists
        self.history: dict[int, dict[str, Any]] = {}
        self.attempts = 1
        self.last_flush = 0.0
        self.started = time.monotonic()
        self.worker: str | None = None


def _trial_error(trial: Trial) -> str:
    """What Tune recorded about a trial's failure (worker crash, lost node, OOM kill)."""
    try:
        exc = trial.get_error()
        if exc is not None and str(exc).strip():
            return str(exc).strip()
    except Exception:  # the error file may be unreadable; the state still matters
        pass
    return "the trial's worker process failed (see the Ray logs)"


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    # Ray's errors start with a generic line ("Failure # 1 ..."), the cause is at the end
    for line in reversed(lines):
        if "Error" in line or "error" in line:
            return line[:300]
    return (lines[-1] if lines else "")[:300]


class OptunaRecorder(Callback):
    """Writes every trial through Optuna's storage API; runs on the driver only."""

    def __init__(self, driver: DriverState) -> None:
        self._d = driver
        self._w = StorageWriter()
        self.open: dict[str, _OpenTrial] = {}
        self._members_started: dict[str, set[str]] = {}  # fused trial id -> its members' open ids

    # -- writes (run on the writer thread, in submission order)
    def _create(self, entry: _OpenTrial) -> None:
        d, point = self._d, entry.point
        params = {PARAM_METHOD: point.method, PARAM_SEED: int(point.seed), **point.params}
        missing = [n for n in params if n not in d.distributions]
        if missing:
            raise SweepError(f"no recorded distribution for param(s) {missing}")
        template = FrozenTrial(
            number=0,
            state=TrialState.RUNNING,
            value=None,
            datetime_start=datetime.now(),
            datetime_complete=None,
            params=params,
            distributions={n: d.distributions[n] for n in params},
            user_attrs={
                ATTR_POINT_KEY: point.key,
                ATTR_STATUS: STATUS_RUNNING,
                ATTR_DRIVER: d.driver,
                ATTR_ATTEMPTS: 1,
            },
            system_attrs={},
            intermediate_values={},
            trial_id=0,
        )
        entry.optuna_id = d.storage.create_new_trial(d.study_id, template_trial=template)

    def _series_job(self, entry: _OpenTrial) -> Callable[[], None]:
        history = [dict(entry.history[e]) for e in sorted(entry.history)]
        storage = self._d.storage

        def job() -> None:
            for name, values in history_to_user_attrs(history).items():
                storage.set_trial_user_attr(_created(entry), name, values)

        entry.last_flush = time.monotonic()
        return job

    def _attr_job(self, entry: _OpenTrial, name: str, value: Any) -> Callable[[], None]:
        storage = self._d.storage
        return lambda: storage.set_trial_user_attr(_created(entry), name, value)

    def _finish(self, open_id: str, status: str, value: float | None, error: str | None,
                extra: Mapping[str, Any]) -> None:
        d = self._d
        entry = self.open.pop(open_id, None)
        if entry is None:
            return
        if status == STATUS_COMPLETED and value is None:
            status = STATUS_DIVERGED  # a completed run without a finite objective ranks last
        self._w.submit(self._series_job(entry))
        for report_key, attr in ((REPORT_DEVICE, ATTR_DEVICE), (REPORT_DIVERGED_EPOCH, ATTR_DIVERGED_EPOCH)):
            if extra.get(report_key) is not None:
                self._w.submit(self._attr_job(entry, attr, extra[report_key]))
        if error:
            self._w.submit(self._attr_job(entry, ATTR_ERROR, str(error)[-4000:]))
        self._w.submit(self._attr_job(entry, ATTR_STATUS, status))
        state = STATE_FOR_STATUS[status]
        values = [value] if state == TrialState.COMPLETE and value is not None else None
        storage = d.storage
        self._w.submit(lambda: storage.set_trial_state_values(_created(entry), state, values))
        # The trial's own run time on its worker (Tune's time_total_s), else its epochs.
        worker_seconds = extra.get("time_total_s")
        d.trial_seconds += float(worker_seconds) if worker_seconds else sum(
            h.get(EPOCH_SECONDS) or 0.0 for h in entry.history.values())
        d.ran += 1
        d.progress.trial_finished(status, time.monotonic() - entry.started)
        d.progress.show(force=True)

    # -- Tune hooks
    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        d = self._d
        if FUSED_MEMBERS_KEY in trial.config:
            self._start_members(trial)
            return
        with d.lock:
            entry = self.open.get(trial.trial_id)
            if entry is not None:  # a retry after a worker/node failure: same Optuna trial
                self._retry(entry)
                return
            new = _OpenTrial(d.points_by_key[trial.config[POINT_KEY]])
            self.open[trial.trial_id] = new
            self._w.submit(lambda: self._create(new))
            d.progress.trial_started()
            d.concurrency = max(d.concurrency, d.progress.running)
            d.progress.show()

    def _retry(self, entry: _OpenTrial) -> None:
        """The trial runs again: same Optuna trial, one more attempt, its epochs anew."""
        entry.attempts += 1
        entry.history.clear()
        entry.worker = None
        entry.started = time.monotonic()
        self._w.submit(self._attr_job(entry, ATTR_ATTEMPTS, entry.attempts))

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict,
                        **info: Any) -> None:
        d = self._d
        if FUSED_MEMBERS_KEY in trial.config:
            self._member_results(trial, result)
            return
        with d.lock:
            entry = self.open.get(trial.trial_id)
            if entry is None:
                return
            self._epoch(entry, result, result)
            d.progress.show()

    def _epoch(self, entry: _OpenTrial, metrics: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        """One reported epoch of a trial: its history, intermediate value and worker (from the
        Tune result) and, at most every ATTR_FLUSH_S, the per-epoch lists."""
        if metrics.get(EPOCH) is None:
            return  # e.g. the final report of a trial that failed before epoch 0
        epoch = int(metrics[EPOCH])
        entry.history[epoch] = {k: metrics.get(k) for k in (EPOCH, *EPOCH_SERIES)}
        if entry.worker is None:
            entry.worker = f"{result.get('hostname')} {result.get('node_ip')} pid {result.get('pid')}"
            self._w.submit(self._attr_job(entry, ATTR_WORKER, entry.worker))
        objective = finite_or_none(metrics.get(OBJECTIVE))
        if objective is not None:
            storage = self._d.storage
            self._w.submit(lambda: storage.set_trial_intermediate_value(_created(entry), epoch, objective))
        final = metrics.get(REPORT_STATUS) in FINAL_STATUSES
        if not final and time.monotonic() - entry.last_flush >= entry.flush_every:
            self._w.submit(self._series_job(entry))

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if FUSED_MEMBERS_KEY in trial.config:
            self._end_members(trial, "the fused trial ended without reporting this member's final status")
            return
        with self._d.lock:
            last = trial.last_result or {}
            status = last.get(REPORT_STATUS)
            error = last.get(REPORT_ERROR)
            if status not in FINAL_STATUSES:
                status = STATUS_FAILED
                error = error or "the trial ended without reporting a final status"
            self._finish(trial.trial_id, status, finite_or_none(last.get(OBJECTIVE)), error, last)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        with self._d.lock:
            if FUSED_MEMBERS_KEY in trial.config:
                open_members = [self.open[i] for i in _member_ids(trial) if i in self.open]
                self._d.progress.note(f"proxstudy: fused trial {trial.trial_id}: {_first_line(_trial_error(trial))}; "
                                      f"retrying its {len(open_members)} unfinished member(s)")
                return
            entry = self.open.get(trial.trial_id)
            label = entry.point.key if entry else trial.trial_id
            attempt = (entry.attempts if entry else 1) + 1
            self._d.progress.note(f"proxstudy: trial {label}: {_first_line(_trial_error(trial))}; "
                                  f"retrying (attempt {attempt})")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if FUSED_MEMBERS_KEY in trial.config:
            error = _trial_error(trial)
            self._d.progress.note(f"proxstudy: fused trial {trial.trial_id} failed: {_first_line(error)}")
            self._end_members(trial, error)
            return
        with self._d.lock:
            error = _trial_error(trial)
            entry = self.open.get(trial.trial_id)
            if entry is not None:
                self._d.progress.note(f"proxstudy: trial {entry.point.key} failed: {_first_line(error)}")
            self._finish(trial.trial_id, STATUS_FAILED, None, error, trial.last_result or {})

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._w.submit(lambda: None)  # surfaces a storage failure promptly
        self._d.progress.show()

    # -- fused trials: each member (workers.fused_trainable) is a trial of its own, keyed
    # "<tune trial id>:<point key>" in self.open, created when the fused trial starts, given
    # its epochs from the member reports and finished as soon as its report is final
    def _start_members(self, trial: Trial) -> None:
        d = self._d
        with d.lock:
            members = trial.config[FUSED_MEMBERS_KEY]
            for open_id, member in zip(_member_ids(trial), members, strict=True):
                entry = self.open.get(open_id)
                if entry is not None:  # a retry: the members not finished yet run again
                    self._retry(entry)
                    continue
                if self._started_before(trial, open_id):
                    continue  # finished in an earlier attempt: recorded once, not re-opened
                new = _OpenTrial(d.points_by_key[member[POINT_KEY]], ATTR_FLUSH_S * len(members))
                self.open[open_id] = new
                self._w.submit(functools.partial(self._create, new))
                d.progress.trial_started()
            d.concurrency = max(d.concurrency, d.progress.running)
            d.progress.show()

    def _started_before(self, trial: Trial, open_id: str) -> bool:
        started = self._members_started.setdefault(trial.trial_id, set())
        if open_id in started:
            return True
        started.add(open_id)
        return False

    def _member_results(self, trial: Trial, result: Mapping[str, Any]) -> None:
        with self._d.lock:
            for report in member_reports(result):
                open_id = _member_id(trial, str(report.get(POINT_KEY)))
                entry = self.open.get(open_id)
                if entry is None:
                    continue  # finished in an earlier attempt of this fused trial
                self._epoch(entry, report, result)
                status = report.get(REPORT_STATUS)
                if status in FINAL_STATUSES:
                    self._finish(open_id, str(status), finite_or_none(report.get(OBJECTIVE)),
                                 report.get(REPORT_ERROR), report)
            self._d.progress.show()

    def _end_members(self, trial: Trial, error: str) -> None:
        """The fused trial is over: members still open failed with ``error``."""
        with self._d.lock:
            for open_id in _member_ids(trial):
                if open_id in self.open:
                    self._finish(open_id, STATUS_FAILED, None, error, {})

    @property
    def storage_failure(self) -> str | None:
        return self._w.failure

    def close(self) -> int:
        """Wait for the queued writes, then close the trials still open because Tune stopped
        early (Ctrl-C) as interrupted; returns how many."""
        with self._d.lock:
            entries = list(self.open.values())
            self.open.clear()
            for entry in entries:
                self._w.submit(self._series_job(entry))
                self._w.submit(self._attr_job(entry, ATTR_STATUS, STATUS_INTERRUPTED))
                self._w.submit(self._attr_job(entry, ATTR_ERROR, INTERRUPTED_ERROR))
                self._w.submit(self._close_job(entry))
            try:
                self._w.flush()
            finally:
                self._w.close()
            return len(entries)

    def _close_job(self, entry: _OpenTrial) -> Callable[[], None]:
        storage = self._d.storage

        def job() -> None:
            if entry.optuna_id is not None:  # its creation may have failed
                storage.set_trial_state_values(entry.optuna_id, TrialState.FAIL)

        return job


def _member_id(trial: Trial, point_key: str) -> str:
    return f"{trial.trial_id}:{point_key}"


def _member_ids(trial: Trial) -> list[str]:
    return [_member_id(trial, str(member[POINT_KEY])) for member in trial.config[FUSED_MEMBERS_KEY]]


def _created(entry: _OpenTrial) -> int:
    """The Optuna id of a trial whose creation was queued before this write."""
    assert entry.optuna_id is not None, "a write was queued before the trial's creation"
    return entry.optuna_id
