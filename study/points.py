"""Which points a sweep runs: the grid, random draws, or TPE told the results as they come.

A point source hands out :class:`~proxstudy.study.space.Point` objects (method, parameters,
seed) one at a time and is told each one's result. The driver decides the points, not Ray
Tune, so a resumed sweep skips exactly the points whose ``point_key`` is already finished.
"""

from __future__ import annotations

import contextlib
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from proxstudy.errors import SweepError
from proxstudy.study.records import STATUS_COMPLETED, STATUS_DIVERGED, TrialRecord
from proxstudy.study.space import MethodSpace, Point, SearchSpace, grid_points

__all__ = [
    "PointSource",
    "StaticPoints",
    "TpePoints",
    "expected_per_method",
    "expected_total",
    "point_source",
    "random_points",
]

#: (status, objective) of one seed of a point.
SeedResult = tuple[str, float | None]


class PointSource(Protocol):
    planned: int  # how many points it will hand out (for Tune's num_samples)

    def next_point(self) -> Point | None:
        """The next point to run, or None when there is nothing more."""

    def point_finished(self, point: Point, status: str, value: float | None) -> None:
        """A point handed out has finished with this status and objective."""


def expected_per_method(space: SearchSpace) -> dict[str, int]:
    """How many (point, seed) trials the search space asks for, per method."""
    if space.sampler["name"] == "grid":
        counts: dict[str, int] = dict.fromkeys(space.methods, 0)
        for point in grid_points(space):
            counts[point.method] += 1
        return counts
    n_trials = int(space.sampler["n_trials"])
    return {m: n_trials * len(space.seeds) for m in space.methods}


def expected_total(space: SearchSpace) -> int:
    """How many (point, seed) trials the search space asks for."""
    return sum(expected_per_method(space).values())


def _method_distributions(method_space: MethodSpace) -> tuple[dict[str, BaseDistribution], dict[str, Any]]:
    """A method's sampled distributions and its fixed values (random/tpe samplers)."""
    sampled: dict[str, BaseDistribution] = {}
    fixed: dict[str, Any] = {}
    for name, param in method_space.params.items():
        if param.kind == "fixed":
            fixed[name] = param.values[0]
        else:
            sampled[name] = param.optuna_distribution()
    return sampled, fixed


def _sampler_seed(space: SearchSpace) -> int:
    return int(space.sampler.get("seed", 0) or 0)


def random_points(space: SearchSpace) -> list[Point]:
    """``n_trials`` parameter points per method from Optuna's RandomSampler(seed), every seed.

    Each method gets its own sampler with the same seed, so methods sharing a distribution are
    compared on the same draws (common random numbers), and a resumed sweep redraws exactly the
    same points (same keys), so finished ones are recognised.
    """
    points = []
    for method, method_space in space.methods.items():
        sampled, fixed = _method_distributions(method_space)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=_sampler_seed(space)))
        for _ in range(int(space.sampler["n_trials"])):
            trial = study.ask(sampled)
            params = {**fixed, **trial.params}
            for seed in space.seeds:
                points.append(Point(method=method, params=params, seed=int(seed)))
    return points


class StaticPoints:
    """A fixed list of points to run (grid, random)."""

    def __init__(self, points: Iterable[Point]) -> None:
        self._queue = deque(points)
        self.planned = len(self._queue)

    def next_point(self) -> Point | None:
        return self._queue.popleft() if self._queue else None

    def point_finished(self, point: Point, status: str, value: float | None) -> None:
        pass


class _OpenPoint:
    """A TPE point whose seeds are not all finished."""

    def __init__(self, params: dict[str, Any], trial: optuna.Trial | None,
                 results: Mapping[int, SeedResult] | None = None) -> None:
        self.params = params
        self.trial = trial  # the in-memory study's trial, None for a point replayed from storage
        self.results: dict[int, SeedResult] = dict(results or {})


class TpePoints:
    """TPE, one in-memory Optuna study per method, told the seed-averaged result of each point.

    A new point is asked only when Tune has a free slot and every seed of the points asked so
    far has been handed out, so TPE sees as many finished points as possible. Diverged points
    are told PRUNED (TPE ranks them below completed ones), points where every seed failed FAIL.
    On resume, the stored finished points are told first and partially run points finish their
    remaining seeds before new points are asked.
    """

    def __init__(self, space: SearchSpace, records: Iterable[TrialRecord]) -> None:
        self._seeds = [int(s) for s in space.seeds]
        self._n_trials = int(space.sampler["n_trials"])
        self._studies: dict[str, optuna.Study] = {}
        self._dists: dict[str, tuple[dict[str, BaseDistribution], dict[str, Any]]] = {}
        self._asked: dict[str, int] = {}
        self._queue: deque[Point] = deque()
        self._open: dict[tuple[str, tuple], _OpenPoint] = {}
        seed = _sampler_seed(space)
        for index, (method, method_space) in enumerate(space.methods.items()):
            self._studies[method] = optuna.create_study(
                direction=space.study_direction, sampler=optuna.samplers.TPESampler(seed=seed + index)
            )
            self._dists[method] = _method_distributions(method_space)
            self._asked[method] = 0
        self._replay(records)
        self.planned = sum(
            len(self._seeds) * (self._n_trials - self._asked[m]) for m in self._studies
        ) + len(self._queue)

    def _replay(self, records: Iterable[TrialRecord]) -> None:
        by_point: dict[tuple[str, tuple], dict[int, SeedResult]] = defaultdict(dict)
        params_of: dict[tuple[str, tuple], dict[str, Any]] = {}
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
            missing = [s for s in self._seeds if s not in results]
            if missing:
                self._open[key] = _OpenPoint(params_of[key], None, results)
                for s in missing:
                    self._queue.append(Point(method=method, params=params_of[key], seed=s))
            else:
                self._tell(method, _OpenPoint(params_of[key], None, results))

    def _tell(self, method: str, point: _OpenPoint) -> None:
        study = self._studies[method]
        sampled, _ = self._dists[method]
        statuses = [s for s, _ in point.results.values()]
        values = [v for s, v in point.results.values() if s == STATUS_COMPLETED and v is not None]
        if STATUS_DIVERGED in statuses:
            state, value = TrialState.PRUNED, None
        elif values:
            state, value = TrialState.COMPLETE, statistics.fmean(values)
        else:
            state, value = TrialState.FAIL, None
        if point.trial is not None:
            study.tell(point.trial, value if state == TrialState.COMPLETE else None, state=state)
            return
        sampled_params = {k: point.params[k] for k in sampled if k in point.params}
        if len(sampled_params) != len(sampled):
            return  # a stored point from another space version: not usable as history
        with contextlib.suppress(ValueError):  # a value outside the (changed) distribution
            study.add_trial(_history_trial(state, value, sampled_params, sampled))

    def next_point(self) -> Point | None:
        while not self._queue:
            candidates = [m for m in self._studies if self._asked[m] < self._n_trials]
            if not candidates:
                return None
            method = min(candidates, key=lambda m: self._asked[m])  # round-robin over methods
            sampled, fixed = self._dists[method]
            trial = self._studies[method].ask(sampled)
            params = {**fixed, **trial.params}
            self._asked[method] += 1
            key = (method, tuple(sorted(params.items())))
            if key in self._open:  # TPE proposed a point already running: count it, run nothing new
                self._studies[method].tell(trial, state=TrialState.FAIL)
                continue
            self._open[key] = _OpenPoint(params, trial)
            for s in self._seeds:
                self._queue.append(Point(method=method, params=params, seed=s))
        return self._queue.popleft()

    def point_finished(self, point: Point, status: str, value: float | None) -> None:
        key = (point.method, tuple(sorted(point.params.items())))
        entry = self._open.get(key)
        if entry is None:
            return
        entry.results[int(point.seed)] = (status, value)
        if all(s in entry.results for s in self._seeds):
            del self._open[key]
            self._tell(point.method, entry)


def _history_trial(state: TrialState, value: float | None, params: dict[str, Any],
                   distributions: dict[str, BaseDistribution]) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=params,
        distributions=distributions,
    )


def point_source(space: SearchSpace, records: list[TrialRecord]) -> PointSource:
    """The points still to run for the space's sampler, given the study's records so far."""
    finished = {r.point_key for r in records if r.finished and r.point_key}
    sampler = space.sampler["name"]
    if sampler == "grid":
        return StaticPoints(p for p in grid_points(space) if p.key not in finished)
    if sampler == "random":
        return StaticPoints(p for p in random_points(space) if p.key not in finished)
    if sampler == "tpe":
        return TpePoints(space, records)
    # parse_space admits no other sampler; a clear message should a hand-made space hold one
    raise SweepError(f"{space.source}: sampler.name: unknown sampler {sampler!r}")
