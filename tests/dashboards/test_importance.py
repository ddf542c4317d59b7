"""Parameter importance (fANOVA on capped values, log parameters in log) on hand-made studies."""

from __future__ import annotations

import itertools
import math

import pytest

from proxstudy.dashboards.importance import (
    DEFAULT_LOG_PARAMS,
    log_params_of,
    log_params_of_document,
    method_importance,
    study_importance,
)
from proxstudy.dashboards.metrics import compute_robustness
from proxstudy.study.records import TrialRecord
from proxstudy.study.space import parse_space
from tests.support import study_fixtures as F

_numbers = itertools.count()
LRS = (1e-3, 1e-2, 0.1, 1.0, 10.0)
TAUS = (0.05, 0.5, 5.0)
CGS = (1, 3, 10)


def rec(method, params, seed, value=None, status="completed", l0=2.0):
    return TrialRecord(number=next(_numbers), method=method, params=dict(params), seed=seed, status=status,
                       value=value, intermediate={0: l0})


def grid(loss, seeds=(0, 1)):
    """Records of method P over LRS x TAUS x CGS; ``loss(lr, tau, cg, seed)`` None = diverged."""
    out = []
    for lr, tau, cg, seed in itertools.product(LRS, TAUS, CGS, seeds):
        value = loss(lr, tau, cg, seed)
        params = {"lr": lr, "tau_prox": tau, "cg_iterations": cg}
        out.append(rec("P", params, seed, value, "completed" if value is not None else "diverged"))
    return out


def test_only_lr_matters():
    # a bowl in log10(lr) around 0.1, a seed-level wiggle 1000x smaller, nothing from tau or cg
    records = grid(lambda lr, tau, cg, seed: 0.05 + 0.3 * (math.log10(lr) + 1) ** 2 + 1e-4 * seed)
    found = study_importance(compute_robustness(records, n_resamples=0))["P"]
    assert set(found.shares) == {"lr", "tau_prox", "cg_iterations"}
    assert found.shares["lr"] > 0.9
    assert sum(found.shares.values()) == pytest.approx(1.0)
    assert found.n_observations == len(records) // 2  # points: seed means
    assert found.log_params == ("lr", "tau_prox")


def test_only_tau_matters_on_a_log_axis():
    # the value depends on log10(tau) linearly: in log space tau explains all of it
    records = grid(lambda lr, tau, cg, seed: 1.0 + 0.3 * math.log10(tau))
    shares = study_importance(compute_robustness(records, n_resamples=0))["P"].shares
    assert shares["tau_prox"] > 0.9 and shares["lr"] < 0.05


def test_diverged_trials_are_data_not_dropped():
    # Completed runs all reach 0.1 whatever the parameters; lr >= 1 diverges (capped at l0 = 2).
    # Dropping the diverged trials would leave a constant: nothing to explain. Kept, lr explains it.
    records = grid(lambda lr, tau, cg, seed: None if lr >= 1.0 else 0.1)
    assert sum(r.status == "diverged" for r in records) == len(records) * 2 // 5
    found = study_importance(compute_robustness(records, n_resamples=0))["P"]
    assert found.n_observations == len(records) // 2  # every point, the diverged ones too
    assert found.shares["lr"] > 0.9
    completed_only = [r for r in records if r.status == "completed"]
    assert study_importance(compute_robustness(completed_only, n_resamples=0))["P"].shares == {}


def test_deterministic_and_seeded():
    records = grid(lambda lr, tau, cg, seed: 0.1 + 0.2 * abs(math.log10(lr)) + 0.05 * math.log10(tau) ** 2
                   + 0.001 * cg + 0.002 * seed)
    r = compute_robustness(records, n_resamples=0)
    first = study_importance(r)["P"].shares
    assert study_importance(r)["P"].shares == first  # bit for bit
    assert first["lr"] > first["tau_prox"] > first["cg_iterations"]


def test_linear_and_log_axes_differ():
    # y = log10(lr): on the log axis lr alone explains it; without the transform the forest still
    # finds lr but tau (irrelevant) is never the main factor either way
    records = grid(lambda lr, tau, cg, seed: 1.0 + 0.2 * math.log10(lr))
    points = compute_robustness(records, n_resamples=0).points
    log = method_importance(points, "P", DEFAULT_LOG_PARAMS)
    linear = method_importance(points, "P", ())
    assert log.log_params == ("lr", "tau_prox") and linear.log_params == ()
    assert log.shares["lr"] > 0.9 and linear.shares["lr"] > 0.5


def test_nothing_to_explain():
    one_param = [rec("B", {"lr": 0.1}, s, 0.5) for s in range(3)]  # lr does not vary
    constant = [rec("C", {"lr": lr}, 0, 0.3) for lr in LRS]  # nothing varies in the value
    r = compute_robustness(one_param + constant, n_resamples=0)
    found = study_importance(r)
    assert found["B"].shares == {} and found["C"].shares == {}


def test_categorical_optimizer_field():
    records = []
    for lr, nesterov, seed in itertools.product(LRS, (True, False), (0, 1)):
        records.append(rec("S", {"lr": lr, "optimizer.nesterov": nesterov}, seed, 0.2 if nesterov else 1.2))
    shares = study_importance(compute_robustness(records, n_resamples=0))["S"].shares
    assert shares["optimizer.nesterov"] > 0.9


def test_log_params_from_the_search_space():
    space = parse_space(F.SyntheticSpace().document("s"))
    assert log_params_of(space) == {"backprop": frozenset({"lr"}), "proxprop-cg": frozenset({"lr", "tau_prox"})}
    assert log_params_of_document(F.SyntheticSpace().document("s")) == log_params_of(space)
    assert log_params_of_document(None) == {} and log_params_of_document({"study": 3}) == {}


def test_summary_json_has_importance_per_method(tmp_path, capsys):
    import json

    from tests.support.cli import run_main

    url = f"sqlite:///{tmp_path / 's.db'}"
    F.build_study(url, "s")  # BackProp diverges above lr 0.1, ProxProp's bowl moves with tau and cg
    code, out, err = run_main(["summary", "s", "--storage", url, "--format", "json"], capsys)
    assert code == 0, err
    methods = json.loads(out)["methods"]
    assert methods["backprop"]["importance"] == {"lr": 1.0}  # its only swept parameter
    shares = methods["proxprop-cg"]["importance"]
    assert set(shares) == {"lr", "tau_prox", "cg_iterations"} and sum(shares.values()) == pytest.approx(1.0)
    assert max(shares, key=shares.get) == "lr"


def test_large_methods_are_sampled_deterministically(monkeypatch):
    from proxstudy.dashboards import importance

    records = grid(lambda lr, tau, cg, seed: 0.05 + 0.3 * (math.log10(lr) + 1) ** 2 + 1e-4 * seed)
    r = compute_robustness(records, n_resamples=0)
    monkeypatch.setattr(importance, "MAX_POINTS", 30)  # of 45 points
    first = study_importance(r)["P"]
    assert first.n_observations == 30 and first.shares["lr"] > 0.9
    assert study_importance(r)["P"].shares == first.shares


def test_importance_figure_shows_names_literally():
    from proxstudy.dashboards.importance import importance_figure

    records = [rec("<i>m</i>", {"lr": lr, "tau_prox": tau}, 0, 0.1 + lr / 10) for lr in LRS for tau in TAUS]
    found = study_importance(compute_robustness(records, n_resamples=0))
    (trace,) = importance_figure(found).data
    assert trace.name == "&lt;i&gt;m&lt;/i&gt;" and set(trace.y) == {"log10 lr", "log10 tau_prox"}
