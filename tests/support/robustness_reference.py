"""The robustness numbers recomputed from raw Optuna trials, independently of the product.

A second, plain implementation of DESIGN.md "Robustness metrics" (minimised objective, grids
where every setting has every lr), for tests that check the product's documents against it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

import optuna

STATUS_ATTR = "status"


@dataclass
class MethodReference:
    best: dict  # params of the best capped seed mean among points with a completed seed
    sensitivity: float  # at the least sensitive setting
    theta: dict  # that setting
    robust: dict | None  # the centre of the trained lr range there, snapped to the grid


def reference(url: str, study: str, delta: float = 0.1) -> dict[str, MethodReference]:
    """Per method, the reference numbers of a study in ``url`` (every point's seeds averaged)."""
    trials = optuna.load_study(study_name=study, storage=url).trials
    used = [t for t in trials if t.user_attrs.get(STATUS_ATTR) in ("completed", "diverged")]
    l0 = statistics.fmean(t.intermediate_values[0] for t in used)
    seeds: dict[tuple, list[float]] = defaultdict(list)
    completed: dict[tuple, int] = defaultdict(int)
    for t in used:
        params = {k: v for k, v in t.params.items() if k not in ("method", "seed")}
        key = (t.params["method"], tuple(sorted(params.items())))
        if t.user_attrs[STATUS_ATTR] == "completed":
            seeds[key].append(min(t.value, l0))
            completed[key] += 1
        else:
            seeds[key].append(l0)
    value = {key: statistics.fmean(v) for key, v in seeds.items()}
    best_all = min(value.values())
    progress = {key: (l0 - v) / (l0 - best_all) for key, v in value.items()}
    out: dict[str, MethodReference] = {}
    for method in sorted({key[0] for key in value}):
        keys = [key for key in value if key[0] == method]
        best_key = min((k for k in keys if completed[k]), key=lambda k: (value[k], k[1]))
        lrs = sorted({dict(k[1])["lr"] for k in keys})
        by_theta: dict[tuple, dict[float, tuple]] = defaultdict(dict)
        for k in keys:
            p = dict(k[1])
            by_theta[tuple(sorted((n, v) for n, v in p.items() if n != "lr"))][p["lr"]] = k
        sens = {theta: statistics.fmean(1 - progress[by_theta[theta][lr]] for lr in lrs) for theta in by_theta}
        theta = min(sens, key=lambda th: (round(sens[th], 12), th))
        trained = [progress[by_theta[theta][lr]] >= 1 - delta - 1e-12 for lr in lrs]
        runs = []  # (width in decades, points, -first index, first, last): the largest wins
        for i in range(len(lrs)):
            for j in range(i, len(lrs)):
                if all(trained[i:j + 1]):
                    runs.append((round(math.log10(lrs[j] / lrs[i]), 9), j - i, -i, i, j))
        robust = None
        if runs:
            _, _, _, i, j = max(runs)
            centre = (math.log10(lrs[i]) + math.log10(lrs[j])) / 2
            lr = min(lrs[i:j + 1], key=lambda x: (round(abs(math.log10(x) - centre), 9), x))
            robust = {**dict(theta), "lr": lr}
        out[method] = MethodReference(dict(best_key[1]), sens[theta], dict(theta), robust)
    return out
