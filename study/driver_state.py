"""What the Tune searcher and the Optuna recorder share on the sweep's driver."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage

from proxstudy.study.lease import Lease
from proxstudy.study.opening import driver_id
from proxstudy.study.points import PointSource
from proxstudy.study.progress import Progress
from proxstudy.study.space import Point, SearchSpace

__all__ = ["DriverState"]


@dataclass(eq=False)
class DriverState:
    """The storage, the points handed out, the progress line and the sweep's tallies.

    Tune pickles its searcher and callbacks with the experiment state (for ``Tuner.restore``,
    which we never use: resume goes through the Optuna storage), so this object pickles to
    nothing instead of failing on the storage's locks.
    """

    storage: BaseStorage
    study_id: int
    space: SearchSpace
    source: PointSource
    distributions: Mapping[str, BaseDistribution]  # one per Optuna param name (recorded_distributions)
    device: str  # of every trial: auto | cpu | cuda | cuda:N
    cpus_per_trial: float
    progress: Progress
    points_by_key: dict[str, Point] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    driver: str = field(default_factory=driver_id)
    trial_seconds: float = 0.0  # run time of the finished trials on their workers
    ran: int = 0  # trials finished by this sweep
    concurrency: int = 0  # most trials seen running at once
    lease: Lease | None = None  # the study's driver lease (None: not held, e.g. in tests)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
