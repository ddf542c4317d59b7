"""The `proxstudy summary --format json` document against an independent computation.

The expected numbers are computed here straight from the raw Optuna trials (states, params,
values, intermediate values), with plain loops and none of the product's functions; the
document comes from what the summary command runs: ``records.load_records`` ->
``metrics.compute_robustness`` -> ``metrics.summary_document``.
"""

from __future__ import annotations

import json
import math
import statistics

import optuna
import pytest
from optuna.trial import TrialState

from proxstudy.dashboards.metrics import compute_robustness, summary_document
from proxstudy.study.records import load_records
from tests.support import study_fixtures as F

# Half-decade lr steps, so some methods train over several neighbouring lrs.
SPACE = F.SyntheticSpace(lrs=tuple(10 ** (e / 2) for e in range(-6, 3)), taus=(0.05, 1.0), cgs=(1, 3), seeds=(0, 1, 2))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('summary') / 'studies.db'}"
    F.build_study(url, "summary", SPACE, n_failed=2, n_running=1)
    return url


def independent_summary(url: str, name: str, delta: float = 0.1) -> dict:
    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    informative = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    l0 = statistics.fmean(t.intermediate_values[0] for t in informative if 0 in t.intermediate_values)
    seeds: dict[tuple, list[tuple[float, bool]]] = {}
    for t in informative:
        params = {k: v for k, v in t.params.items() if k not in ("method", "seed")}
        key = (t.params["method"], tuple(sorted(params.items())))
        ok = t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)
        seeds.setdefault(key, []).append((min(t.value, l0) if ok else l0, not ok))
    v = {key: statistics.fmean(c for c, _ in s) for key, s in seeds.items()}
    l_star = min(v.values())
    q = {key: (l0 - val) / (l0 - l_star) for key, val in v.items()}
    out = {"initial_value": l0, "best_value": l_star, "methods": {}}
    for method in {key[0] for key in v}:
        mine = [key for key in v if key[0] == method]
        grid = sorted({dict(key[1])["lr"] for key in mine})
        thetas: dict[tuple, dict[float, tuple]] = {}
        for key in mine:
            params = dict(key[1])
            lr = params.pop("lr")
            thetas.setdefault(tuple(sorted(params.items())), {})[lr] = key
        complete = [th for th, row in thetas.items() if len(row) == len(grid)] or list(thetas)
        sens = {th: statistics.fmean(1 - q[key] for key in thetas[th].values()) for th in complete}
        theta = min(sorted(complete), key=lambda th: round(sens[th], 12))
        row = thetas[theta]
        trained = [lr in row and q[row[lr]] >= 1 - delta - 1e-12 for lr in grid]
        runs = []  # (width, points, -start, start, end)
        for i in range(len(grid)):
            for j in range(i, len(grid)):
                if all(trained[i:j + 1]):
                    runs.append((round(math.log10(grid[j] / grid[i]), 9), j - i, -i, i, j))
        robust, trained_lr, decades = None, None, None
        if runs:
            *_, i, j = max(runs)
            trained_lr = [grid[i], grid[j]]
            decades = math.log10(grid[j] / grid[i])
            centre = math.sqrt(grid[i] * grid[j])
            lr = min(grid[i:j + 1], key=lambda x: (round(abs(math.log10(x / centre)), 9), x))
            robust = {**dict(theta), "lr": lr}
        with_completed = [key for key in mine if any(not d for _, d in seeds[key])]
        best = min(with_completed, key=lambda key: v[key])
        diverged = [key for key in mine if any(d for _, d in seeds[key])]
        out["methods"][method] = {
            "points": len(mine), "diverged_points": len(diverged), "divergence_rate": len(diverged) / len(mine),
            "best": {"value": v[best], "params": dict(best[1])}, "lr_sensitivity": sens[theta],
            "sensitivity_params": dict(theta), "trained_lr": trained_lr, "trained_decades": decades,
            "robust_params": robust,
        }
    return out


def test_summary_json_matches_an_independent_computation(study):
    records = load_records(study, "summary")
    doc = summary_document(compute_robustness(records), "summary", "train_loss")
    doc = json.loads(json.dumps(doc))  # what --format json prints: plain JSON
    expected = independent_summary(study, "summary")
    assert doc["study"] == "summary" and doc["objective"] == "train_loss" and doc["direction"] == "minimize"
    assert doc["delta"] == 0.1
    assert doc["initial_value"] == pytest.approx(expected["initial_value"])
    assert doc["best_value"] == pytest.approx(expected["best_value"])
    assert set(doc["methods"]) == set(expected["methods"]) == {"backprop", "proxprop-cg"}
    for name, want in expected["methods"].items():
        got = doc["methods"][name]
        for key in ("points", "diverged_points", "sensitivity_params", "robust_params"):
            assert got[key] == want[key], (name, key)
        for key in ("divergence_rate", "lr_sensitivity"):
            assert got[key] == pytest.approx(want[key]), (name, key)
        assert got["best"]["params"] == want["best"]["params"]
        assert got["best"]["value"] == pytest.approx(want["best"]["value"])
        if want["trained_lr"] is None:
            assert got["trained_lr"] is None and got["trained_decades"] is None
        else:
            assert got["trained_lr"] == pytest.approx(want["trained_lr"])
            assert got["trained_decades"] == pytest.approx(want["trained_decades"])
        lo, hi = got["lr_sensitivity_ci"]
        assert lo <= got["lr_sensitivity"] <= hi
        lo, hi = got["trained_decades_ci"]
        assert lo <= (got["trained_decades"] or 0.0) <= hi
    # One pair, and it is a probability.
    (pair,) = doc["comparisons"]
    assert (pair["a"], pair["b"]) == ("backprop", "proxprop-cg") and 0.0 <= pair["p_a_less_sensitive"] <= 1.0


def test_summary_json_keys_are_the_contract(study):
    doc = summary_document(compute_robustness(load_records(study, "summary")), "summary", "train_loss")
    assert list(doc)[:7] == ["study", "objective", "direction", "initial_value", "initial_value_source",
                             "best_value", "delta"]
    for m in doc["methods"].values():
        for key in ("points", "diverged_points", "divergence_rate", "best", "lr_sensitivity", "lr_sensitivity_ci",
                    "sensitivity_params", "trained_lr", "trained_decades", "trained_decades_ci", "robust_params"):
            assert key in m
        assert set(m["best"]) >= {"value", "params"}
    assert set(doc["comparisons"][0]) == {"a", "b", "p_a_less_sensitive"}
