"""Launching and resuming sweeps: Ray Tune runs the trials, the driver records them in Optuna.

Why not Ray Tune's ``OptunaSearch``: it cannot express a grid, is not restored by
``Tuner.restore``, disables pruners, reports scheduler-stopped trials as complete, silently
appends to a study called "optuna" and leaves trials RUNNING forever when the driver dies.
Instead:

* The driver decides which points run (:class:`StaticPoints` for grid and random samplers,
  :class:`TpePoints` for TPE) and hands them to Tune through :class:`PointSearcher`, one trial
  config per (method, parameter point, seed).
* :class:`OptunaRecorder`, a ``tune.Callback`` on the driver, is the only writer of the Optuna
  storage (so SQLite works with any concurrency). One Ray Tune trial is one Optuna trial:
  created RUNNING when the trial starts (params from ``recorded_distributions``, user attr
  ``point_key``), intermediate values and per-epoch user attrs written as epochs arrive (live
  dashboards), and told COMPLETE / PRUNED (diverged) / FAIL (failed) at the end. A Tune retry
  after a worker or node failure reuses the same Optuna trial, so a point is never duplicated.
* Resume = run again: the points whose ``point_key`` has a final status are skipped; trials left
  RUNNING by a dead driver are closed as FAIL with status ``interrupted`` (not final, see
  ``records.STATUS_INTERRUPTED``) and their points run again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from proxstudy.study import records as R
from proxstudy.study.storage import check_storage, open_storage, redact, resolve_storage_url

log = logging.getLogger(__name__)

DEFAULT_MAX_RETRIES = 2
INTERRUPTED_ERROR = "interrupted: driver stopped"
#: Per-epoch user attrs are rewritten at most this often per trial (the final write is always
#: made); intermediate values are written for every epoch.
ATTR_FLUSH_S = 1.0
#: How long the driver keeps retrying a storage write through connection errors.
STORAGE_RETRY_S = 60.0


class SweepError(RuntimeError):
    """A sweep cannot start as asked (changed search space, study busy, Ray unreachable).

    The message is one line, safe to print (no passwords)."""


# ------------------------------------------------------------------------------------------
# summary


@dataclass
class SweepSummary:
    """What one ``run_sweep`` call did (counts are over the whole study after the call)."""

    study_name: str
    storage: str  # redacted URL
    created: bool  # a new study was created (else resumed)
    total: int  # trials the study's search space asks for
    completed: int
    diverged: int
    failed: int
    left: int  # not finished (e.g. interrupted by Ctrl-C)
    skipped: int  # already finished before this call, not re-run
    ran: int  # trials finished by this call
    closed_interrupted: int  # RUNNING trials of a dead driver closed at start
    wall_seconds: float  # from Ray start to the last trial
    trial_seconds: float  # sum of the run times (on their workers) of the trials this call ran
    concurrency: int  # most trials seen running at once

    @property
    def overhead_ratio(self) -> float | None:
        """wall time / (training time / concurrency): 1.0 means no overhead at all."""
        if self.trial_seconds <= 0 or self.concurrency <= 0:
            return None
        return self.wall_seconds / (self.trial_seconds / self.concurrency)


# ------------------------------------------------------------------------------------------
# which points run


def _space_api():
    from proxstudy.study import space

    return space


def _method_distributions(method_space) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """A method's sampled distributions and its fixed values (random/tpe samplers)."""
    sampled: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for name, param in method_space.params.items():
        if param.kind == "fixed":
            fixed[name] = param.values[0]
        else:
            sampled[name] = param.optuna_distribution()
    return sampled, fixed


def _sampler_seed(space) -> int:
    return int(space.sampler.get("seed", 0) or 0)


def expected_total(space) -> int:
    """How many (point, seed) trials the search space asks for."""
    return sum(expected_per_method(space).values())


def expected_per_method(space) -> dict[str, int]:
    name = space.sampler["name"]
    if name == "grid":
        counts: dict[str, int] = {m: 0 for m in space.methods}
        for point in _space_api().grid_points(space):
            counts[point.method] += 1
        return counts
    n_trials = int(space.sampler["n_trials"])
    return {m: n_trials * len(space.seeds) for m in space.methods}


def random_points(space) -> list:
    """``n_trials`` parameter points per method from Optuna's RandomSampler(seed), every seed.

    Each method gets its own sampler with the same seed, so methods sharing a distribution are
    compared on the same draws (common random numbers), and a resumed sweep redraws exactly the
    same points (same keys), so finished ones are recognised.
    """
    space_mod = _space_api()
    points = []
    for method, method_space in space.methods.items():
        sampled, fixed = _method_distributions(method_space)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=_sampler_seed(space)))
        for _ in range(int(space.sampler["n_trials"])):
            trial = study.ask(sampled)
            params = {**fixed, **trial.params}
            for seed in space.seeds:
                points.append(space_mod.Point(method=method, params=params, seed=int(seed)))
    return points


class StaticPoints:
    """A fixed list of points to run (grid, random)."""

    def __init__(self, points: list) -> None:
        self._queue = deque(points)
        self.planned = len(points)

    def next_point(self):
        return self._queue.popleft() if self._queue else PointSearcherFinished

    def point_finished(self, point, status: str, value: float | None) -> None:
        pass


class PointSearcherFinished:  # sentinel: nothing more to hand out
    pass


class TpePoints:
    """TPE, one in-memory Optuna study per method, told the seed-averaged result of each point.

    A new point is asked only when Tune has a free slot and every seed of the points asked so
    far has been handed out, so TPE sees as many finished points as possible. Diverged points
    are told PRUNED (TPE ranks them below completed ones), points where every seed failed FAIL.
    On resume, the stored finished points are told first and partially run points finish their
    remaining seeds before new points are asked.
    """

    def __init__(self, space, records: list[R.TrialRecord]) -> None:
        self._space = space
        self._space_mod = _space_api()
        self._seeds = [int(s) for s in space.seeds]
        self._n_trials = int(space.sampler["n_trials"])
        direction = space.direction
        self._studies: dict[str, optuna.Study] = {}
        self._dists: dict[str, tuple[dict, dict]] = {}
        self._asked: dict[str, int] = {}
        self._queue: deque = deque()
        # (method, param_items) -> {"trial": optuna trial or None, "results": {seed: (status, value)}}
        self._open: dict[tuple, dict] = {}
        seed = _sampler_seed(space)
        for index, (method, method_space) in enumerate(space.methods.items()):
            self._studies[method] = optuna.create_study(
                direction=direction, sampler=optuna.samplers.TPESampler(seed=seed + index)
            )
            self._dists[method] = _method_distributions(method_space)
            self._asked[method] = 0
        self._replay(records)
        self.planned = sum(
            len(self._seeds) * (self._n_trials - self._asked[m]) for m in self._studies
        ) + len(self._queue)

    def _replay(self, records: list[R.TrialRecord]) -> None:
        by_point: dict[tuple, dict[int, tuple[str, float | None]]] = defaultdict(dict)
        params_of: dict[tuple, dict] = {}
        for record in records:
            if record.method not in self._studies or not record.finished:
                continue
            key = (record.method, record.param_items)
            by_point[key][record.seed] = (record.status, record.value)
            params_of[key] = dict(record.params)
        for key, results in by_point.items():
            method = key[0]
            if self._asked[method] >= self._n_trials:
                continue
            self._asked[method] += 1
            entry = {"params": params_of[key], "trial": None, "results": dict(results)}
            missing = [s for s in self._seeds if s not in results]
            if missing:
                self._open[key] = entry
                for s in missing:
                    self._queue.append(self._space_mod.Point(method=method, params=params_of[key], seed=s))
            else:
                self._tell(method, params_of[key], None, results)

    def _tell(self, method: str, params: dict, trial, results: Mapping[int, tuple]) -> None:
        study = self._studies[method]
        sampled, _ = self._dists[method]
        statuses = [s for s, _ in results.values()]
        values = [v for s, v in results.values() if s == R.STATUS_COMPLETED and v is not None]
        if R.STATUS_DIVERGED in statuses:
            state, value = TrialState.PRUNED, None
        elif values:
            state, value = TrialState.COMPLETE, statistics.fmean(values)
        else:
            state, value = TrialState.FAIL, None
        if trial is not None:
            study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            return
        sampled_params = {k: params[k] for k in sampled if k in params}
        if len(sampled_params) != len(sampled):
            return  # a stored point from another space version: not usable as history
        try:
            study.add_trial(
                optuna.trial.create_trial(
                    state=state,
                    value=value if state == TrialState.COMPLETE else None,
                    params=sampled_params,
                    distributions=sampled,
                )
            )
        except ValueError:  # value outside the (changed) distribution
            pass

    def next_point(self):
        if self._queue:
            return self._queue.popleft()
        candidates = [m for m in self._studies if self._asked[m] < self._n_trials]
        if not candidates:
            return PointSearcherFinished
        method = min(candidates, key=lambda m: self._asked[m])  # round-robin over methods
        sampled, fixed = self._dists[method]
        trial = self._studies[method].ask(sampled)
        params = {**fixed, **trial.params}
        self._asked[method] += 1
        key = (method, tuple(sorted(params.items())))
        if key in self._open:  # TPE proposed a point already running: count it, run nothing new
            self._studies[method].tell(trial, state=TrialState.FAIL)
            return self.next_point()
        self._open[key] = {"params": params, "trial": trial, "results": {}}
        for s in self._seeds:
            self._queue.append(self._space_mod.Point(method=method, params=params, seed=s))
        return self._queue.popleft()

    def point_finished(self, point, status: str, value: float | None) -> None:
        key = (point.method, tuple(sorted(point.params.items())))
        entry = self._open.get(key)
        if entry is None:
            return
        entry["results"][int(point.seed)] = (status, value)
        if all(s in entry["results"] for s in self._seeds):
            del self._open[key]
            self._tell(point.method, entry["params"], entry["trial"], entry["results"])


# ------------------------------------------------------------------------------------------
# the study in the storage


def _normalised(document: Any) -> Any:
    return json.loads(json.dumps(document, sort_keys=True))


def _study_names(storage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies()}


def _free_name(storage, base: str) -> str:
    names = _study_names(storage)
    n = 2
    while f"{base}-{n}" in names:
        n += 1
    return f"{base}-{n}"


def _open_study(storage, space, study_name: str, force_new: bool, shown_url: str) -> tuple[str, int, bool]:
    """Create the study or check that the stored search space is the one given; returns
    (study name, study id, created)."""
    direction = StudyDirection.MAXIMIZE if space.direction == "maximize" else StudyDirection.MINIMIZE
    document = _normalised(space.document)
    if study_name in _study_names(storage):
        study_id = storage.get_study_id_from_name(study_name)
        stored = storage.get_study_user_attrs(study_id).get(R.STUDY_ATTR_SPACE)
        if stored is not None and _normalised(stored) == document:
            return study_name, study_id, False
        if not force_new:
            why = "was created from a different search space" if stored is not None else (
                "was not created by proxstudy (no stored search space)")
            raise SweepError(
                f"study {study_name!r} in {shown_url} {why} than {space.source}; "
                "rerun with --force-new to start a new study with a suffixed name, "
                "or choose another name with --study-name"
            )
        study_name = _free_name(storage, study_name)
    study_id = storage.create_new_study([direction], study_name)
    storage.set_study_user_attr(study_id, R.STUDY_ATTR_SPACE, document)
    storage.set_study_user_attr(study_id, R.STUDY_ATTR_SOURCE, str(space.source))
    return study_name, study_id, True


def _this_host() -> str:
    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def close_interrupted(storage, study_id: int) -> int:
    """Close the trials a dead driver left RUNNING (FAIL, status ``interrupted``).

    A RUNNING trial whose driver is a live process on this host means another ``proxstudy run``
    is working on the study: refuse rather than steal its trials. Drivers on other hosts cannot
    be checked; do not run two drivers on one study at once.
    """
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    host = _this_host()
    for trial in running:
        driver = str(trial.user_attrs.get(R.ATTR_DRIVER, ""))
        d_host, _, d_pid = driver.rpartition(":")
        if d_host == host and d_pid.isdigit() and int(d_pid) != os.getpid() and _pid_alive(int(d_pid)):
            raise SweepError(
                f"study {storage.get_study_name_from_id(study_id)!r} is being run by process "
                f"{d_pid} on this host; wait for it or stop it first"
            )
    for trial in running:
        storage.set_trial_user_attr(trial._trial_id, R.ATTR_STATUS, R.STATUS_INTERRUPTED)
        storage.set_trial_user_attr(trial._trial_id, R.ATTR_ERROR, INTERRUPTED_ERROR)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return len(running)


# ------------------------------------------------------------------------------------------
# progress


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """One line on stderr: done / running / diverged / failed / left and an ETA.

    The ETA is (trials left) x (mean trial time) / (trials running at once). On a terminal the
    line is rewritten in place; otherwise a line is written at most every 30 s and at the end.
    """

    def __init__(self, study_name: str, total: int, completed: int, diverged: int, failed: int,
                 enabled: bool, stream=None) -> None:
        self.study_name = study_name
        self.total = total
        self.completed, self.diverged, self.failed = completed, diverged, failed
        self.running = 0
        self.max_running = 0
        self.durations: list[float] = []
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._width = 0
        self._closing = False

    @property
    def left(self) -> int:
        return max(0, self.total - self.completed - self.diverged - self.failed - self.running)

    def line(self) -> str:
        done = self.completed + self.diverged + self.failed
        text = (f"[{self.study_name}] {done}/{self.total} done ({self.completed} completed, "
                f"{self.diverged} diverged, {self.failed} failed), {self.running} running, "
                f"{self.left} left")
        if self.durations and self.running and not self._closing:
            parallel = max(1, self.max_running)
            remaining = (self.left + self.running / 2) * statistics.fmean(self.durations) / parallel
            text += f", ETA {_fmt_duration(remaining)}"
        return text

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.5 if self._tty else 30.0
        if now - self._last < interval and not (force and self._tty):
            return
        self._last = now
        text = self.line()
        if self._tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A message of its own (a retried or crashed trial); the progress line follows it."""
        if not self.enabled:
            return
        if self._tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last = 0.0
        if self._tty:
            self.show(force=True)

    def close(self) -> None:
        if not self.enabled:
            return
        self._last = 0.0
        self._closing = True
        self.show(force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()


# ------------------------------------------------------------------------------------------
# Ray Tune side


def _trainable() -> Callable:
    from proxstudy.workers.trainable import proxprop_trainable

    return proxprop_trainable


class _Driver:
    """What the searcher and the recorder share on the driver: the storage, the points handed
    out, the progress line. Tune pickles its searcher and callbacks with the experiment state
    (for ``Tuner.restore``, which we never use: resume goes through the Optuna storage), so
    this object pickles to nothing instead of failing on the storage's locks."""

    def __init__(self, *, storage, study_id: int, space, source, distributions: Mapping,
                 device: str, cpus_per_trial: float, progress: Progress) -> None:
        self.storage = storage
        self.study_id = study_id
        self.space = space
        self.source = source
        self.distributions = distributions
        self.device = device
        self.cpus_per_trial = cpus_per_trial
        self.progress = progress
        self.points_by_key: dict[str, Any] = {}
        self.lock = threading.RLock()
        self.driver = f"{_this_host()}:{os.getpid()}"
        self.trial_seconds = 0.0
        self.ran = 0
        self.concurrency = 0

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _searcher_class():
    from ray.tune.search import Searcher

    class PointSearcher(Searcher):
        """Hands Tune one trial config per point the driver decided to run."""

        def __init__(self, driver: _Driver) -> None:
            super().__init__()
            self._driver = driver
            self._point_of: dict[str, Any] = {}

        def suggest(self, trial_id: str):
            d = self._driver
            with d.lock:
                point = d.source.next_point()
                if point is PointSearcherFinished:
                    return Searcher.FINISHED
                if point is None:
                    return None
                d.points_by_key[point.key] = point
                self._point_of[trial_id] = point
            config = dict(_space_api().trial_config(d.space, point.method, point.params, point.seed,
                                                    device=d.device))
            config["_point_key"] = point.key
            config["_cpus"] = d.cpus_per_trial  # torch threads of the trial (workers.trainable)
            return config

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            point = self._point_of.pop(trial_id, None)
            if point is None:
                return
            result = result or {}
            status = R.STATUS_FAILED if error else str(result.get("trial_status") or R.STATUS_FAILED)
            with self._driver.lock:
                self._driver.source.point_finished(point, status, R.finite_or_none(result.get("objective")))

        def save(self, checkpoint_path: str) -> None:  # resume is the storage's job
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

    return PointSearcher


class _OpenTrial:
    def __init__(self, point) -> None:
        self.optuna_id: int | None = None  # set by the writer thread when the trial is created
        self.point = point
        self.history: dict[int, dict] = {}
        self.attempts = 1
        self.last_flush = 0.0
        self.started = time.monotonic()
        self.worker: str | None = None


def _trial_error(trial) -> str:
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


def _is_connection_error(exc: BaseException) -> bool:
    """Whether a storage error is the database being unreachable (worth retrying) rather than
    a bad write. Optuna wraps SQLAlchemy's errors in StorageInternalError: look at the causes."""
    from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, (OperationalError, InterfaceError, DisconnectionError)):
            return True
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class _StorageWriter:
    """Runs the storage writes in order on one background thread of the driver.

    Tune's function trainables wait for the driver to take each result before they go on, so
    commits made inside the Tune callbacks (several per epoch; SQLite fsyncs each) would slow
    every trial down. Queued here they overlap with training; there is still a single writer.
    A storage failure is re-raised in the driver at the next submit/flush, which stops Tune.
    """

    def __init__(self) -> None:
        import queue

        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self.failure: str | None = None  # first failure, kept for the final message
        self._thread = threading.Thread(target=self._work, name="proxstudy-storage-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                if self.failure is None:
                    self._run_with_retries(job)
            except BaseException as exc:  # kept and re-raised in the driver thread
                self._error = exc
                self.failure = (f"writing to the storage failed: {type(exc).__name__}: "
                                f"{(str(exc).strip().splitlines() or [''])[0]}")
            finally:
                self._queue.task_done()

    @staticmethod
    def _run_with_retries(job: Callable[[], None]) -> None:
        """Ride out a short database outage (server restart, network blip): connection errors
        are retried with backoff for up to STORAGE_RETRY_S; anything else fails at once. A
        state change that did commit before the connection broke is not an error on retry."""
        deadline = time.monotonic() + STORAGE_RETRY_S
        delay = 0.5
        retried = False
        while True:
            try:
                job()
                return
            except optuna.exceptions.UpdateFinishedTrialError:
                if retried:
                    return
                raise
            except Exception as exc:
                if not _is_connection_error(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("storage unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
                retried = True

    def _raise(self) -> None:
        if self._error is not None:  # kept: every later call fails too, so Tune stops
            raise SweepError(self.failure) from self._error

    def __getstate__(self) -> dict:  # pickled with Tune's experiment state: see _Driver
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def submit(self, job: Callable[[], None]) -> None:
        self._raise()
        self._queue.put(job)

    def flush(self) -> None:
        self._queue.join()
        self._raise()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)


def _recorder_class():
    from ray.tune import Callback

    class OptunaRecorder(Callback):
        """Writes every trial through Optuna's storage API; runs on the driver only.

        Counting and bookkeeping happen in Tune's callbacks; the writes themselves go through
        a :class:`_StorageWriter` so that they never hold up Tune's event loop.
        """

        def __init__(self, driver: _Driver) -> None:
            self._d = driver
            self._w = _StorageWriter()
            self.open: dict[str, _OpenTrial] = {}

        # -- writes (run on the writer thread, in submission order)
        def _create(self, entry: _OpenTrial) -> None:
            d, point = self._d, entry.point
            params = {R.PARAM_METHOD: point.method, R.PARAM_SEED: int(point.seed), **point.params}
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
                    R.ATTR_POINT_KEY: point.key,
                    R.ATTR_STATUS: R.STATUS_RUNNING,
                    R.ATTR_DRIVER: d.driver,
                    R.ATTR_ATTEMPTS: 1,
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
                for name, values in R.history_to_user_attrs(history).items():
                    storage.set_trial_user_attr(entry.optuna_id, name, values)

            entry.last_flush = time.monotonic()
            return job

        def _attr_job(self, entry: _OpenTrial, name: str, value: Any) -> Callable[[], None]:
            storage = self._d.storage
            return lambda: storage.set_trial_user_attr(entry.optuna_id, name, value)

        def _finish(self, trial, status: str, value: float | None, error: str | None,
                    extra: Mapping[str, Any]) -> None:
            d = self._d
            entry = self.open.pop(trial.trial_id, None)
            if entry is None:
                return
            if status == R.STATUS_COMPLETED and value is None:
                status = R.STATUS_DIVERGED  # a completed run without a finite objective ranks last
            self._w.submit(self._series_job(entry))
            for name in (R.ATTR_DEVICE, R.ATTR_DIVERGED_EPOCH):
                if extra.get(name) is not None:
                    self._w.submit(self._attr_job(entry, name, extra[name]))
            if error:
                self._w.submit(self._attr_job(entry, R.ATTR_ERROR, str(error)[-4000:]))
            self._w.submit(self._attr_job(entry, R.ATTR_STATUS, status))
            state = R.STATE_FOR_STATUS[status]
            values = [value] if state == TrialState.COMPLETE else None
            storage = d.storage
            self._w.submit(lambda: storage.set_trial_state_values(entry.optuna_id, state, values))
            # The trial's own run time on its worker (Tune's time_total_s), else its epochs.
            worker_seconds = extra.get("time_total_s")
            d.trial_seconds += float(worker_seconds) if worker_seconds else sum(
                h.get("epoch_seconds") or 0.0 for h in entry.history.values())
            d.ran += 1
            bar = d.progress
            bar.durations.append(time.monotonic() - entry.started)
            bar.running = max(0, bar.running - 1)
            if status == R.STATUS_COMPLETED:
                bar.completed += 1
            elif status == R.STATUS_DIVERGED:
                bar.diverged += 1
            else:
                bar.failed += 1
            bar.show(force=True)

        # -- Tune hooks
        def on_trial_start(self, iteration, trials, trial, **info):
            d = self._d
            with d.lock:
                entry = self.open.get(trial.trial_id)
                if entry is not None:  # a retry after a worker/node failure: same Optuna trial
                    entry.attempts += 1
                    entry.history.clear()
                    entry.worker = None
                    entry.started = time.monotonic()
                    self._w.submit(self._attr_job(entry, R.ATTR_ATTEMPTS, entry.attempts))
                    return
                entry = _OpenTrial(d.points_by_key[trial.config["_point_key"]])
                self.open[trial.trial_id] = entry
                self._w.submit(lambda: self._create(entry))
                bar = d.progress
                bar.running += 1
                bar.max_running = max(bar.max_running, bar.running)
                d.concurrency = max(d.concurrency, bar.running)
                bar.show()

        def on_trial_result(self, iteration, trials, trial, result, **info):
            d = self._d
            with d.lock:
                entry = self.open.get(trial.trial_id)
                if entry is None or result.get("epoch") is None:
                    return  # e.g. the final report of a trial that failed before epoch 0
                epoch = int(result["epoch"])
                entry.history[epoch] = {k: result.get(k) for k in ("epoch", *R.EPOCH_SERIES)}
                if entry.worker is None:
                    entry.worker = f"{result.get('hostname')} {result.get('node_ip')} pid {result.get('pid')}"
                    self._w.submit(self._attr_job(entry, R.ATTR_WORKER, entry.worker))
                objective = R.finite_or_none(result.get("objective"))
                if objective is not None:
                    storage = d.storage
                    self._w.submit(lambda: storage.set_trial_intermediate_value(entry.optuna_id, epoch, objective))
                final = result.get("trial_status") in R.FINAL_STATUSES
                if not final and time.monotonic() - entry.last_flush >= ATTR_FLUSH_S:
                    self._w.submit(self._series_job(entry))
                d.progress.show()

        def on_trial_complete(self, iteration, trials, trial, **info):
            with self._d.lock:
                last = trial.last_result or {}
                status = last.get("trial_status")
                error = last.get("error")
                if status not in R.FINAL_STATUSES:
                    status = R.STATUS_FAILED
                    error = error or "the trial ended without reporting a final status"
                self._finish(trial, status, R.finite_or_none(last.get("objective")), error, last)

        def on_trial_recover(self, iteration, trials, trial, **info):
            with self._d.lock:
                entry = self.open.get(trial.trial_id)
                label = entry.point.key if entry else trial.trial_id
                attempt = (entry.attempts if entry else 1) + 1
                self._d.progress.note(f"proxstudy: trial {label}: {_first_line(_trial_error(trial))}; "
                                      f"retrying (attempt {attempt})")

        def on_trial_error(self, iteration, trials, trial, **info):
            with self._d.lock:
                error = _trial_error(trial)
                entry = self.open.get(trial.trial_id)
                if entry is not None:
                    self._d.progress.note(f"proxstudy: trial {entry.point.key} failed: {_first_line(error)}")
                self._finish(trial, R.STATUS_FAILED, None, error, trial.last_result or {})

        def on_step_end(self, iteration, trials, **info):
            self._w.submit(lambda: None)  # surfaces a storage failure promptly
            self._d.progress.show()

        @property
        def storage_failure(self) -> str | None:
            return self._w.failure

        def close(self) -> int:
            """Wait for the queued writes, then close the trials still open because Tune stopped
            early (Ctrl-C) as interrupted; returns how many."""
            d = self._d
            with d.lock:
                entries = list(self.open.values())
                self.open.clear()
                for entry in entries:
                    self._w.submit(self._series_job(entry))
                    self._w.submit(self._attr_job(entry, R.ATTR_STATUS, R.STATUS_INTERRUPTED))
                    self._w.submit(self._attr_job(entry, R.ATTR_ERROR, INTERRUPTED_ERROR))
                    storage = d.storage
                    self._w.submit(lambda e=entry: e.optuna_id is not None and
                                   storage.set_trial_state_values(e.optuna_id, TrialState.FAIL))
                try:
                    self._w.flush()
                finally:
                    self._w.close()
                return len(entries)

    return OptunaRecorder


def _quiet_ray_env(verbose: bool) -> None:
    """Fewer files and less noise from Tune; set before Ray is imported where possible."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1" if verbose else "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    # The new output engine prints an experiment table even at verbose=0; the legacy one obeys.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1" if verbose else "0")
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "60")
    if not verbose:
        # A retried or failed trial gets one line from the recorder, not Tune's traceback.
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        os.environ.setdefault("RAY_LOG_TO_STDERR", "0")
        os.environ.setdefault("TUNE_MAX_LEN_IDENTIFIER", "40")


def _check_ray_address(address: str) -> None:
    """Fail in seconds, not minutes, on a wrong ``--ray-address`` host:port."""
    if address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--ray-address {address!r}: expected HOST:PORT of a Ray head (GCS port)")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise SweepError(f"--ray-address {address}: cannot reach the Ray head ({exc.strerror or exc})") from None


def _start_ray(ray_address: str | None, verbose: bool) -> bool:
    """Connect to / start Ray; returns whether this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if ray_address:
        _check_ray_address(ray_address)
        try:
            ray.init(address=ray_address, **kwargs)
        except Exception as exc:
            raise SweepError(f"--ray-address {ray_address}: cannot join the Ray cluster: {exc}") from None
    else:
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, **kwargs)
    return True


# ------------------------------------------------------------------------------------------
# validation before anything is written


def _example_params(method_space) -> dict:
    out = {}
    for name, param in method_space.params.items():
        if param.values:
            out[name] = param.values[0]
        else:
            out[name] = param.low if not param.integer else int(param.low)
    return out


def validate_before_writing(space) -> None:
    """Everything that can be wrong with the input, checked before the storage is touched:
    a trial config per method validates, and the data files are there (or downloadable)."""
    from proxstudy.workers.config import validate_trial_config
    from proxstudy.workers.data import check_available

    space_mod = _space_api()
    for method, method_space in space.methods.items():
        config = space_mod.trial_config(space, method, _example_params(method_space), int(space.seeds[0]))
        validate_trial_config(config, str(space.source))
    check_available(space.dataset)


def load_space_any(space_or_path):
    """A SearchSpace from a path, a mapping (the document) or a SearchSpace."""
    space_mod = _space_api()
    if isinstance(space_or_path, (str, os.PathLike)):
        return space_mod.load_space(space_or_path)
    if isinstance(space_or_path, Mapping):
        return space_mod.parse_space(space_or_path)
    return space_or_path


# ------------------------------------------------------------------------------------------
# the public entry point


def run_sweep(
    space_or_path,
    storage: str | None = None,
    study_name: str | None = None,
    ray_address: str | None = None,
    max_concurrent: int | None = None,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    force_new: bool = False,
    progress: bool = True,
    *,
    verbose: bool = False,
    max_retries: int = DEFAULT_MAX_RETRIES,
    device: str = "auto",
) -> SweepSummary:
    """Run (or resume) the sweep of a search space; returns what happened.

    Raises ``workers.config.ConfigError`` / ``workers.data.DataError`` for bad input,
    ``study.storage.StorageError`` for an unusable storage and :class:`SweepError` for a study
    that cannot be (re)run as asked -- all before anything is written to the storage.
    """
    space = load_space_any(space_or_path)
    validate_before_writing(space)
    url = resolve_storage_url(storage)
    shown = redact(url)
    check_storage(url, must_exist=False)
    if max_concurrent is not None and max_concurrent < 1:
        raise SweepError("--max-concurrent must be >= 1")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise SweepError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")

    if ray_address:
        _check_ray_address(ray_address)  # before the study is created
    _quiet_ray_env(verbose)
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    rdb = open_storage(url)
    name, study_id, created = _open_study(rdb, space, study_name or space.study_name, force_new, shown)
    closed = 0 if created else close_interrupted(rdb, study_id)

    records = [] if created else R.load_records(rdb, name)
    finished = {r.point_key: r for r in records if r.finished and r.point_key}
    sampler = space.sampler["name"]
    if sampler == "grid":
        source: Any = StaticPoints([p for p in _space_api().grid_points(space) if p.key not in finished])
    elif sampler == "random":
        source = StaticPoints([p for p in random_points(space) if p.key not in finished])
    elif sampler == "tpe":
        source = TpePoints(space, records)
    else:  # load_space validates this; a clear message should it ever slip through
        raise SweepError(f"{space.source}: sampler.name: unknown sampler {sampler!r}")

    total = expected_total(space)
    counts = {s: 0 for s in R.FINAL_STATUSES}
    for record in finished.values():
        counts[record.status] += 1
    bar = Progress(name, total, counts[R.STATUS_COMPLETED], counts[R.STATUS_DIVERGED],
                   counts[R.STATUS_FAILED], enabled=progress)
    summary_kwargs = dict(study_name=name, storage=shown, created=created, total=total,
                          skipped=len(finished), closed_interrupted=closed)
    if progress:
        verb = "created" if created else "resuming"
        sys.stderr.write(f"proxstudy: study {name!r} {verb} in {shown}: {source.planned} trial(s) to run, "
                         f"{len(finished)} already finished\n")
    if source.planned == 0:
        return SweepSummary(**summary_kwargs, completed=counts[R.STATUS_COMPLETED],
                            diverged=counts[R.STATUS_DIVERGED], failed=counts[R.STATUS_FAILED],
                            left=max(0, total - len(finished)), ran=0, wall_seconds=0.0,
                            trial_seconds=0.0, concurrency=0)

    started_ray = _start_ray(ray_address, verbose)
    t0 = time.monotonic()
    tune_dir = Path(tempfile.mkdtemp(prefix="proxstudy-tune-"))
    recorder = driver = None
    try:
        from ray import tune

        driver = _Driver(storage=rdb, study_id=study_id, space=space, source=source,
                         distributions=_space_api().recorded_distributions(space), device=device,
                         cpus_per_trial=float(cpus_per_trial), progress=bar)
        recorder = _recorder_class()(driver)
        searcher = _searcher_class()(driver)
        resources = {"cpu": float(cpus_per_trial), "gpu": float(gpus_per_trial)}
        tuner = tune.Tuner(
            tune.with_resources(_trainable(), resources),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=source.planned,
                max_concurrent_trials=max_concurrent,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,  # no process start + torch import per trial
            ),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=str(tune_dir),
                callbacks=[recorder],
                failure_config=tune.FailureConfig(max_failures=max_retries),
                verbose=2 if verbose else 0,
                log_to_file=not verbose,
            ),
        )
        if not verbose:
            for logger_name in ("ray", "ray.tune", "ray.train", "ray.air"):
                logging.getLogger(logger_name).setLevel(logging.ERROR)
        # With a custom searcher Tune keeps a single trial pending, which starts trials one by
        # one; let it queue as many as the cluster can run at once.
        pending = max_concurrent or _cluster_slots(cpus_per_trial, gpus_per_trial)
        previous = os.environ.get("TUNE_MAX_PENDING_TRIALS_PG")
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(pending)
        try:
            tuner.fit()
            if recorder.storage_failure:  # Tune may log a callback's exception and go on
                raise SweepError(f"{recorder.storage_failure}; the finished trials are stored, "
                                 "run the same command again to resume")
        except SweepError:
            raise
        except Exception as exc:
            if recorder.storage_failure:  # Tune wraps what our callback raised: say it plainly
                raise SweepError(f"{recorder.storage_failure}; the finished trials are stored, "
                                 "run the same command again to resume") from exc
            raise
        finally:
            if previous is None:
                os.environ.pop("TUNE_MAX_PENDING_TRIALS_PG", None)
            else:
                os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = previous
    finally:
        if recorder is not None:
            try:
                recorder.close()
            except SweepError:
                if sys.exc_info()[0] is None:  # no exception in flight: this is the error
                    raise
        bar.running = 0
        bar.close()
        shutil.rmtree(tune_dir, ignore_errors=True)
        if started_ray:
            import ray

            ray.shutdown()
    wall = time.monotonic() - t0
    left = max(0, total - bar.completed - bar.diverged - bar.failed)
    return SweepSummary(**summary_kwargs, completed=bar.completed, diverged=bar.diverged,
                        failed=bar.failed, left=left, ran=driver.ran, wall_seconds=wall,
                        trial_seconds=driver.trial_seconds, concurrency=driver.concurrency)


def _cluster_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster can run at once right now (at least 1)."""
    import ray

    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1.0) // cpus_per_trial) if cpus_per_trial > 0 else 1
    if gpus_per_trial > 0:
        slots = min(slots, int(resources.get("GPU", 0.0) // gpus_per_trial))
    return max(1, slots)


def _trial_dirname(trial) -> str:
    """Short trial directories (Tune's default names embed the whole config)."""
    return str(trial.trial_id)
