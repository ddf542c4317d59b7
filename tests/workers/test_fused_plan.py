"""Which trial configs can share a fused trial, how they are grouped, and the default K."""

from __future__ import annotations

import pytest
import torch

from proxstudy.workers.config import ConfigError, TrialConfig, validate_trial_config
from proxstudy.workers.fused_plan import (
    check_fusable,
    default_fuse_size,
    fusion_key,
    member_cost,
    plan_groups,
)
from tests.support.trial_configs import trial_config

DIGITS_MLP = {"dataset": {"name": "digits"}, "model": {"name": "mlp", "hidden": [64, 64]},
              "training": {"epochs": 10, "batch_size": 100}}
PAPER_MLP = {"dataset": {"name": "synthetic", "input_shape": [3, 32, 32], "n_train": 1000},
             "model": {"name": "mlp", "hidden": [4000, 1000, 4000]}, "training": {"epochs": 1, "batch_size": 500}}


def config(**changes) -> TrialConfig:
    return validate_trial_config(trial_config(**{**DIGITS_MLP, **changes}), "<test>")


def test_members_may_differ_in_their_own_hyperparameters_only():
    base = config()
    same = [
        config(lr=0.3, seed=4, tau_prox=2.0, method="x", objective="val_accuracy",
               optimizer={"name": "sgd", "momentum": 0.5}),
        config(training={**DIGITS_MLP["training"], "divergence_factor": 5.0}),
    ]
    for other in same:
        assert fusion_key(other) == fusion_key(base)
    check_fusable([base, *same])
    different = {
        "mode": config(mode="prox_exact", cg_iterations=None),
        "cg_iterations": config(cg_iterations=5),
        "optimizer": config(optimizer={"name": "adam"}),
        "training": config(training={"epochs": 3, "batch_size": 100}),
        "model": config(model={"name": "mlp", "hidden": [32]}),
        "dataset": config(dataset={"name": "digits", "train_samples": 100}),
        "device": config(device="cpu"),
    }
    for field, other in different.items():
        assert fusion_key(other) != fusion_key(base)
        with pytest.raises(ConfigError, match=field):
            check_fusable([base, other])


def test_groups_follow_keys_and_split_evenly():
    configs = [config(lr=0.1 * (i + 1)) for i in range(7)] + [config(mode="gradient", lr=0.1)] * 3
    configs.insert(2, config(mode="gradient", lr=0.5))
    groups = plan_groups(configs, fuse=3)
    prox = [i for i, c in enumerate(configs) if c.mode == "prox_cg"]
    grad = [i for i, c in enumerate(configs) if c.mode == "gradient"]
    assert groups == [prox[0:3], prox[3:5], prox[5:7], grad[0:2], grad[2:4]]
    assert sorted(i for g in groups for i in g) == list(range(len(configs)))
    assert plan_groups(configs, fuse=1) == [[i] for i in prox] + [[i] for i in grad]


def test_member_cost_counts_parameters_and_flops():
    small, paper = member_cost(config()), member_cost(config(**PAPER_MLP))
    # the paper's MLP: ~20.3M weights; a step is ~6 x batch x weights multiply-adds at least
    assert paper.flops_per_step > 6 * 500 * 20.3e6
    assert paper.bytes > 20.3e6 * 4 * 3  # weights, gradients, momentum in float32
    assert small.flops_per_step < paper.flops_per_step / 1000
    assert small.bytes < paper.bytes / 50


def test_default_k_fills_small_models_and_few_large_ones_on_cpu():
    small, paper = config(), config(**PAPER_MLP)
    plenty = 1e12
    assert default_fuse_size(small, "cpu", memory_budget=plenty) >= 8
    assert default_fuse_size(paper, "cpu", memory_budget=plenty) == 4  # the CPU's minimum
    assert default_fuse_size(paper, "cpu", memory_budget=2.5 * member_cost(paper).bytes) == 2
    assert default_fuse_size(small, "cpu", max_size=4) == 4
    # memory caps K: a budget of three members' worth gives at most three
    three = 3.5 * member_cost(small).bytes
    assert default_fuse_size(small, "cpu", memory_budget=three) == 3
    assert default_fuse_size(paper, "cpu", memory_budget=1.0) == 1  # never below one


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_default_k_on_a_gpu_fuses_the_paper_model():
    assert default_fuse_size(config(**PAPER_MLP), "cuda") > 1


@pytest.mark.parametrize(("spec", "input_shape"), [
    ({"name": "mlp", "hidden": [64, 64]}, (1, 8, 8)),
    ({"name": "convnet", "channels": [16, 20, 20], "kernel_size": 5}, (3, 32, 32)),
    ({"name": "convnet", "channels": [4, 6, 8], "kernel_size": 3}, (1, 9, 11)),  # odd sizes: floors
    ({"name": "autoencoder", "hidden": [30, 10], "output": "sigmoid"}, (1, 8, 8)),
])
def test_layer_shapes_worked_out_equal_a_forward_on_meta(spec, input_shape):
    from proxstudy.workers.fused_plan import _chain_shapes, _meta_shapes
    from proxstudy.workers.models import build_model

    with torch.device("meta"):
        model = build_model(spec, input_shape, 10, "gradient", None)
    worked_out = _chain_shapes(model, (7, *input_shape))
    assert worked_out is not None
    assert [(m, i, o) for m, i, o in worked_out] == [(m, i, o) for m, i, o in _meta_shapes(model, 7, input_shape)]


def test_layer_shapes_of_an_unknown_layer_come_from_a_forward():
    from proxstudy.workers.fused_plan import _chain_shapes, _layer_shapes

    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.LayerNorm(8))
    assert _chain_shapes(model, (5, 1, 8, 8)) is None
    assert [shape for _, _, shape in _layer_shapes(model, 5, (1, 8, 8))] == [(5, 64), (5, 8), (5, 8)]
