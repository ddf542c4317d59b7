"""Launching and resuming sweeps: Ray Tune runs the trials, the driver records them in Optuna.

Why not Ray Tune's ``OptunaSearch``: it cannot express a grid, is not restored by
``Tuner.restore``, disables pruners, reports scheduler-stopped trials as complete, silently
appends to a study called "optuna" and leaves trials RUNNING forever when the driver dies.
Instead the driver decides which points run (study.points), opens or resumes the study
(study.opening), hands the points to Tune one trial config each (study.searcher), and records
every trial itself (study.recorder, the only writer of the storage).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from optuna.storages import BaseStorage
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import Searcher
from sqlalchemy.exc import SQLAlchemyError

from proxstudy.errors import SweepError, UsageError
from proxstudy.study.driver_state import DriverState
from proxstudy.study.fused_searcher import FusedPointSearcher
from proxstudy.study.lease import Lease, acquire_lease
from proxstudy.study.opening import close_interrupted, open_study
from proxstudy.study.points import expected_total, point_source
from proxstudy.study.progress import Progress
from proxstudy.study.ray_cluster import (
    check_ray_address,
    check_trial_fits,
    cluster_nodes,
    cluster_slots,
    local_node,
    pending_trials_limit,
    quiet_ray,
    quiet_ray_loggers,
    start_ray,
)
from proxstudy.study.reader import load_records
from proxstudy.study.recorder import OptunaRecorder
from proxstudy.study.records import STATUS_COMPLETED, STATUS_DIVERGED, STATUS_FAILED
from proxstudy.study.searcher import PointSearcher
from proxstudy.study.space import SearchSpace, as_search_space, check_study_name, recorded_distributions
from proxstudy.study.storage import (
    check_storage,
    open_storage,
    redact,
    resolve_storage_url,
    storage_engine,
    write_failure,
)
from proxstudy.workers.config import check_device_present, validate_device
from proxstudy.workers.data import check_available
from proxstudy.workers.fused_trainable import fused_trainable
from proxstudy.workers.trainable import proxprop_trainable

__all__ = ["DEFAULT_MAX_RETRIES", "SweepError", "SweepOptions", "SweepSummary", "run_sweep"]

DEFAULT_MAX_RETRIES = 2


@dataclass(frozen=True)
class SweepOptions:
    """How to run a sweep (the options of ``proxstudy run``); checked when made."""

    storage: str | None = None  # SQLAlchemy URL; default $PROXSTUDY_STORAGE, else ./proxstudy.db
    study_name: str | None = None  # default: the search space's `study`
    ray_address: str | None = None  # HOST:PORT of a Ray head to join; default: start a local Ray
    max_concurrent: int | None = None  # trials at once; default: as many as the resources allow
    cpus_per_trial: float = 1.0  # Ray's CPU reservation and torch's threads per trial
    gpus_per_trial: float = 0.0
    force_new: bool = False  # the study exists with another search space: start a suffixed one
    progress: bool = True  # the progress line on stderr
    verbose: bool = False  # Ray's own output
    max_retries: int = DEFAULT_MAX_RETRIES  # of a trial whose worker or node died
    device: str = "auto"  # of every trial: auto | cpu | cuda | cuda:N
    fuse: int | None = None  # members per fused trial; None (auto, the default): from the model and
    # the device (workers.fused_plan.default_fuse_size); 1: one point per trial, unfused

    wait_for_resources: bool = False  # an autoscaling cluster: wait for nodes that fit a trial

    def __post_init__(self) -> None:
        """Every option is checked here, before anything is read or written."""
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise UsageError(f"--max-concurrent {self.max_concurrent}: must be >= 1")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise UsageError(f"--cpus-per-trial {self.cpus_per_trial}: must be a number > 0")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise UsageError(f"--gpus-per-trial {self.gpus_per_trial}: must be a number >= 0")
        if self.max_retries < 0:
            raise UsageError(f"--max-retries {self.max_retries}: must be >= 0")
        if self.study_name is not None:
            check_study_name(self.study_name, "<command line>", "--study-name")
        validate_device(self.device, "<command line>", "--device")
        if self.fuse is not None and (isinstance(self.fuse, bool) or not isinstance(self.fuse, int) or self.fuse < 1):
            raise UsageError(f"--fuse {self.fuse!r}: must be an integer >= 1 or auto")


@dataclass
class SweepSummary:
    """What one ``run_sweep`` call did (counts are over the whole study after the call)."""

    study_name: str
    storage: str  # redacted URL
    created: bool  # a new study was created (else resumed)
    total: int  # trials the study's search space asks for
    skipped: int  # already finished before this call, not re-run
    closed_interrupted: int  # RUNNING trials of a dead driver closed at start
    completed: int = 0
    diverged: int = 0
    failed: int = 0
    left: int = 0  # not finished (e.g. interrupted by Ctrl-C)
    ran: int = 0  # trials finished by this call
    wall_seconds: float = 0.0  # from Ray start to the last trial
    trial_seconds: float = 0.0  # sum of the run times (on their workers) of the trials this call ran
    concurrency: int = 0  # most trials seen running at once

    @property
    def overhead_ratio(self) -> float | None:
        """wall time / (training time / concurrency): 1.0 means no overhead at all."""
        if self.trial_seconds <= 0 or self.concurrency <= 0:
            return None
        return self.wall_seconds / (self.trial_seconds / self.concurrency)


def run_sweep(space: SearchSpace | str | os.PathLike[str] | Mapping,
              options: SweepOptions | None = None) -> SweepSummary:
    """Run (or resume) the sweep of a search space (a SearchSpace, a YAML path or the document);
    returns what happened.

    Bad input raises before anything is written to the storage: ``ConfigError`` / ``DataError``
    for the search space and its data, ``StorageError`` for an unusable storage,
    :class:`SweepError` for a study that cannot be (re)run as asked; all are ProxstudyErrors.
    """
    options = options or SweepOptions()
    space = as_search_space(space)
    name = options.study_name or space.study_name
    check_available(space.dataset, space.source, "dataset")
    url = resolve_storage_url(options.storage)
    shown = redact(url)
    check_storage(url, must_exist=False)
    quiet_ray(options.verbose)
    started_ray = False
    if options.ray_address:
        check_ray_address(options.ray_address)  # before the study is created
        started_ray = start_ray(options.ray_address, options.verbose)
    try:
        # The request against what the cluster has, before anything is written.
        nodes = cluster_nodes() if ray.is_initialized() else [local_node()]
        waiting = check_trial_fits(options.cpus_per_trial, options.gpus_per_trial, nodes,
                                   options.wait_for_resources)
        check_device_present(options.device, max(n.get("GPU", 0.0) for n in nodes), "<command line>", "--device")
        if not options.verbose:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(url)
        try:
            lease = acquire_lease(storage_engine(url), name)
        except SQLAlchemyError as exc:  # no right to create or write the lease table
            raise write_failure(url, exc) from None
        with lease:
            if lease.took_over and options.progress:
                sys.stderr.write(f"proxstudy: taking over study {name!r} from driver {lease.took_over}, "
                                 "which is gone\n")
            try:
                return _sweep(storage, space, name, options, shown, waiting, lease)
            except SQLAlchemyError as exc:  # a read-only database, a value the schema refuses
                raise write_failure(url, exc) from None
    finally:
        if started_ray:
            ray.shutdown()


def _sweep(storage: BaseStorage, space: SearchSpace, name: str, options: SweepOptions, shown: str,
           waiting: str | None, lease: Lease) -> SweepSummary:
    """Open (or resume) the study and run what is left of it, holding the study's lease."""
    name, study_id, created = open_study(storage, space, name, options.force_new, shown)
    closed = 0 if created else close_interrupted(storage, study_id)
    records = [] if created else load_records(storage, name)
    source = point_source(space, records)
    finished_points = {r.point_key: r for r in records if r.finished and r.point_key}
    done = Counter(r.status for r in finished_points.values())
    progress = Progress(name, expected_total(space), done[STATUS_COMPLETED], done[STATUS_DIVERGED],
                        done[STATUS_FAILED], enabled=options.progress)
    summary = SweepSummary(study_name=name, storage=shown, created=created, total=progress.total,
                           skipped=len(finished_points), closed_interrupted=closed)
    if options.progress:
        verb = "created" if created else "resuming"
        sys.stderr.write(f"proxstudy: study {name!r} {verb} in {shown}: {source.planned} trial(s) to run, "
                         f"{summary.skipped} already finished\n")
        if waiting and source.planned > 0:
            sys.stderr.write(f"proxstudy: {waiting}\n")
    if source.planned > 0:
        driver = DriverState(storage=storage, study_id=study_id, space=space, source=source,
                             distributions=recorded_distributions(space), device=options.device,
                             cpus_per_trial=float(options.cpus_per_trial), progress=progress, lease=lease)
        summary.wall_seconds = _run_trials(driver, options)
        summary.ran, summary.trial_seconds, summary.concurrency = driver.ran, driver.trial_seconds, driver.concurrency
    summary.completed, summary.diverged, summary.failed = progress.completed, progress.diverged, progress.failed
    summary.left = max(0, summary.total - summary.completed - summary.diverged - summary.failed)
    return summary


def _run_trials(driver: DriverState, options: SweepOptions) -> float:
    """Run the driver's points on Ray Tune; returns the wall time from Ray's start."""
    started_ray = start_ray(options.ray_address, options.verbose)
    t0 = time.monotonic()
    tune_dir = Path(tempfile.mkdtemp(prefix="proxstudy-tune-"))
    try:
        recorder = OptunaRecorder(driver)
        pending = options.max_concurrent or cluster_slots(options.cpus_per_trial, options.gpus_per_trial)
        trainable, searcher = _trainable_and_searcher(driver, options, pending)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial}),
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                num_samples=driver.source.planned,
                max_concurrent_trials=options.max_concurrent,
                trial_dirname_creator=_trial_dirname,
                reuse_actors=True,  # no process start + torch import per trial
            ),
            run_config=tune.RunConfig(
                name="sweep",
                storage_path=str(tune_dir),
                callbacks=[recorder],
                failure_config=tune.FailureConfig(max_failures=options.max_retries),
                verbose=2 if options.verbose else 0,
                log_to_file=not options.verbose,
            ),
        )
        quiet_ray_loggers(options.verbose)
        _fit(tuner, recorder, pending)
    finally:
        driver.progress.close()
        shutil.rmtree(tune_dir, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    return time.monotonic() - t0


def _trainable_and_searcher(driver: DriverState, options: SweepOptions,
                            slots: int) -> tuple[Callable, Searcher]:
    """One point per Tune trial (``fuse`` 1), or fused trials of several points each, planned
    for ``slots`` trials at once."""
    if options.fuse == 1:
        return proxprop_trainable, PointSearcher(driver)
    return fused_trainable, FusedPointSearcher(driver, options.fuse, slots)


def _fit(tuner: tune.Tuner, recorder: OptunaRecorder, pending: int) -> None:
    """Run the trials, then wait for the recorder's last writes. A storage failure, however
    Tune passes it on (it may log a callback's exception and go on, or wrap it), ends as one
    SweepError."""
    cause: BaseException | None = None
    try:
        with pending_trials_limit(pending):
            tuner.fit()
    except Exception as exc:
        if recorder.storage_failure is None:
            raise
        cause = exc
    finally:
        with contextlib.suppress(SweepError):  # a storage failure: reported just below
            recorder.close()  # also closes the trials Ctrl-C left open, as interrupted
    if recorder.storage_failure:
        raise SweepError(f"{recorder.storage_failure}; the finished trials are stored, "
                         "run the same command again to resume") from cause


def _trial_dirname(trial: Trial) -> str:
    """Short trial directories (Tune's default names embed the whole config)."""
    return str(trial.trial_id)
