"""The Tune searcher of a sweep: one trial config per point the driver decided to run."""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher

from proxstudy.study.driver_state import DriverState
from proxstudy.study.records import STATUS_FAILED, finite_or_none
from proxstudy.study.space import Point, trial_config
from proxstudy.workers.trainable import CPUS_KEY, POINT_KEY, TRIAL_CONFIG_KEY
from proxstudy.workers.vocabulary import OBJECTIVE, REPORT_STATUS

__all__ = ["PointSearcher"]


class PointSearcher(Searcher):
    """Hands Tune one trial config per point of the driver's point source, and tells the
    source how each point ended (TPE learns from it)."""

    def __init__(self, driver: DriverState) -> None:
        super().__init__()
        self._driver = driver
        self._point_of: dict[str, Point] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        d = self._driver
        with d.lock:
            # A driver stalled past its lease's expiry was replaced: it starts no more trials.
            point = None if d.lease is not None and d.lease.lost else d.source.next_point()
            if point is None:
                # Tune's documented "no more trials" answer; its annotation leaves this string out
                return Searcher.FINISHED  # type: ignore[return-value]
            d.points_by_key[point.key] = point
            self._point_of[trial_id] = point
        return {
            TRIAL_CONFIG_KEY: trial_config(d.space, point.method, point.params, point.seed, device=d.device),
            POINT_KEY: point.key,
            CPUS_KEY: d.cpus_per_trial,  # torch threads of the trial
        }

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        point = self._point_of.pop(trial_id, None)
        if point is None:
            return
        result = result or {}
        status = STATUS_FAILED if error else str(result.get(REPORT_STATUS) or STATUS_FAILED)
        with self._driver.lock:
            self._driver.source.point_finished(point, status, finite_or_none(result.get(OBJECTIVE)))

    def save(self, checkpoint_path: str) -> None:  # resume is the storage's job
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
