"""Robustness metrics of a study, per method: pure functions of aggregated parameter points.

Every metric starts from ``study.records.aggregate_points`` (seeds aggregated per parameter
point: mean over the completed seeds, population std, n). Definitions chosen here (they are
shown in the dashboard and report as written below):

* **point objective**: the mean over a point's completed seeds. A point where ANY seed diverged
  is *diverged* and ranks last (objective ``+inf`` when minimising, ``-inf`` when maximising).
  Points with no completed and no diverged seed (only failed or unfinished trials) carry no
  information about robustness and are left out of every metric ("evaluated points" are the
  others).
* **best**: the best finite point objective of the method and its parameters.
* **median / worst over the grid**: over all evaluated points, diverged ones counted as worst,
  so ``worst`` is infinite as soon as one point diverged (``worst_finite`` is the worst
  non-diverged point) and the median is infinite if at least half the points diverged.
* **divergence rate**: diverged points / evaluated points.
* **good region** (against the best of ALL methods, so methods compare on one scale):
  minimising, a point is good when ``objective <= factor * best_all`` (default factor 2; if
  ``best_all`` is negative the threshold is ``best_all + (factor - 1) * |best_all|``);
  maximising (e.g. ``val_accuracy``), good when ``objective >= best_all - tolerance``
  (default tolerance 0.01, i.e. one accuracy point). Diverged points are never good.
  The good-region share is good points / evaluated points.
* **learning-rate tolerance**: at the method's best point, hold every parameter except ``lr``
  fixed and walk the method's lr grid (sorted) outwards from the best lr while neighbouring
  grid points are good; the tolerance is ``log10(lr_max / lr_min)`` between the extreme good
  GRID points of that contiguous run (no extrapolation to half-steps), 0 if only the best lr
  is good, and 0 if the method's best point is itself outside the good region. A grid point
  with no evaluated point (no data, failed or unfinished) is skipped over, not counted.
* **expected best after k draws** (tunability): for k = 1..K, the expectation of the best of k
  points drawn uniformly WITH replacement from the method's evaluated points, computed exactly
  from order statistics: with the values sorted best-first v_1..v_n,
  ``E = sum_i v_i * (((n-i+1)/n)^k - ((n-i)/n)^k)``. Diverged points rank last; since an
  infinite value would make every expectation infinite, they take the value ``penalty``
  (default: the worst finite point objective over all methods, i.e. "no better than the worst
  run that trained"), and ``p_all_diverged[k] = (d/n)^k`` reports the chance that all k draws
  diverged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxstudy.study.records import MAXIMIZE, MINIMIZE, PARAM_LR, PointSummary, best_point, point_value



@dataclass(frozen=True)
class GoodRegion:
    """How close to the best result of all methods a point must be to count as good."""

    direction: str = MINIMIZE
    factor: float = 2.0  # minimising: objective <= factor * best
    tolerance: float = 0.01  # maximising: objective >= best - tolerance

    def threshold(self, best_all: float) -> float:
        if self.direction == MAXIMIZE:
            return best_all - self.tolerance
        return best_all + (self.factor - 1.0) * abs(best_all)

    def is_good(self, value: float, best_all: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.direction == MAXIMIZE:
            return value >= self.threshold(best_all)
        return value <= self.threshold(best_all)


@dataclass
class MethodMetrics:
    """The robustness metrics of one method (see the module docstring for definitions)."""

    method: str
    n_points: int  # evaluated points
    n_diverged: int
    best: float | None
    best_params: dict[str, Any] | None
    best_std: float | None
    best_n: int
    median: float | None
    worst: float | None
    worst_finite: float | None
    divergence_rate: float
    good_share: float
    good_threshold: float | None
    lr_tolerance_decades: float
    lr_good_range: tuple[float, float] | None
    expected_best: list[float] = field(default_factory=list)  # index k-1
    p_all_diverged: list[float] = field(default_factory=list)  # index k-1


def direction_for(objective: str | None, direction: str | None = None) -> str:
    """The optimisation direction: explicit, else from the objective's name."""
    if direction in (MINIMIZE, MAXIMIZE):
        return direction
    return MAXIMIZE if objective and "accuracy" in objective else MINIMIZE


def evaluated(points: Iterable[PointSummary]) -> list[PointSummary]:
    """Points that say something about robustness: a completed or a diverged seed."""
    return [p for p in points if p.diverged or p.n > 0]


def _sort_key(direction: str):
    return (lambda v: -v) if direction == MAXIMIZE else (lambda v: v)


def median(values: Sequence[float]) -> float:
    """The median, infinities allowed (sorted order, mean of the two middle ones)."""
    s = sorted(values)
    n = len(s)
    if n % 2:
        return s[n // 2]
    a, b = s[n // 2 - 1], s[n // 2]
    if a == b:
        return a
    return (a + b) / 2.0


def expected_best_of_k(
    values: Sequence[float], k_max: int, direction: str = MINIMIZE, penalty: float | None = None
) -> tuple[list[float], list[float]]:
    """E[best of k uniform draws with replacement] for k = 1..k_max, exactly.

    Non-finite values (diverged points) take ``penalty``; returns (expectations, P(all k draws
    are non-finite)). With a penalty of None and a non-finite value the expectation is infinite.
    """
    n = len(values)
    if n == 0:
        return [math.nan] * k_max, [math.nan] * k_max
    d = sum(1 for v in values if not math.isfinite(v))
    filled = [v if math.isfinite(v) else (penalty if penalty is not None else v) for v in values]
    ordered = sorted(filled, key=_sort_key(direction))  # best first
    expectations, p_all = [], []
    for k in range(1, k_max + 1):
        total = 0.0
        for i, v in enumerate(ordered, start=1):
            weight = ((n - i + 1) / n) ** k - ((n - i) / n) ** k
            if weight:
                total += v * weight
        expectations.append(total)
        p_all.append((d / n) ** k)
    return expectations, p_all


def lr_tolerance(
    points: Sequence[PointSummary],
    best: PointSummary,
    is_good,
) -> tuple[float, tuple[float, float] | None]:
    """Width in decades of the contiguous good lr run around the best point (grid points)."""
    others = {k: v for k, v in best.params.items() if k != PARAM_LR}
    if PARAM_LR not in best.params:
        return 0.0, None
    row = {
        float(p.params[PARAM_LR]): p
        for p in points
        if PARAM_LR in p.params and {k: v for k, v in p.params.items() if k != PARAM_LR} == others
    }
    lrs = sorted(row)
    i0 = lrs.index(float(best.params[PARAM_LR]))
    lo = hi = i0
    while lo - 1 >= 0 and is_good(row[lrs[lo - 1]]):
        lo -= 1
    while hi + 1 < len(lrs) and is_good(row[lrs[hi + 1]]):
        hi += 1
    return math.log10(lrs[hi] / lrs[lo]), (lrs[lo], lrs[hi])


def compute_metrics(
    points: Iterable[PointSummary],
    direction: str = MINIMIZE,
    good: GoodRegion | None = None,
    k_max: int = 20,
    penalty: float | None = None,
) -> dict[str, MethodMetrics]:
    """Per-method robustness metrics from aggregated points (any order, all methods mixed)."""
    good = good or GoodRegion(direction=direction)
    if good.direction != direction:
        good = GoodRegion(direction, good.factor, good.tolerance)
    pts = evaluated(points)
    by_method: dict[str, list[PointSummary]] = {}
    for p in pts:
        by_method.setdefault(p.method, []).append(p)
    overall = best_point(pts, direction)
    best_all = point_value(overall, direction) if overall is not None else None
    finite = [point_value(p, direction) for p in pts if math.isfinite(point_value(p, direction))]
    if penalty is None and finite:
        penalty = min(finite) if direction == MAXIMIZE else max(finite)

    def is_good(p: PointSummary) -> bool:
        return best_all is not None and good.is_good(point_value(p, direction), best_all)

    out: dict[str, MethodMetrics] = {}
    for method, mpts in by_method.items():
        values = [point_value(p, direction) for p in mpts]
        n_div = sum(1 for p in mpts if p.diverged)
        best = best_point(mpts, direction)
        worst_sorted = sorted(values, key=_sort_key(direction))
        finite_vals = [v for v in worst_sorted if math.isfinite(v)]
        tol, lr_range = lr_tolerance(mpts, best, is_good) if best is not None and is_good(best) else (0.0, None)
        exp, p_all = expected_best_of_k(values, k_max, direction, penalty)
        out[method] = MethodMetrics(
            method=method,
            n_points=len(mpts),
            n_diverged=n_div,
            best=point_value(best, direction) if best else None,
            best_params=dict(best.params) if best else None,
            best_std=best.std if best else None,
            best_n=best.n if best else 0,
            median=median(values),
            worst=worst_sorted[-1],
            worst_finite=finite_vals[-1] if finite_vals else None,
            divergence_rate=n_div / len(mpts),
            good_share=sum(1 for p in mpts if is_good(p)) / len(mpts),
            good_threshold=good.threshold(best_all) if best_all is not None else None,
            lr_tolerance_decades=tol,
            lr_good_range=lr_range,
            expected_best=exp,
            p_all_diverged=p_all,
        )
    return out


def params_label(params: Mapping[str, Any] | None) -> str:
    """A short human-readable label of a parameter point, e.g. ``lr=0.05, tau_prox=1``."""
    if not params:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))
