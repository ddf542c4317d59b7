"""The Tune searcher of a fused sweep: the points about to run, grouped into fused trials.

Points that can share a fused trial (workers.fused_plan.fusion_key: same data set, model,
schedule, mode, CG iterations, optimizer and device) are handed to Tune together, at most K at
a time, K = ``--fuse`` or fused_plan.default_fuse_size for the points' model and device.

* A fixed list of points (grid, random) is grouped all at once: each fusion key's points cut
  into groups of as equal sizes as possible, at most K each, and, where a key has points
  enough, into more groups until their number is a multiple of the trials that run at once
  (``slots``): 6 points of a compute-bound model with K = 2 on 2 slots run as 2 + 2 + 1 + 1
  (two rounds of equal length), not 2 + 2 + 2 (a last round with one slot idle).  The groups
  are handed out largest first (members x flops of a step x epochs, stable among equals), so
  the slots tend to end together (the cheap groups fill the gaps at the end; in the demo the
  backprop groups, ~2 s of CPU each against ~3 s for a ProxProp group, now run last).
* TPE's points are asked as slots free up; up to K points of one key are gathered (TPE proposes
  them without the results of each other, as K concurrent unfused trials would be).

Each member is its own point to the point source: it is told a member's result as soon as the
member ends (workers.fused_trainable's member reports), and a fused trial that ends without a
member's result (its worker died for good) tells that member failed.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from ray.tune.search import Searcher

from proxstudy.study.driver_state import DriverState
from proxstudy.study.points import StaticPoints
from proxstudy.study.records import STATUS_FAILED, finite_or_none
from proxstudy.study.space import Point, trial_config
from proxstudy.workers.config import TrialConfig
from proxstudy.workers.fused_plan import default_fuse_size, fusion_key, member_cost, split_evenly
from proxstudy.workers.fused_trainable import FUSED_MEMBERS_KEY, member_reports
from proxstudy.workers.trainable import CPUS_KEY, POINT_KEY, TRIAL_CONFIG_KEY
from proxstudy.workers.vocabulary import FINAL_STATUSES, OBJECTIVE, REPORT_STATUS

__all__ = ["FusedPointSearcher", "plan_device"]

Member = tuple[Point, TrialConfig]


def plan_device(device: str) -> torch.device:
    """The device the default K is planned for: the trials' device, auto resolved here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _work(group: list[Member]) -> float:
    """A group's training work, for ordering: members x flops per step x epochs."""
    config = group[0][1]
    return len(group) * member_cost(config).flops_per_step * config.training["epochs"]


class FusedPointSearcher(Searcher):
    """Hands Tune one fused trial (a list of members) per suggestion; see the module doc."""

    def __init__(self, driver: DriverState, fuse: int | None, slots: int = 1) -> None:
        super().__init__()
        self._driver = driver
        self._fuse = fuse
        self._slots = max(1, slots)
        self._device = plan_device(driver.device)
        self._sizes: dict[str, int] = {}
        self._ready: deque[list[Member]] = deque()  # groups planned, not yet handed out
        self._gathering: dict[str, list[Member]] = {}  # TPE: members gathered per fusion key
        self._members_of: dict[str, dict[str, Point]] = {}  # trial id -> unfinished members by key
        self._static = isinstance(driver.source, StaticPoints)

    # -- grouping
    def _size(self, key: str, config: TrialConfig) -> int:
        if key not in self._sizes:
            self._sizes[key] = self._fuse or default_fuse_size(config, self._device)
        return self._sizes[key]

    def _member(self, point: Point) -> Member:
        d = self._driver
        return point, trial_config(d.space, point.method, point.params, point.seed, device=d.device)

    def _plan_everything(self) -> None:
        """A fixed source: every point it has, grouped evenly per fusion key."""
        members: list[Member] = []
        while (point := self._driver.source.next_point()) is not None:
            members.append(self._member(point))
        if not members:
            return
        by_key: dict[str, list[Member]] = {}
        for member in members:
            by_key.setdefault(fusion_key(member[1]), []).append(member)
        counts = {key: -(-len(group) // self._size(key, group[0][1])) for key, group in by_key.items()}
        while sum(counts.values()) % self._slots:
            splittable = [key for key in counts if counts[key] < len(by_key[key])]
            if not splittable:
                break
            widest = max(splittable, key=lambda key: len(by_key[key]) / counts[key])
            counts[widest] += 1
        groups = [part for key, group in by_key.items() for part in split_evenly(group, counts[key])]
        self._ready.extend(sorted(groups, key=_work, reverse=True))

    def _gather(self) -> list[Member] | None:
        """A dynamic source: points until one fusion key has K of them, or no more points."""
        while True:
            for key, gathered in self._gathering.items():
                if len(gathered) >= self._size(key, gathered[0][1]):
                    return self._gathering.pop(key)
            point = self._driver.source.next_point()
            if point is None:
                break
            member = self._member(point)
            self._gathering.setdefault(fusion_key(member[1]), []).append(member)
        if self._gathering:
            return self._gathering.pop(next(iter(self._gathering)))
        return None

    # -- Tune's searcher interface
    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        d = self._driver
        with d.lock:
            if d.lease is not None and d.lease.lost:
                # A driver stalled past its lease's expiry was replaced: it starts no more trials.
                group = None
            elif self._static:
                if not self._ready:
                    self._plan_everything()
                group = self._ready.popleft() if self._ready else None
            else:
                group = self._gather()
            if not group:
                # Tune's documented "no more trials" answer; its annotation leaves this string out
                return Searcher.FINISHED  # type: ignore[return-value]
            for point, _ in group:
                d.points_by_key[point.key] = point
            self._members_of[trial_id] = {point.key: point for point, _ in group}
        return {
            FUSED_MEMBERS_KEY: [{POINT_KEY: point.key, TRIAL_CONFIG_KEY: config} for point, config in group],
            CPUS_KEY: d.cpus_per_trial,
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        members = self._members_of.get(trial_id)
        if not members:
            return
        for report in member_reports(result):
            status = report.get(REPORT_STATUS)
            if status not in FINAL_STATUSES:
                continue
            point = members.pop(str(report.get(POINT_KEY)), None)
            if point is not None:
                with self._driver.lock:
                    self._driver.source.point_finished(point, str(status), finite_or_none(report.get(OBJECTIVE)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and not error:
            self.on_trial_result(trial_id, result)
        members = self._members_of.pop(trial_id, {})
        with self._driver.lock:
            for point in members.values():
                self._driver.source.point_finished(point, STATUS_FAILED, None)

    def save(self, checkpoint_path: str) -> None:  # resume is the storage's job
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
