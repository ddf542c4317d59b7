"""Which parameter explains a method's objective: fANOVA on capped values, log parameters in log.

Per method, every point (method and parameters but the seed) is one observation: its value v
from the robustness analysis, the mean of its seeds' capped values (min(final, l0), a diverged
seed counts as l0 -- mirrored for maximised objectives), so diverged runs are data, not
missing. Optuna's own evaluators would drop them (no finite value) and read lr and tau_prox
on a linear axis, where a grid 1e-3 ... 10 is one point near 0 and a few far away. (Seed
means rather than single seeds: the seed-to-seed spread is no parameter's share anyway, and
the forest fits in half the time.) A single varying parameter gets share 1 without a forest.

The observations become FrozenTrials of an in-memory Optuna study whose parameters are
log10(value) for log-scale parameters (lr, tau_prox, and any range declared ``log: true``)
and the value itself otherwise, with plain (non-log) distributions over the transformed
range; non-numeric parameters (e.g. optimizer.nesterov) stay categorical. Only parameters
that vary within the method enter. Optuna's ``FanovaImportanceEvaluator`` (a random forest
with a fixed seed, so the same study gives the same shares) then gives each parameter's share
of the objective's variance (normalised to sum to 1). fANOVA is chosen over PED-ANOVA because
the question is "share of the variance explained", which is what fANOVA decomposes; PED-ANOVA
asks which parameters separate the top quantile from the rest.

A method with no varying parameter, fewer than two observations, or a constant capped value
has nothing to explain: its shares are ``{}``. A method with more than ``MAX_POINTS`` points
is estimated on a sample of that many, drawn with the same fixed seed. The forest has
``N_TREES`` trees of depth at most ``MAX_DEPTH`` (Optuna's defaults, 64 trees of depth 64,
took 264 s for 2,000 points of a random-search study here: the marginal variances walk every
split of every tree); this one takes about 2 s for 2,000 points and still gives lr 0.9999 on
a loss that depends on lr alone.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxstudy.dashboards.metrics import PointRobustness, Robustness
from proxstudy.errors import ConfigError
from proxstudy.study.records import PARAM_LR, PARAM_TAU
from proxstudy.study.space import SearchSpace, parse_space

if TYPE_CHECKING:
    import plotly.graph_objects as go
    from optuna.distributions import BaseDistribution

__all__ = [
    "DEFAULT_LOG_PARAMS",
    "FANOVA_SEED",
    "MAX_DEPTH",
    "MAX_POINTS",
    "N_TREES",
    "MethodImportance",
    "importance_figure",
    "log_params_of",
    "log_params_of_document",
    "method_importance",
    "report_section",
    "study_importance",
]

FANOVA_SEED = 0
#: At most this many points enter the forest (a seeded sample of the method's points beyond it).
MAX_POINTS = 2000
#: The random forest of fANOVA: few shallow trees keep the marginal variances quick.
N_TREES = 32
MAX_DEPTH = 6
#: Parameters on a log axis when the study's search space is unknown (as recorded by the runner).
DEFAULT_LOG_PARAMS = frozenset({PARAM_LR, PARAM_TAU})


@dataclass(frozen=True)
class MethodImportance:
    method: str
    shares: dict[str, float]  # param -> share of the variance, summing to 1 (empty: nothing to explain)
    n_observations: int  # points used (at most MAX_POINTS), those with diverged seeds included
    log_params: tuple[str, ...]  # the params transformed to log10


def log_params_of(space: SearchSpace | None) -> dict[str, frozenset[str]]:
    """Per method, the parameters on a log scale in the search space (``{}`` without one:
    then :data:`DEFAULT_LOG_PARAMS` applies to every method)."""
    if space is None:
        return {}
    return {name: frozenset(p for p, param in method.params.items() if param.log)
            for name, method in space.methods.items()}


def log_params_of_document(document: Mapping[str, Any] | None) -> dict[str, frozenset[str]]:
    """:func:`log_params_of` the study's stored search-space document (``{}`` when there is
    none or it does not parse with this version)."""
    if document is None:
        return {}
    try:
        return log_params_of(parse_space(dict(document), "<stored document>"))
    except ConfigError:
        return {}


def _columns(points: list[PointRobustness], log_params: Collection[str]) -> dict[str, list]:
    """Per varying parameter, its (transformed) value for every observation."""
    names = sorted({name for p in points for name in p.params})
    out: dict[str, list] = {}
    for name in names:
        values = [p.params.get(name) for p in points]
        if len(set(map(repr, values))) < 2:
            continue
        numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) == len(values):
            log = name in log_params and all(v > 0 for v in numbers)
            out[name] = [math.log10(v) for v in numbers] if log else numbers
        else:
            out[name] = [str(v) for v in values]
    return out


def method_importance(points: list[PointRobustness], method: str, log_params: Collection[str] = DEFAULT_LOG_PARAMS,
                      seed: int = FANOVA_SEED) -> MethodImportance:
    """fANOVA shares of one method's points (see the module docstring)."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import create_trial

    mine = [p for p in points if p.method == method]
    values = [p.value for p in mine]
    columns = _columns(mine, log_params)
    used_log = tuple(sorted(name for name in columns if name in log_params))
    if len(values) < 2 or not columns or max(values) - min(values) <= 1e-12 * max(1.0, abs(max(values))):
        return MethodImportance(method, {}, len(values), used_log)
    if len(columns) == 1:  # what fANOVA gives a single parameter, without fitting a forest
        return MethodImportance(method, {next(iter(columns)): 1.0}, len(values), used_log)
    distributions: dict[str, BaseDistribution] = {}
    for name, column in columns.items():
        if isinstance(column[0], str):
            distributions[name] = CategoricalDistribution(sorted(set(column)))
        else:
            distributions[name] = FloatDistribution(min(column), max(column))
    rows: list[int] | range = range(len(values))
    if len(values) > MAX_POINTS:  # a fixed sample: the forest's cost grows faster than the points
        rows = sorted(random.Random(seed).sample(range(len(values)), MAX_POINTS))
    trials = [
        create_trial(params={name: column[i] for name, column in columns.items()},
                     distributions=distributions, value=values[i])
        for i in rows
    ]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()  # in memory; the direction does not matter for variance shares
    study.add_trials(trials)
    evaluator = FanovaImportanceEvaluator(n_trees=N_TREES, max_depth=MAX_DEPTH, seed=seed)
    shares = get_param_importances(study, evaluator=evaluator, normalize=True)
    return MethodImportance(method, {name: float(shares.get(name, 0.0)) for name in columns}, len(trials), used_log)


def study_importance(robustness: Robustness, log_params: Mapping[str, Collection[str]] | None = None,
                     seed: int = FANOVA_SEED) -> dict[str, MethodImportance]:
    """:func:`method_importance` of every method of the analysis, in its method order."""
    log_params = log_params or {}
    return {
        name: method_importance(robustness.points, name, log_params.get(name, DEFAULT_LOG_PARAMS), seed)
        for name in robustness.methods
    }


def importance_figure(importances: Mapping[str, MethodImportance]) -> go.Figure:
    """Per method, each parameter's share of the variance as grouped horizontal bars."""
    import plotly.graph_objects as go

    from proxstudy.dashboards.figures import plot_text

    params = sorted({p for found in importances.values() for p in found.shares})
    fig = go.Figure()
    for method, found in importances.items():
        if not found.shares:
            continue
        shown = [p for p in params if p in found.shares]
        labels = [f"log10 {p}" if p in found.log_params else p for p in shown]
        name = plot_text(method)
        fig.add_trace(go.Bar(y=[plot_text(label) for label in labels], x=[found.shares[p] for p in shown],
                             name=name, orientation="h",
                             hovertemplate=f"{name}<br>%{{y}}: %{{x:.1%}} of the variance"
                                           f" ({found.n_observations} points)<extra></extra>"))
    empty = [plot_text(m) for m, found in importances.items() if not found.shares]
    note = f" (nothing to explain: {', '.join(empty)})" if empty else ""
    fig.update_layout(
        title={"text": "Parameter importance: share of the capped objective's variance (fANOVA)" + note},
        xaxis={"title": "share of variance", "range": [0, 1], "tickformat": ".0%"},
        barmode="group", margin={"l": 140, "r": 20, "t": 50, "b": 50}, legend={"orientation": "h"},
    )
    return fig


def report_section(data: Any) -> str:
    """The report's importance section (an HTML fragment) of a study's data (``StudyData``:
    its ``metrics`` and stored search-space document ``space``)."""
    figure = importance_figure(study_importance(data.metrics, log_params_of_document(data.space)))
    config = {"displaylogo": False, "responsive": True}
    return ('<h2>Parameter importance</h2><div id="importance">'
            + figure.to_html(full_html=False, include_plotlyjs=False, config=config) + "</div>")
