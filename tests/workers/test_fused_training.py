"""Fused trials against unfused run_trial, member by member, in float64.

run_trial has no dtype switch: its models follow torch's default dtype, its data sets are
float32.  The unfused reference here runs with the default dtype float64 and its data set cast
to float64 (monkeypatched loader); the fused loop casts inputs to its models' dtype itself.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import proxprop.stacked
from proxstudy.workers import training
from proxstudy.workers.config import ConfigError, TrialConfig
from proxstudy.workers.fused_training import run_fused_trials
from proxstudy.workers.training import EPOCH_KEYS, run_trial
from tests.support.trial_configs import valid_trial_config

RTOL = 1e-8

MODELS = {
    "mlp": {"model": {"name": "mlp", "hidden": [12, 10]}},
    "convnet": {"model": {"name": "convnet", "channels": [3, 4, 4], "kernel_size": 3}},
    "autoencoder": {"model": {"name": "autoencoder", "hidden": [12, 5]}},
}
#: (mode, cg_iterations) and members (lr, tau_prox, seed) where the unfused runs are stable
MODES = {
    "gradient": ("gradient", None),
    "prox_exact": ("prox_exact", None),
    "prox_cg": ("prox_cg", 3),
    "prox_cg_ref": ("prox_cg_ref", 3),
}
OPTIMIZERS = {
    "sgd-nesterov": (
        {"name": "sgd", "momentum": 0.9, "nesterov": True}, [(0.05, 0.5, 0), (0.02, 2.0, 1), (0.1, 0.1, 2)]
    ),
    "adam": ({"name": "adam"}, [(3e-3, 0.5, 0), (1e-3, 2.0, 1), (1e-2, 0.1, 2)]),
}


@pytest.fixture
def float64(monkeypatch):
    """Default dtype float64 for both runs; the unfused loop's data cast to float64."""
    original_load = training.load_dataset

    def load_float64(spec, device="cpu"):
        data = original_load(spec, device)
        cast = {name: getattr(data, name).double() for name in ("x_train", "x_val", "x_test")
                if getattr(data, name) is not None}
        return dataclasses.replace(data, **cast)

    monkeypatch.setattr(training, "load_dataset", load_float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def member_configs(model: str, mode: str, optimizer: str, epochs: int = 2, **changes) -> list[TrialConfig]:
    kind, cg = MODES[mode]
    spec, members = OPTIMIZERS[optimizer]
    base = {
        "dataset": {"name": "digits", "train_samples": 160},
        "training": {"epochs": epochs, "batch_size": 50},  # 4 batches, the last one smaller
        "mode": kind,
        "cg_iterations": cg,
        "optimizer": spec,
        "device": "cpu",
        **MODELS[model],
        **changes,
    }
    if kind == "gradient":
        members = [(lr * 2, None, seed) for lr, _, seed in members]
    return [valid_trial_config(**base, lr=lr, tau_prox=tau, seed=seed) for lr, tau, seed in members]


def assert_same_history(fused, unfused, rtol=RTOL):
    assert fused.status == unfused.status
    assert fused.diverged_epoch == unfused.diverged_epoch
    assert len(fused.history) == len(unfused.history)
    for mine, theirs in zip(fused.history, unfused.history, strict=True):
        assert tuple(mine) == EPOCH_KEYS and mine["epoch"] == theirs["epoch"]
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "objective"):
            if theirs[key] is None:
                assert mine[key] is None, key
            else:
                assert mine[key] == pytest.approx(theirs[key], rel=rtol, abs=1e-300), (key, mine["epoch"])


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("model", list(MODELS))
def test_members_equal_their_unfused_trials(float64, model, mode, optimizer):
    configs = member_configs(model, mode, optimizer)
    fused = run_fused_trials(configs)
    assert len(fused) == len(configs)
    for config, outcome in zip(configs, fused, strict=True):
        reference = run_trial(config)
        assert reference.status == "completed", "pick a stable lr for this reference"
        assert_same_history(outcome, reference)
        assert outcome.history[-1]["train_loss"] < outcome.history[0]["train_loss"]
    # the members did differ (lr, tau, seed): no two histories agree
    losses = {round(outcome.history[-1]["train_loss"], 10) for outcome in fused}
    assert len(losses) == len(configs)


def test_callbacks_per_member_match_run_trial(float64):
    configs = member_configs("mlp", "prox_cg", "sgd-nesterov", epochs=2)
    configs[1] = dataclasses.replace(configs[1], objective="val_accuracy", method="other-label")
    epochs, reports, finished, progress = {}, {}, [], []
    fused = run_fused_trials(
        configs,
        lambda member, entry: epochs.setdefault(member, []).append(entry),
        on_report=lambda member, metrics: reports.setdefault(member, []).append(metrics),
        on_finish=lambda member, outcome: finished.append((member, outcome.status)),
        on_progress=lambda *args: progress.append(args),
    )
    for member, config in enumerate(configs):
        seen, seen_reports = [], []
        run_trial(config, seen.append, on_report=seen_reports.append)
        assert [e["epoch"] for e in epochs[member]] == [0, 1, 2]
        assert epochs[member] == fused[member].history
        assert [r["trial_status"] for r in reports[member]] == [r["trial_status"] for r in seen_reports]
        assert all(set(r) == set(s) for r, s in zip(reports[member], seen_reports, strict=True))
        assert_same_history(fused[member], dataclasses.replace(fused[member], history=seen))
    assert fused[1].value == fused[1].history[-1]["val_accuracy"]
    assert sorted(finished) == [(0, "completed"), (1, "completed"), (2, "completed")]
    assert progress[:4] == [(1, 1, 4), (1, 2, 4), (1, 3, 4), (1, 4, 4)] and len(progress) == 8
    assert fused[0].history[0]["epoch_seconds"] == 0.0 and fused[0].history[1]["epoch_seconds"] > 0.0


@pytest.mark.parametrize("how", ["nan-mini-batch", "loss-above-factor"])
def test_a_diverging_member_stops_while_the_others_go_on(float64, how):
    if how == "nan-mini-batch":  # BackProp at an absurd lr overflows within the first epoch
        configs = member_configs("mlp", "gradient", "sgd-nesterov", epochs=4)
        configs[1] = dataclasses.replace(configs[1], lr=1e200)
    else:  # finite, but above divergence_factor x the initial loss at an epoch end
        configs = member_configs("mlp", "prox_cg", "sgd-nesterov", epochs=4)
        configs[1] = dataclasses.replace(configs[1], lr=5.0,
                                         training={**configs[1].training, "divergence_factor": 1.05})
    finished = []
    fused = run_fused_trials(configs, on_finish=lambda member, outcome: finished.append(member))
    references = [run_trial(config) for config in configs]
    assert [r.status for r in references] == ["completed", "diverged", "completed"]
    assert references[1].diverged_epoch < 4
    if how == "nan-mini-batch":
        assert references[1].history[-1]["train_loss"] is None  # stopped on a non-finite batch
    for outcome, reference in zip(fused, references, strict=True):
        assert_same_history(outcome, reference)
    assert finished[0] == 1 and sorted(finished) == [0, 1, 2]  # recorded as soon as it diverged


def test_every_member_diverging_ends_the_fused_trial(float64):
    configs = member_configs("mlp", "gradient", "sgd-nesterov", epochs=3)
    configs = [dataclasses.replace(config, lr=1e12) for config in configs]
    fused = run_fused_trials(configs)
    for config, outcome in zip(configs, fused, strict=True):
        assert_same_history(outcome, run_trial(config))
        assert outcome.status == "diverged"


def test_a_failure_fails_only_the_member_it_concerns(float64, monkeypatch):
    """A solve that raises for one member's tau fails that member (its error recorded); the
    others redo the batch and finish exactly as their unfused trials."""
    configs = member_configs("mlp", "prox_exact", "sgd-nesterov", epochs=2)
    poisoned = 1.0 / configs[2].tau_prox
    original = proxprop.stacked.stacked_gram_solve
    calls = []

    def solve(gram, rhs, solve, **kwargs):
        calls.append(solve.members)
        if len(calls) > 5 and bool((solve.inv_tau == poisoned).any()):
            raise RuntimeError("solver broke for this tau")
        return original(gram, rhs, solve, **kwargs)

    monkeypatch.setattr(proxprop.stacked, "stacked_gram_solve", solve)
    fused = run_fused_trials(configs)
    monkeypatch.setattr(proxprop.stacked, "stacked_gram_solve", original)
    assert fused[2].status == "failed" and "solver broke for this tau" in fused[2].error
    for config, outcome in zip(configs[:2], fused[:2], strict=True):
        assert outcome.error is None
        assert_same_history(outcome, run_trial(config))


def test_a_failure_no_member_causes_alone_fails_them_all(float64, monkeypatch):
    configs = member_configs("mlp", "prox_exact", "sgd-nesterov", epochs=2)
    original = proxprop.stacked.stacked_gram_solve

    def solve(gram, rhs, solve, **kwargs):
        if solve.members > 1:
            raise RuntimeError("out of memory with all members")
        return original(gram, rhs, solve, **kwargs)

    monkeypatch.setattr(proxprop.stacked, "stacked_gram_solve", solve)
    fused = run_fused_trials(configs)
    for outcome in fused:
        assert outcome.status == "failed" and "out of memory with all members" in outcome.error
        assert [e["epoch"] for e in outcome.history] == [0]


def test_callback_exceptions_reach_the_caller(float64):
    class Stop(Exception):
        pass

    def on_epoch(member, entry):
        if entry["epoch"] == 1:
            raise Stop()

    with pytest.raises(Stop):
        run_fused_trials(member_configs("mlp", "gradient", "adam"), on_epoch)


def test_members_must_share_the_computation():
    configs = member_configs("mlp", "prox_cg", "adam")
    with pytest.raises(ConfigError, match="cg_iterations"):
        run_fused_trials([configs[0], dataclasses.replace(configs[1], cg_iterations=5)])


def test_float32_runs_close_to_unfused():
    """The production dtype: the same numbers up to float32 rounding."""
    configs = member_configs("convnet", "prox_cg", "adam", epochs=2)
    for config, outcome in zip(configs, run_fused_trials(configs), strict=True):
        reference = run_trial(config)
        assert outcome.status == reference.status == "completed"
        for mine, theirs in zip(outcome.history, reference.history, strict=True):
            assert math.isclose(mine["train_loss"], theirs["train_loss"], rel_tol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model", ["mlp", "convnet"])
def test_members_equal_their_unfused_trials_on_cuda(float64, model):
    configs = [config.with_device("cuda") for config in member_configs(model, "prox_cg", "sgd-nesterov")]
    fused = run_fused_trials(configs)
    for config, outcome in zip(configs, fused, strict=True):
        assert outcome.device.startswith("cuda")
        assert_same_history(outcome, run_trial(config))
