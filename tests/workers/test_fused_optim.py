"""Stacked SGD / Adam against torch.optim applied to each member's unstacked copy (float64)."""

from __future__ import annotations

import pytest
import torch

from proxstudy.workers.config import validate_optimizer_spec
from proxstudy.workers.fused_optim import StackedAdam, StackedSGD, build_stacked_optimizer
from proxstudy.workers.training import build_optimizer

SHAPES = [(3, 4), (4,), (2, 3, 2, 2)]

SGD_MEMBERS = [
    ({"name": "sgd", "momentum": 0.95, "nesterov": True}, 0.1),
    ({"name": "sgd"}, 0.5),  # no momentum: no buffer
    ({"name": "sgd", "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01}, 0.05),
    ({"name": "sgd", "momentum": 0.5, "nesterov": True, "weight_decay": 0.1, "maximize": True}, 0.2),
]
#: every member with the same switches (the fast paths for uniform groups)
SGD_UNIFORM = [({"name": "sgd", "momentum": m, "nesterov": True, "maximize": True}, lr)
               for m, lr in ((0.95, 0.1), (0.5, 1.0), (0.9, 0.01))]
ADAM_UNIFORM = [({"name": "adam", "amsgrad": True, "maximize": True, "betas": [b, 0.99]}, 1e-2) for b in (0.9, 0.5)]
ADAM_MEMBERS = [
    ({"name": "adam"}, 1e-3),
    ({"name": "adam", "betas": [0.8, 0.99], "eps": 1e-6, "weight_decay": 0.05}, 1e-2),
    ({"name": "adam", "amsgrad": True, "betas": [0.5, 0.9]}, 3e-2),
    ({"name": "adam", "maximize": True, "amsgrad": True, "eps": 1e-3}, 0.1),
]


def run_both(members, steps=40, drop_after=None, keep=None):
    """Drive a stacked optimizer and per-member torch.optim optimizers with the same random
    gradients; optionally drop members (select_) after `drop_after` steps.  Returns the final
    stacked parameters and the unstacked ones of the kept members."""
    specs = [validate_optimizer_spec(spec, "<test>") for spec, _ in members]
    lrs = [lr for _, lr in members]
    k = len(members)
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn((k, *shape), generator=gen, dtype=torch.float64) for shape in SHAPES]
    stacked = [p.clone().requires_grad_(True) for p in init]
    optimizer = build_stacked_optimizer(stacked, specs, lrs)
    singles = [[p[i].clone().requires_grad_(True) for p in init] for i in range(k)]
    torch_opts = [build_optimizer(params, spec, lr) for params, spec, lr in zip(singles, specs, lrs, strict=True)]
    live = list(range(k))
    for step in range(steps):
        if drop_after is not None and step == drop_after:
            index = torch.tensor(keep)
            stacked = [p.detach()[index].clone().requires_grad_(True) for p in stacked]
            optimizer.select_(index, stacked)
            live = [live[i] for i in keep]
        grads = [torch.randn((len(live), *shape), generator=gen, dtype=torch.float64) for shape in SHAPES]
        for p, g in zip(stacked, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()
        for row, member in enumerate(live):
            for p, g in zip(singles[member], grads, strict=True):
                p.grad = g[row].clone()
            torch_opts[member].step()
    return stacked, [singles[m] for m in live]


def assert_members_equal(stacked, singles, rtol=1e-12):
    for row, params in enumerate(singles):
        for p_stacked, p_single in zip(stacked, params, strict=True):
            expected = p_single.detach()
            err = (p_stacked.detach()[row] - expected).abs().max() / expected.abs().max()
            assert err < rtol, f"member {row}: relative error {err:.2e}"


@pytest.mark.parametrize(
    "members", [SGD_MEMBERS, ADAM_MEMBERS, SGD_UNIFORM, ADAM_UNIFORM],
    ids=["sgd", "adam", "sgd-uniform", "adam-uniform"],
)
def test_each_member_follows_torch_optim(members):
    stacked, singles = run_both(members)
    assert_members_equal(stacked, singles)
    # the updates did something: parameters moved away from their start
    assert all(p.detach().abs().sum() > 0 for p in stacked)


@pytest.mark.parametrize("members", [SGD_MEMBERS, ADAM_MEMBERS], ids=["sgd", "adam"])
def test_dropped_members_leave_the_others_unchanged(members):
    """Dropping slots (a diverged member) keeps every survivor's state: the survivors go on
    exactly as their own torch.optim optimizers do."""
    stacked, singles = run_both(members, steps=30, drop_after=11, keep=[3, 0, 2])
    assert stacked[0].shape[0] == 3
    assert_members_equal(stacked, singles)


def test_kinds_and_mixed_names():
    params = [torch.zeros(2, 3, requires_grad=True)]
    sgd = build_stacked_optimizer(params, [{"name": "sgd"}] * 2, [0.1, 0.2])
    adam = build_stacked_optimizer(params, [{"name": "adam"}] * 2, [0.1, 0.2])
    assert isinstance(sgd, StackedSGD) and isinstance(adam, StackedAdam)
    with pytest.raises(ValueError, match="one optimizer"):
        build_stacked_optimizer(params, [{"name": "sgd"}, {"name": "adam"}], [0.1, 0.2])
    with pytest.raises(ValueError, match="per member"):
        build_stacked_optimizer(params, [{"name": "sgd"}] * 3, [0.1, 0.2, 0.3])
