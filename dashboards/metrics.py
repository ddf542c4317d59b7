"""How sensitive each method is to its learning rate: pure functions of trial records.

The contract is DESIGN.md, "Robustness metrics"; this docstring is shown on the dashboard and in
the report as the definitions, so it says exactly what is computed. Minimised objectives are
described; for maximised ones (accuracy) every comparison is mirrored (see the end).

Values
  * Only COMPLETED and DIVERGED trials count. Failed, interrupted, running and waiting trials
    carry no information about robustness and are left out everywhere. A completed trial
    whose final objective is missing or not finite counts as diverged. Trials are grouped
    with ``study.records.aggregate_points`` (one record per (point, seed): the last one wins).
  * l0, the objective before training: the mean of the epoch-0 objective over the completed
    and diverged trials that recorded a finite one. If none did (a study made by other
    tools), l0 is the worst final objective of a completed trial and the summary says so
    (``initial_value_source``); if there is none either, nothing below is defined (None).
  * Capped value of a seed: c = min(final objective, l0); a diverged seed counts as l0. A run
    cannot be worse than not training at all, so one blown-up run cannot dominate a mean.
  * A point is (method, every parameter but the seed). Its value v is the mean of its seeds'
    capped values; points with no completed or diverged seed are left out. Points may have
    different numbers of seeds (missing seeds): each is the mean of what exists.
  * l* = the best v over ALL methods, so methods are compared on one scale.
  * Progress q = (l0 - v) / (l0 - l*), in [0, 1]. If l0 - l* <= 1e-12 * max(1, |l0|), no point
    made progress: q = 0 everywhere (every sensitivity is 1, nothing is trained).

Per method (theta = the point's parameters other than lr, e.g. tau_prox and cg_iterations)
  * lr grid of the method: every lr value among its points. A theta is *complete* when it has
    a point at every lr of that grid.
  * lr sensitivity at theta: the mean over the theta's points of (1 - q); 0 = as good as the
    best everywhere, 1 = no progress anywhere. Reported at the theta where it is smallest
    (``sensitivity_params``), chosen among complete thetas (among all if none is complete,
    so a theta whose bad points failed or have not run yet cannot win). Ties (equal to 12
    decimals) go to the theta that sorts first by parameter name, then value.
  * Trained: q >= 1 - delta (default delta 0.1: 90% of the best progress of all methods).
    Trained lr range at sensitivity_params: the longest run of trained points that are
    neighbours in the method's lr grid (an lr without a point at that theta breaks the run);
    longest = widest in decades log10(hi/lo), then most points, then the lowest lrs.
    ``trained_decades``: its width (0 for one point), None when the theta has no trained
    point. With one lr in the grid the sensitivity is 1 - q of that point and the width is 0
    or None.
  * Most robust configuration (``robust_params``): sensitivity_params with the lr at the
    centre of the trained range, the geometric mean of its ends snapped to the nearest grid
    lr of the range in log distance (the lower one when two are equally near); None when the
    range is None.
  * Best: the method's best v and its parameters (first in parameter order on ties), among
    points with at least one completed seed (None when every point of the method diverged).
    Median and worst: of v over the method's points.
  * Divergence rate: the share of the method's points where any seed diverged.
  * Expected best after k draws (Dodge et al. 2019): the expectation of the best v among k
    points drawn uniformly with replacement from the method's points, exactly from order
    statistics: with v sorted best first, E_k = sum_i v_i ((n-i+1)^k - (n-i)^k) / n^k.

Uncertainty (bootstrap over seeds)
  * 1000 resamples from one numpy Generator with a fixed seed (``RNG_SEED``), so the same
    study always gives the same intervals. Each resample draws, for every point, as many
    seeds as it has, with replacement, from its own seeds (a point with one seed never
    changes: one seed gives zero-width intervals, which says "no evidence", not "certain").
    Per resample l*, q, every theta's sensitivity, the choice of theta, the trained range,
    the divergence rate and the best value are recomputed.
  * l0 is not resampled: it is the untrained network's loss, a study-wide reference averaged
    over every trial (its standard error is that of the initialisation's loss over hundreds
    of trials, negligible next to the spread of trained runs). Holding it fixed keeps the
    scale identical in every resample, so intervals reflect only the seed-to-seed variation of
    training.
  * Intervals: the 2.5 and 97.5 percentiles (numpy's linear interpolation) over resamples,
    extended to contain the estimate from the original data where they do not: l* is a
    minimum over points, and the minimum of resampled means is biased towards better values,
    so with many points and small seed spreads every resample can fall on one side of the
    estimate. For ``trained_decades_ci`` a resample with no trained point counts as width 0.
  * P(A less lr-sensitive than B): the share of resamples where A's sensitivity is smaller
    than B's; resamples where they are equal (to 12 decimals) count one half, so
    P(A < B) + P(B < A) = 1.

Maximised objectives (e.g. val_accuracy): l0 is still the epoch-0 value; c = max(final, l0);
a diverged seed counts as l0; l* is the largest v; q = (v - l0) / (l* - l0); best = largest v.
Designed for grid sweeps: with random or TPE sampling every theta usually has a single lr, and
the sensitivity degenerates to 1 - q of single points.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from proxstudy.study.records import (
    MAXIMIZE,
    MINIMIZE,
    PARAM_LR,
    STATUS_COMPLETED,
    STATUS_DIVERGED,
    PointSummary,
    TrialRecord,
    aggregate_points,
)

DEFAULT_DELTA = 0.1
N_RESAMPLES = 1000
RNG_SEED = 20240917
K_MAX = 20
_TIE_DECIMALS = 12
_CHUNK_ELEMENTS = 2_000_000  # resampled seed values held at once (memory bound of the bootstrap)

SOURCE_EPOCH0 = "epoch 0"
SOURCE_WORST_FINAL = "worst final value (no epoch-0 values recorded)"
SOURCE_NONE = "none (no completed or diverged trial)"

__all__ = [
    "DEFAULT_DELTA",
    "K_MAX",
    "MAXIMIZE",
    "MINIMIZE",
    "N_RESAMPLES",
    "RNG_SEED",
    "Comparison",
    "MethodRobustness",
    "PointRobustness",
    "Robustness",
    "compute_robustness",
    "direction_for",
    "expected_best_of_k",
    "median",
    "params_label",
    "picks",
    "summary_document",
]


@dataclass(frozen=True)
class PointRobustness:
    """One parameter point of one method with its seeds' capped values (objective units)."""

    method: str
    params: dict[str, Any]  # every swept parameter but the seed (lr included)
    capped: tuple[float, ...]  # completed seeds (in seed order), then one l0 per diverged seed
    seeds: tuple[int, ...]  # the completed seeds
    values: tuple[float, ...]  # the completed seeds' raw final objectives
    n_diverged: int
    value: float  # v: mean of capped
    progress: float  # q
    trained: bool

    @property
    def lr(self) -> float | None:
        lr = self.params.get(PARAM_LR)
        return None if lr is None else float(lr)

    @property
    def theta(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k != PARAM_LR}

    @property
    def n_completed(self) -> int:
        return len(self.seeds)

    @property
    def diverged(self) -> bool:
        return self.n_diverged > 0

    @property
    def seed_median(self) -> float:
        return float(np.median(self.capped))


@dataclass
class MethodRobustness:
    """The robustness numbers of one method (definitions: the module docstring)."""

    method: str
    points: int
    diverged_points: int
    divergence_rate: float
    divergence_rate_ci: tuple[float, float]
    seeds_min: int
    seeds_max: int
    best_value: float | None
    best_value_ci: tuple[float, float] | None
    best_params: dict[str, Any] | None
    median: float | None
    worst: float | None
    lr_sensitivity: float | None
    lr_sensitivity_ci: tuple[float, float] | None
    sensitivity_params: dict[str, Any] | None
    trained_lr: tuple[float, float] | None
    trained_decades: float | None
    trained_decades_ci: tuple[float, float] | None
    trained_points: int  # trained points at sensitivity_params
    lr_points: int  # points at sensitivity_params
    robust_params: dict[str, Any] | None
    expected_best: list[float] = field(default_factory=list)  # index k-1


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    p_a_less_sensitive: float | None


@dataclass
class Robustness:
    """A study's robustness analysis: study-wide references, per-method numbers, comparisons."""

    direction: str
    delta: float
    initial_value: float | None  # l0
    initial_value_source: str
    best_value: float | None  # l*
    methods: dict[str, MethodRobustness]
    comparisons: list[Comparison]
    points: list[PointRobustness]
    n_resamples: int
    rng_seed: int

    def method_points(self, method: str) -> list[PointRobustness]:
        return [p for p in self.points if p.method == method]

    def point(self, method: str, params: Mapping[str, Any]) -> PointRobustness | None:
        for p in self.points:
            if p.method == method and p.params == dict(params):
                return p
        return None

    def comparison(self, a: str, b: str) -> float | None:
        """P(a less lr-sensitive than b), in either order of the stored pairs."""
        for c in self.comparisons:
            if (c.a, c.b) == (a, b):
                return c.p_a_less_sensitive
            if (c.a, c.b) == (b, a):
                return None if c.p_a_less_sensitive is None else 1.0 - c.p_a_less_sensitive
        return None

    @property
    def progress_threshold(self) -> float | None:
        """The objective value a point must reach to count as trained (q = 1 - delta)."""
        if self.initial_value is None or self.best_value is None:
            return None
        return self.initial_value - (1.0 - self.delta) * (self.initial_value - self.best_value)


# ------------------------------------------------------------------------------------------
# small helpers, also used by tables and figures


def direction_for(objective: str | None, direction: str | None = None) -> str:
    """The optimisation direction: explicit, else from the objective's name."""
    if direction in (MINIMIZE, MAXIMIZE):
        return direction
    return MAXIMIZE if objective and "accuracy" in objective else MINIMIZE


def median(values: Sequence[float]) -> float:
    """The median (sorted order, mean of the two middle ones)."""
    s = sorted(values)
    n = len(s)
    if n % 2:
        return s[n // 2]
    a, b = s[n // 2 - 1], s[n // 2]
    return a if a == b else (a + b) / 2.0


def expected_best_of_k(values: Sequence[float], k_max: int, direction: str = MINIMIZE) -> list[float]:
    """E[best of k uniform draws with replacement from ``values``], k = 1..k_max, exactly."""
    n = len(values)
    if n == 0:
        return [math.nan] * k_max
    ordered = sorted(values, reverse=direction == MAXIMIZE)  # best first
    out = []
    for k in range(1, k_max + 1):
        total = 0.0
        for i, v in enumerate(ordered, start=1):
            weight = ((n - i + 1) / n) ** k - ((n - i) / n) ** k
            if weight:
                total += v * weight
        out.append(total)
    return out


def params_label(params: Mapping[str, Any] | None) -> str:
    """A short human-readable label of a parameter point, e.g. ``lr=0.05, tau_prox=1``."""
    if not params:
        return ""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(params.items()))


def _value_key(value: Any) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _params_key(params: Mapping[str, Any]) -> tuple:
    return tuple((name, _value_key(params[name])) for name in sorted(params))


# ------------------------------------------------------------------------------------------
# the analysis


@dataclass
class _MethodLayout:
    """Index structure of one method's points (positions in the sorted point list)."""

    name: str
    indices: np.ndarray  # all its points
    lrs: np.ndarray  # the method's lr grid, ascending
    thetas: list[dict[str, Any]]  # sorted
    grid: np.ndarray  # (thetas, lrs) point index, -1 where the theta has no point at that lr
    eligible: np.ndarray  # (thetas,) bool: may be chosen as the most robust theta
    has_completed: np.ndarray  # (points of the method,) bool, original data
    pairs_i: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # candidate runs, by preference
    pairs_j: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    pairs_width: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _layout(name: str, points: list[_Point], indices: list[int]) -> _MethodLayout:
    lr_of: dict[int, float] = {}
    for i in indices:
        lr = points[i].lr
        if lr is not None:
            lr_of[i] = lr
    lrs = np.array(sorted(set(lr_of.values())), dtype=float)
    theta_of: dict[tuple, dict[str, Any]] = {}
    for i in lr_of:
        theta_of.setdefault(_params_key(points[i].theta), points[i].theta)
    keys = sorted(theta_of)
    grid = np.full((len(keys), len(lrs)), -1, dtype=int)
    row = {k: r for r, k in enumerate(keys)}
    col = {float(lr): c for c, lr in enumerate(lrs)}
    for i, lr in lr_of.items():
        grid[row[_params_key(points[i].theta)], col[lr]] = i
    complete = np.asarray((grid >= 0).all(axis=1), dtype=bool)  # (thetas,)
    eligible = complete if complete.any() else np.ones(len(keys), bool)
    layout = _MethodLayout(name, np.array(indices, dtype=int), lrs, [theta_of[k] for k in keys], grid,
                           eligible, np.array([points[i].n_completed > 0 for i in indices], bool))
    # Every run [i, j] of neighbouring grid lrs, most preferred first: widest, most points, lowest.
    pairs = [(i, j) for i in range(len(lrs)) for j in range(i, len(lrs))]
    widths = {p: round(math.log10(lrs[p[1]] / lrs[p[0]]), 9) for p in pairs}
    pairs.sort(key=lambda p: (-widths[p], -(p[1] - p[0]), p[0]))
    layout.pairs_i = np.array([p[0] for p in pairs], dtype=int)
    layout.pairs_j = np.array([p[1] for p in pairs], dtype=int)
    layout.pairs_width = np.array([math.log10(lrs[j] / lrs[i]) for i, j in pairs], dtype=float)
    return layout


@dataclass
class _Point:
    summary: PointSummary
    capped_u: np.ndarray  # capped seed values, minimisation orientation
    diverged: np.ndarray  # per seed

    @property
    def lr(self) -> float | None:
        lr = self.summary.params.get(PARAM_LR)
        return None if lr is None else float(lr)

    @property
    def theta(self) -> dict[str, Any]:
        return {k: v for k, v in self.summary.params.items() if k != PARAM_LR}

    @property
    def n_completed(self) -> int:
        return self.summary.n


@dataclass
class _Stats:
    """Per-method statistics for B resamples (B = 1 for the point estimate)."""

    sensitivity: np.ndarray  # (B,)
    theta: np.ndarray  # (B,) row in layout.thetas
    width: np.ndarray  # (B,) NaN where nothing is trained
    run_i: np.ndarray  # (B,) -1 where nothing is trained
    run_j: np.ndarray
    divergence_rate: np.ndarray
    best_value: np.ndarray  # (B,), minimisation orientation
    trained_at_theta: np.ndarray  # (B, lrs) bool


def _evaluate(values: np.ndarray, diverged: np.ndarray, l0: float, delta: float,
              layouts: list[_MethodLayout]) -> tuple[np.ndarray, np.ndarray, dict[str, _Stats]]:
    """Every statistic from point values ``values`` (B, P) and per-point divergence (B, P)."""
    l_star = values.min(axis=1)  # (B,)
    span = l0 - l_star
    no_progress = span <= 1e-12 * max(1.0, abs(l0))
    safe = np.where(no_progress, 1.0, span)
    q = np.clip((l0 - values) / safe[:, None], 0.0, 1.0)
    q[no_progress] = 0.0
    trained = q >= (1.0 - delta) - 1e-12
    B = values.shape[0]
    rows = np.arange(B)
    out: dict[str, _Stats] = {}
    for lay in layouts:
        n_theta = lay.grid.shape[0]
        div_rate = diverged[:, lay.indices].mean(axis=1) if len(lay.indices) else np.full(B, np.nan)
        best = values[:, lay.indices].min(axis=1) if len(lay.indices) else np.full(B, np.nan)
        if n_theta == 0:
            nan = np.full(B, np.nan)
            out[lay.name] = _Stats(nan, np.full(B, -1), nan, np.full(B, -1), np.full(B, -1), div_rate, best,
                                   np.zeros((B, 0), bool))
            continue
        present = lay.grid >= 0
        safe_grid = np.where(present, lay.grid, 0)
        loss = np.where(present[None], 1.0 - q[:, safe_grid], 0.0)  # (B, thetas, lrs)
        sens = loss.sum(axis=2) / present.sum(axis=1)[None, :]
        ranked = np.where(lay.eligible[None, :], np.round(sens, _TIE_DECIMALS), np.inf)
        theta = ranked.argmin(axis=1)
        chosen = sens[rows, theta]
        tr = (trained[:, safe_grid] & present[None])[rows, theta]  # (B, lrs)
        counts = np.concatenate([np.zeros((B, 1), int), np.cumsum(tr, axis=1)], axis=1)
        length = lay.pairs_j - lay.pairs_i + 1
        valid = (counts[:, lay.pairs_j + 1] - counts[:, lay.pairs_i]) == length[None, :]
        anything = valid.any(axis=1)
        first = valid.argmax(axis=1)
        width = np.where(anything, lay.pairs_width[first], np.nan)
        run_i = np.where(anything, lay.pairs_i[first], -1)
        run_j = np.where(anything, lay.pairs_j[first], -1)
        out[lay.name] = _Stats(chosen, theta, width, run_i, run_j, div_rate, best, tr)
    return l_star, q, out


def _interval(samples: np.ndarray, estimate: float) -> tuple[float, float] | None:
    """The 2.5-97.5 percentile range of ``samples``, extended to contain ``estimate``."""
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return None
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return min(float(lo), estimate), max(float(hi), estimate)


def compute_robustness(
    records: Iterable[TrialRecord],
    direction: str = MINIMIZE,
    *,
    delta: float = DEFAULT_DELTA,
    n_resamples: int = N_RESAMPLES,
    rng_seed: int = RNG_SEED,
    k_max: int = K_MAX,
    aggregated: Sequence[PointSummary] | None = None,
) -> Robustness:
    """The robustness analysis of a study's trial records (see the module docstring).

    ``aggregated``: ``aggregate_points(records)``, where the caller has computed it already."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be between 0 and 1 (exclusive), got {delta!r}")
    if direction not in (MINIMIZE, MAXIMIZE):
        raise ValueError(f"direction must be {MINIMIZE!r} or {MAXIMIZE!r}, got {direction!r}")
    records = list(records)
    sign = -1.0 if direction == MAXIMIZE else 1.0
    informative = [r for r in records if r.status in (STATUS_COMPLETED, STATUS_DIVERGED)]
    epoch0 = [r.intermediate.get(0) for r in informative]
    initial = [float(v) for v in epoch0 if v is not None and math.isfinite(v)]
    summaries = [s for s in (aggregate_points(records) if aggregated is None else aggregated) if s.n + s.n_diverged > 0]
    l0_u: float | None
    if initial:
        l0_u, source = sign * float(np.mean(initial)), SOURCE_EPOCH0
    else:
        finals = [sign * v for s in summaries for v in s.values]
        l0_u, source = (max(finals), SOURCE_WORST_FINAL) if finals else (None, SOURCE_NONE)

    method_order: list[str] = []
    for s in summaries:
        if s.method not in method_order:
            method_order.append(s.method)
    summaries.sort(key=lambda s: (method_order.index(s.method), _params_key(s.params)))

    if l0_u is None:  # only possible with no informative trial at all
        return Robustness(direction, delta, None, source, None, {}, [], [], n_resamples, rng_seed)

    points = [
        _Point(s, np.array([min(sign * v, l0_u) for v in s.values] + [l0_u] * s.n_diverged),
               np.array([False] * s.n + [True] * s.n_diverged))
        for s in summaries
    ]
    by_method: dict[str, list[int]] = {m: [] for m in method_order}
    for i, p in enumerate(points):
        by_method[p.summary.method].append(i)
    layouts = [_layout(m, points, by_method[m]) for m in method_order]

    n_seeds = np.array([len(p.capped_u) for p in points])
    values0 = np.array([p.capped_u.mean() for p in points])[None, :]
    diverged0 = np.array([p.diverged.any() for p in points])[None, :]
    l_star0, q0, stats0 = _evaluate(values0, diverged0, l0_u, delta, layouts)

    boot = _bootstrap(points, n_seeds, l0_u, delta, layouts, n_resamples, rng_seed)

    def objective(u: float | None) -> float | None:
        return None if u is None or not math.isfinite(u) else float(sign * u)

    def interval(samples: np.ndarray | None, estimate: float) -> tuple[float, float] | None:
        """An interval in objective units from resamples in minimisation orientation."""
        if samples is None:
            return (sign * estimate,) * 2
        iv = _interval(samples, estimate)
        return iv if iv is None or sign > 0 else (-iv[1], -iv[0])

    def unitless(samples: np.ndarray | None, estimate: float) -> tuple[float, float]:
        iv = None if samples is None else _interval(samples, estimate)
        return (estimate, estimate) if iv is None else iv

    point_out = [
        PointRobustness(
            method=p.summary.method, params=dict(p.summary.params),
            capped=tuple(float(sign * c) for c in p.capped_u), seeds=tuple(p.summary.seeds),
            values=tuple(float(v) for v in p.summary.values), n_diverged=p.summary.n_diverged,
            value=float(sign * values0[0, i]), progress=float(q0[0, i]),
            trained=bool(q0[0, i] >= (1.0 - delta) - 1e-12),
        )
        for i, p in enumerate(points)
    ]

    methods: dict[str, MethodRobustness] = {}
    for lay in layouts:
        st = stats0[lay.name]
        bs = boot[lay.name] if boot else None
        idx = lay.indices
        vs = [point_out[i].value for i in idx]
        completed_idx = [i for i, ok in zip(idx, lay.has_completed, strict=True) if ok]
        best_i = min(completed_idx, key=lambda i: values0[0, i]) if completed_idx else None
        has_theta = len(lay.thetas) > 0
        theta = dict(lay.thetas[int(st.theta[0])]) if has_theta else None
        trained_lr = None
        robust = None
        if theta is not None and st.run_i[0] >= 0:
            lo, hi = float(lay.lrs[st.run_i[0]]), float(lay.lrs[st.run_j[0]])
            trained_lr = (lo, hi)
            run = lay.lrs[st.run_i[0]: st.run_j[0] + 1]
            centre = 0.5 * (math.log10(lo) + math.log10(hi))
            distance = np.round(np.abs(np.log10(run) - centre), 9)
            robust = {**theta, PARAM_LR: float(run[int(distance.argmin())])}
        sens = float(st.sensitivity[0]) if has_theta else None
        decades = float(st.width[0]) if trained_lr is not None else None
        methods[lay.name] = MethodRobustness(
            method=lay.name,
            points=len(idx),
            diverged_points=int(sum(points[i].diverged.any() for i in idx)),
            divergence_rate=float(st.divergence_rate[0]),
            divergence_rate_ci=unitless(bs.divergence_rate if bs else None, float(st.divergence_rate[0])),
            seeds_min=int(n_seeds[idx].min()),
            seeds_max=int(n_seeds[idx].max()),
            best_value=objective(values0[0, best_i]) if best_i is not None else None,
            best_value_ci=interval(bs.best_value if bs else None, values0[0, best_i]) if best_i is not None else None,
            best_params=dict(points[best_i].summary.params) if best_i is not None else None,
            median=median(vs),
            worst=(min(vs) if direction == MAXIMIZE else max(vs)),
            lr_sensitivity=sens,
            lr_sensitivity_ci=unitless(bs.sensitivity if bs else None, sens) if sens is not None else None,
            sensitivity_params=theta,
            trained_lr=trained_lr,
            trained_decades=decades,
            trained_decades_ci=unitless(np.nan_to_num(bs.width, nan=0.0) if bs else None, decades or 0.0)
            if has_theta else None,
            trained_points=int(st.trained_at_theta[0].sum()) if has_theta else 0,
            lr_points=int((lay.grid[int(st.theta[0])] >= 0).sum()) if has_theta else 0,
            robust_params=robust,
            expected_best=expected_best_of_k(vs, k_max, direction),
        )

    comparisons = []
    for ai, a in enumerate(method_order):
        for b in method_order[ai + 1:]:
            prob: float | None = None
            if methods[a].lr_sensitivity is not None and methods[b].lr_sensitivity is not None:
                if boot:
                    sa = np.round(boot[a].sensitivity, _TIE_DECIMALS)
                    sb = np.round(boot[b].sensitivity, _TIE_DECIMALS)
                else:
                    sa = np.round(stats0[a].sensitivity, _TIE_DECIMALS)
                    sb = np.round(stats0[b].sensitivity, _TIE_DECIMALS)
                prob = float(np.mean(sa < sb) + 0.5 * np.mean(sa == sb))
            comparisons.append(Comparison(a, b, prob))

    return Robustness(
        direction=direction, delta=delta, initial_value=objective(l0_u), initial_value_source=source,
        best_value=objective(float(l_star0[0])), methods=methods, comparisons=comparisons,
        points=point_out, n_resamples=n_resamples, rng_seed=rng_seed,
    )


def _bootstrap(points: list[_Point], n_seeds: np.ndarray, l0_u: float, delta: float,
               layouts: list[_MethodLayout], n_resamples: int, rng_seed: int) -> dict[str, _Stats] | None:
    """Every per-method statistic for ``n_resamples`` resamples of each point's seeds."""
    if n_resamples <= 0 or not points:
        return None
    P, S = len(points), int(n_seeds.max())
    capped = np.zeros((P, S))
    div = np.zeros((P, S), bool)
    for i, p in enumerate(points):
        capped[i, : len(p.capped_u)] = p.capped_u
        div[i, : len(p.diverged)] = p.diverged
    used = np.arange(S)[None, :] < n_seeds[:, None]  # (P, S)
    # A draw of seed s for point i is entry i * S + s of the flattened arrays: one flat take per
    # chunk, where take_along_axis over broadcast arrays built an index array per axis (most of
    # the bootstrap's time at 50,000 trials). Same draws, same sums: the same numbers.
    row_start = (np.arange(P) * S)[None, :, None]
    capped_flat, div_flat = capped.ravel(), div.ravel()
    rng = np.random.default_rng(rng_seed)
    chunk = max(1, _CHUNK_ELEMENTS // (P * S))
    parts: list[dict[str, _Stats]] = []
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        draw = rng.integers(0, n_seeds[None, :, None], size=(b, P, S))
        draw += row_start
        picked = capped_flat.take(draw)
        picked[:, ~used] = 0.0
        values = picked.sum(axis=2) / n_seeds[None, :]
        resampled_div = div_flat.take(draw)
        resampled_div[:, ~used] = False
        diverged = np.asarray(resampled_div.any(axis=2), dtype=bool)
        parts.append(_evaluate(values, diverged, l0_u, delta, layouts)[2])
        done += b
    return {
        lay.name: _Stats(*(np.concatenate([getattr(part[lay.name], f) for part in parts])
                           for f in _Stats.__dataclass_fields__))
        for lay in layouts
    }


# ------------------------------------------------------------------------------------------
# what commands and exports are built from


def _json_number(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _json_pair(pair: tuple[float, float] | None) -> list[float | None] | None:
    return None if pair is None else [_json_number(pair[0]), _json_number(pair[1])]


def summary_document(robustness: Robustness, study: str, objective: str,
                     importance: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
    """The ``proxstudy summary --format json`` document (DESIGN.md; its keys are a contract).
    ``importance``: per method, each parameter's share of the variance (``dashboards.importance``);
    given, every method gets an ``importance`` key (``{}`` where nothing is known)."""
    methods = {}
    for name, m in robustness.methods.items():
        methods[name] = {
            "points": m.points,
            "diverged_points": m.diverged_points,
            "divergence_rate": _json_number(m.divergence_rate),
            "divergence_rate_ci": _json_pair(m.divergence_rate_ci),
            "seeds_per_point": [m.seeds_min, m.seeds_max],
            "best": None if m.best_params is None else {
                "value": _json_number(m.best_value),
                "value_ci": _json_pair(m.best_value_ci),
                "params": dict(m.best_params),
            },
            "median": _json_number(m.median),
            "worst": _json_number(m.worst),
            "lr_sensitivity": _json_number(m.lr_sensitivity),
            "lr_sensitivity_ci": _json_pair(m.lr_sensitivity_ci),
            "sensitivity_params": None if m.sensitivity_params is None else dict(m.sensitivity_params),
            "trained_lr": _json_pair(m.trained_lr),
            "trained_decades": _json_number(m.trained_decades),
            "trained_decades_ci": _json_pair(m.trained_decades_ci),
            "robust_params": None if m.robust_params is None else dict(m.robust_params),
        }
        if importance is not None:
            methods[name]["importance"] = {k: _json_number(v) for k, v in importance.get(name, {}).items()}
    return {
        "study": study,
        "objective": objective,
        "direction": robustness.direction,
        "initial_value": _json_number(robustness.initial_value),
        "initial_value_source": robustness.initial_value_source,
        "best_value": _json_number(robustness.best_value),
        "delta": robustness.delta,
        "resamples": robustness.n_resamples,
        "rng_seed": robustness.rng_seed,
        "methods": methods,
        "comparisons": [
            {"a": c.a, "b": c.b, "p_a_less_sensitive": _json_number(c.p_a_less_sensitive)}
            for c in robustness.comparisons
        ],
    }


PICKS = ("best", "robust")


def picks(robustness: Robustness, pick: str = "both") -> dict[str, dict[str, PointRobustness]]:
    """Per method, the points an export offers: ``best`` (best capped seed mean) and/or
    ``robust`` (the most robust configuration), each a point with at least one completed
    seed; a method without such a point has no entry for that pick (and no entry at all if it
    has neither). ``pick``: "best" | "robust" | "both"."""
    if pick not in (*PICKS, "both"):
        raise ValueError(f"pick must be 'best', 'robust' or 'both', got {pick!r}")
    wanted = PICKS if pick == "both" else (pick,)
    out: dict[str, dict[str, PointRobustness]] = {}
    for name, m in robustness.methods.items():
        chosen: dict[str, PointRobustness] = {}
        for kind, params in (("best", m.best_params), ("robust", m.robust_params)):
            if kind not in wanted or params is None:
                continue
            point = robustness.point(name, params)
            if point is not None and point.n_completed > 0:
                chosen[kind] = point
        if chosen:
            out[name] = chosen
    return out
